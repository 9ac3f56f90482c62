"""Prices beyond input, cached input and output, charged through the real gateway: prompt-cache
writes (Anthropic's ``cache_creation_input_tokens``) at the cache-write price, a per-request price
and a per-image price; the reservation covers them; and a sell cost capped at the reservation says
so on the usage record. Figures are docs/billing.md's worked examples, to the micro-ruble."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.billing.models import UsageRecord
from apps.proxy.pipeline.context import Call
from apps.proxy.pipeline.spend import max_cost, price, prompt_extras
from apps.proxy.snapshot import ModelRoute
from lib.money import cost_from_units
from tests.fakes import anthropic_upstream
from tests.fakes.anthropic_upstream import DEFAULT_KEY

fake_anthropic_server = anthropic_upstream.fake_anthropic_server
fake_anthropic = anthropic_upstream.fake_anthropic

FX = 92_500_000  # 92.50 RUB per USD (the test world's rate)

# docs/billing.md, worked example 2: claude-sonnet-4-5 (USD 3 input, 0.30 cached, 3.75 cache write,
# 15 output per 1M). Anthropic reports 2 input tokens, 1000 read from the cache, 200 written to it,
# and 13 output tokens: canonical input 1202 (1000 cached, 200 cache-write), output 13.
CLAUDE_UNITS = 2 * 3_000_000 + 1000 * 300_000 + 200 * 3_750_000 + 13 * 15_000_000  # 1 251 000 000
CLAUDE_SELL = 144_647  # ⌈1 251 000 000 × 92.5 × 1.25 / 10^6⌉ = ⌈144 646.875⌉ micro-RUB
CLAUDE_BUY = 127_290   # at the key's 1.10: ⌈127 289.25⌉
CLAUDE_SELL_WITHOUT_CACHE_WRITE_PRICE = 127_304  # the 200 written tokens at the input price, as before

# Worked example 3: gpt-4o-mini as in example 1 (1000 prompt tokens, 200 cached, 500 output) plus
# USD 0.01 per request and USD 0.002 per image, with two images in the request.
MINI_USAGE = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500, "prompt_tokens_details": {"cached_tokens": 200}}
MINI_UNITS = 800 * 150_000 + 200 * 75_000 + 500 * 600_000 + (10_000 + 2 * 2_000) * 1_000_000  # 14 435 000 000
MINI_SELL = 1_669_047  # ⌈14 435 000 000 × 92.5 × 1.25 / 10^6⌉ = ⌈1 669 046.875⌉
MINI_BUY = 1_468_762   # at 1.10: ⌈1 468 761.25⌉
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
TWO_IMAGES = [{"role": "user", "content": [
    {"type": "text", "text": "Compare these"},
    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]


def test_the_worked_examples_arithmetic():
    assert CLAUDE_UNITS == 1_251_000_000 and MINI_UNITS == 14_435_000_000
    assert cost_from_units(CLAUDE_UNITS, FX, 12_500) == CLAUDE_SELL
    assert cost_from_units(CLAUDE_UNITS, FX, 11_000) == CLAUDE_BUY
    assert cost_from_units(202 * 3_000_000 + 1000 * 300_000 + 13 * 15_000_000, FX, 12_500) == CLAUDE_SELL_WITHOUT_CACHE_WRITE_PRICE
    assert cost_from_units(MINI_UNITS, FX, 12_500) == MINI_SELL
    assert cost_from_units(MINI_UNITS, FX, 11_000) == MINI_BUY


# --- without a server ----------------------------------------------------------------------------

def route(**prices) -> ModelRoute:
    values = {"price_input": 3_000_000, "price_output": 15_000_000, "price_cached": 300_000} | prices
    return ModelRoute(id=1, name="claude", modality="chat", upstream_model="claude", context_window=200_000,
                      max_output_tokens=8192, created=0, provider_id=1, provider_kind="anthropic", provider_slug="a",
                      base_url="", provider_options={}, egress_url=None, price_id=1, fx_micro=FX, **values)


def test_price_charges_cache_writes_at_their_own_price_and_else_at_the_input_price():
    assert price(route(price_cache_write=3_750_000), 1202, 13, 1000, 12_500, cache_write_tokens=200) == CLAUDE_SELL
    assert price(route(), 1202, 13, 1000, 12_500, cache_write_tokens=200) == CLAUDE_SELL_WITHOUT_CACHE_WRITE_PRICE


def test_price_adds_per_request_and_per_image_prices_in_micro_units_of_the_currency():
    priced = route(price_input=150_000, price_output=600_000, price_cached=75_000, price_per_request=10_000, price_per_image=2_000)
    assert price(priced, 1000, 500, 200, 12_500, images=2, requests=1) == MINI_SELL
    assert price(priced, 1000, 500, 200, 12_500) < MINI_SELL  # tokens only: what was charged before


@pytest.mark.parametrize(("body", "expected"), [
    ({"messages": [{"role": "user", "content": "hi"}]}, (0, False)),
    ({"messages": TWO_IMAGES}, (2, False)),
    ({"messages": [{"role": "system", "content": [{"type": "text", "text": "long", "cache_control": {"type": "ephemeral"}}]},
                   {"role": "user", "content": [{"type": "image", "source": {}}, {"type": "input_image"}]}]}, (2, True)),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "cache_control": {}}]}, (0, True)),
    ({"messages": "not a list of messages"}, (0, False)),
])
def test_prompt_extras_counts_images_and_sees_cache_markers(body, expected):
    from apps.providers.adapters.base import CanonicalRequest

    assert prompt_extras(CanonicalRequest(endpoint="chat", model="m", body=body)) == expected


def test_the_maximum_cost_reserves_cache_writes_only_when_the_request_marks_a_cache():
    from apps.proxy.snapshot import TokenSnapshot

    token = TokenSnapshot.__new__(TokenSnapshot)
    object.__setattr__(token, "sell_coef_units", 12_500)
    object.__setattr__(token, "model_coef_units", {})
    call = Call(id="req_x", endpoint="chat", started=0.0, client_ip=None)
    call.token = token
    cached = route(price_cache_write=3_750_000, price_per_request=1_000, price_per_image=500)
    call.images = 3
    plain = max_cost(call, cached, 1000, 100)
    assert plain == price(cached, 1000, 100, 0, 12_500, images=3, requests=1)
    call.cache_marked = True
    assert max_cost(call, cached, 1000, 100) == price(cached, 1000, 100, 0, 12_500, cache_write_tokens=1000, images=3,
                                                      requests=1) > plain


# --- through the gateway -------------------------------------------------------------------------

@pytest.fixture
def claude(world, fake_anthropic):
    """An Anthropic provider at FakeAnthropic with claude-sonnet-4-5's list prices, cache write included."""
    from apps.providers.models import Model, Price, Provider, SupplierKey

    provider = Provider.objects.create(slug="anthropic-main", kind="anthropic", base_url=fake_anthropic.base_url, internal=True)
    key = SupplierKey(supplier=world.supplier, provider=provider, name="ant-a", buy_coefficient=Decimal("1.10"))
    key.set_secret(DEFAULT_KEY)
    key.save()
    model = Model.objects.create(name="claude-sonnet", provider=provider, upstream_model="claude-sonnet-4-5", context_window=200_000,
                                 max_output_tokens=8192)
    Price.objects.create(model=model, currency="USD", input_per_1m=3_000_000, output_per_1m=15_000_000,
                         cached_input_per_1m=300_000, cache_write_per_1m=3_750_000)
    return world


def test_cache_writes_are_charged_at_the_cache_write_price(claude, fake_anthropic, request):
    gateway = request.getfixturevalue("gateway")
    fake_anthropic.behavior(cache_read=1000, cache_creation=200, thinking_tokens=9)
    completion = gateway.client().chat.completions.create(model="claude-sonnet", messages=[
        {"role": "user", "content": [{"type": "text", "text": "Cached question", "cache_control": {"type": "ephemeral"}}]}])
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (1202, 13)

    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert (record.input_tokens, record.cached_tokens, record.cache_write_tokens, record.output_tokens) == (1202, 1000, 200, 13)
    assert (record.sell_cost, record.buy_cost, record.sell_capped) == (CLAUDE_SELL, CLAUDE_BUY, False)


@pytest.fixture
def mini_with_extras(world, fake_openai):
    """gpt-4o-mini at example 1's prices plus USD 0.01 per request and USD 0.002 per image (a new version)."""
    from django.utils import timezone

    from apps.providers.models import Price

    Price.objects.create(model=world.model, currency="USD", input_per_1m=150_000, cached_input_per_1m=75_000,
                         output_per_1m=600_000, per_request=10_000, per_image=2_000, valid_from=timezone.now())
    fake_openai.behavior(usage_override=MINI_USAGE)
    return world


def test_per_request_and_per_image_prices_are_charged_and_reserved(mini_with_extras, request):
    gateway = request.getfixturevalue("gateway")
    # max_tokens=2000 reserves ≈0.14 RUB of tokens (the upstream then reports more prompt tokens than
    # the gateway counted, as providers do for images): without the request's and images' prices in
    # the reservation the 1.67 RUB the request costs would be capped at about that.
    gateway.client().chat.completions.create(model="gpt-4o-mini", messages=TWO_IMAGES, max_tokens=2000)
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert (record.images, record.input_tokens, record.cached_tokens, record.output_tokens) == (2, 1000, 200, 500)
    assert (record.sell_cost, record.buy_cost, record.sell_capped, record.sell_cost_uncapped) == (MINI_SELL, MINI_BUY, False, 0)


def test_a_request_the_upstream_billed_nothing_pays_no_per_request_price(mini_with_extras, fake_openai, request):
    gateway = request.getfixturevalue("gateway")
    fake_openai.behavior(status=500)
    with pytest.raises(Exception):  # noqa: B017, PT011 - any SDK error: the upstream failed
        gateway.client().chat.completions.create(model="gpt-4o-mini", messages=TWO_IMAGES, max_tokens=20)
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert (record.status, record.sell_cost, record.buy_cost, record.images) == ("upstream_error", 0, 0, 0)


def test_a_sell_cost_capped_at_the_reservation_says_so_on_the_record(world, fake_openai, gateway):
    # The upstream overshoots max_tokens=10 by far: the company pays the reservation, the supplier is
    # owed the full buy cost, and the record keeps both facts.
    fake_openai.behavior(usage_override={"prompt_tokens": 20, "completion_tokens": 5000, "total_tokens": 5020})
    gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    full_sell = cost_from_units(20 * 150_000 + 5000 * 600_000, FX, 12_500)
    full_buy = cost_from_units(20 * 150_000 + 5000 * 600_000, FX, 11_000)
    assert record.sell_capped is True and record.sell_cost_uncapped == full_sell > record.sell_cost > 0
    assert record.buy_cost == full_buy > record.sell_cost

    from apps.billing.reports import spend_by

    row, = spend_by("company", record.started_at, record.finished_at.replace(year=record.finished_at.year + 1))
    assert (row.capped_requests, row.capped_amount) == (1, full_sell - record.sell_cost)


@pytest.mark.parametrize(("usage", "expected"), [
    # Alibaba Model Studio's explicit cache: the written part of prompt_tokens.
    ({"prompt_tokens": 3019, "completion_tokens": 104, "total_tokens": 3123,
      "prompt_tokens_details": {"cached_tokens": 0, "cache_creation": {"ephemeral_5m_input_tokens": 3015},
                                "cache_creation_input_tokens": 3015, "cache_type": "ephemeral"}}, (3019, 104, 0, 3015)),
    ({"prompt_tokens": 100, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30}},
     (100, 5, 60, 30)),
    # A write count above what is left of the prompt beside the cached part is cut to it.
    ({"prompt_tokens": 100, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 90, "cache_write_tokens": 30}},
     (100, 5, 90, 10)),
    ({"prompt_tokens": 10, "completion_tokens": 5}, (10, 5, 0, 0)),
])
def test_openai_family_usage_reports_prompt_cache_writes(usage, expected):
    from apps.providers.adapters.openai.wire import usage_from

    parsed = usage_from({"usage": usage})
    assert parsed is not None
    assert (parsed.input_tokens, parsed.output_tokens, parsed.cached_tokens, parsed.cache_write_tokens) == expected
