"""Sell coefficients per company × model and the platform default, through the real gateway and
the official ``openai`` SDK: the usage record's sell cost is exact to the micro-ruble (the worked
example of docs/billing.md "How a request's price is computed"), the buy cost ignores the sell
coefficient, and a change reaches the running gateway."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from apps.accounts import services as accounts
from apps.accounts.models import Company, CompanyModelCoefficient
from apps.billing.models import UsageRecord
from lib.money import cost_micro
from tests.proxy.conftest import RUB

# The worked example: 1000 prompt tokens (200 of them cached) and 500 output tokens of gpt-4o-mini
# (USD 0.15 in, 0.075 cached, 0.60 out per 1M) at 92.50 RUB/USD.
USAGE = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500, "prompt_tokens_details": {"cached_tokens": 200}}
SELL_AT_1_30 = 52_309   # ⌈(800 × 150_000 + 200 × 75_000 + 500 × 600_000) × 92.5 × 1.30 / 10^12⌉ = ⌈52_308.75⌉ micro-RUB
SELL_AT_1_25 = 50_297   # the same at the company's own 1.25 (50_296.875, rounded up)
BUY_AT_1_10 = 44_262    # the supplier key's buy coefficient 1.10 (44_261.25, rounded up)


@pytest.fixture
def priced_world(world, fake_openai):
    from apps.providers.models import Price

    Price.objects.filter(model=world.model).update(cached_input_per_1m=75_000)
    fake_openai.behavior(usage_override=USAGE)
    return world


def ask(gateway, model: str = "gpt-4o-mini", **kwargs):
    return gateway.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **kwargs)


def test_the_worked_example_to_the_micro_ruble():
    # The document's arithmetic, independently of the gateway.
    units = [(800, 150_000), (200, 75_000), (500, 600_000)]
    assert cost_micro(tokens_by_price=units, fx_micro=92_500_000, coefficient=Decimal("1.30")) == SELL_AT_1_30
    assert cost_micro(tokens_by_price=units, fx_micro=92_500_000, coefficient=Decimal("1.25")) == SELL_AT_1_25
    assert cost_micro(tokens_by_price=units, fx_micro=92_500_000, coefficient=Decimal("1.10")) == BUY_AT_1_10


def test_a_per_model_coefficient_prices_that_model_and_only_that_model(priced_world, request):
    CompanyModelCoefficient.objects.create(company=priced_world.company, model=priced_world.model, sell_coefficient=Decimal("1.30"))
    gateway = request.getfixturevalue("gateway")

    assert ask(gateway).usage.prompt_tokens == 1000
    stream = ask(gateway, stream=True, stream_options={"include_usage": True})
    assert [chunk.usage.completion_tokens for chunk in stream if chunk.usage] == [500]
    gateway.client().chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=20)

    gateway.drain(expect=3)
    records = list(UsageRecord.objects.filter(model_name="gpt-4o-mini"))
    assert [(r.input_tokens, r.cached_tokens, r.output_tokens, r.sell_cost, r.buy_cost) for r in records] == \
        [(1000, 200, 500, SELL_AT_1_30, BUY_AT_1_10)] * 2
    assert all(r.sell_cost - r.buy_cost == 8_047 for r in records)  # the platform's margin on each
    demo = UsageRecord.objects.get(model_name="demo-chat")  # no per-model coefficient: the company's 1.25
    expected = cost_micro(tokens_by_price=[(demo.input_tokens, 10 * RUB), (demo.output_tokens, 20 * RUB)], fx_micro=RUB,
                          coefficient=Decimal("1.25"))
    assert demo.sell_cost == expected > 0


def test_without_a_per_model_coefficient_the_company_coefficient_applies(priced_world, gateway):
    ask(gateway)
    gateway.drain(expect=1)
    assert UsageRecord.objects.get().sell_cost == SELL_AT_1_25


def test_a_company_without_a_coefficient_pays_the_platform_default(priced_world, settings, request):
    settings.JETSTREAM_DEFAULT_SELL_COEFFICIENT = "1.3000"
    Company.objects.filter(pk=priced_world.company.pk).update(sell_coefficient=None)
    gateway = request.getfixturevalue("gateway")

    ask(gateway)
    gateway.drain(expect=1)
    assert UsageRecord.objects.get().sell_cost == SELL_AT_1_30


def test_a_change_reaches_the_running_gateway(priced_world, gateway):
    ask(gateway)
    outcome = accounts.set_model_coefficients(company=priced_world.company, coefficients=[(priced_world.model, Decimal("1.30"))])
    assert outcome.changed
    gateway.wait_config()
    ask(gateway)
    accounts.set_model_coefficients(company=priced_world.company, coefficients=[])  # removed: back to the company's
    gateway.wait_config()
    ask(gateway)

    gateway.drain(expect=3)
    assert [r.sell_cost for r in UsageRecord.objects.order_by("started_at")] == [SELL_AT_1_25, SELL_AT_1_30, SELL_AT_1_25]


def test_set_model_coefficients_is_idempotent_and_validates(priced_world):
    company, model = priced_world.company, priced_world.model
    assert accounts.set_model_coefficients(company=company, coefficients=[(model, Decimal("1.1000"))]).changed
    assert not accounts.set_model_coefficients(company=company, coefficients=[(model, Decimal("1.1000"))]).changed
    assert accounts.set_model_coefficients(company=company, coefficients=[(model, Decimal("2"))], dry_run=True).changed
    assert CompanyModelCoefficient.objects.get().sell_coefficient == Decimal("1.1000")  # the dry run wrote nothing
    with pytest.raises(ValidationError):
        accounts.set_model_coefficients(company=company, coefficients=[(model, Decimal("0"))])
    assert CompanyModelCoefficient.objects.get().sell_coefficient == Decimal("1.1000")


def apply(tmp_path, text: str, *args: str) -> str:
    import io

    from django.core.management import call_command
    from django.utils import translation

    path = tmp_path / f"config-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(text)
    out = io.StringIO()
    with translation.override("en"):
        call_command("jetstream_apply", str(path), *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


COMPANY = """
companies:
  - slug: acme
    name: Acme
    sell_coefficient: "1.25"
    model_coefficients: {%s}
"""


def test_configuration_sets_replaces_and_removes_per_model_coefficients(priced_world, tmp_path):
    from django.core.management.base import CommandError

    def current():
        return dict(CompanyModelCoefficient.objects.values_list("model__name", "sell_coefficient"))

    out = apply(tmp_path, COMPANY % 'gpt-4o-mini: "1.10", demo-chat: "2"', "--dry-run")
    assert "model coefficients" in out and current() == {}
    out = apply(tmp_path, COMPANY % 'gpt-4o-mini: "1.10", demo-chat: "2"')
    assert "demo-chat × 2.0000, gpt-4o-mini × 1.1000" in out
    assert "companies' model coefficients 1" in out  # the summary line counts it too
    assert current() == {"gpt-4o-mini": Decimal("1.1000"), "demo-chat": Decimal("2.0000")}
    out = apply(tmp_path, COMPANY % 'gpt-4o-mini: "1.10", demo-chat: "2"')
    assert "model coefficients" not in out  # applied twice: nothing changes
    apply(tmp_path, COMPANY % 'gpt-4o-mini: "1.3"')
    assert current() == {"gpt-4o-mini": Decimal("1.3000")}

    for bad, message in (('no-such-model: "1.1"', 'unknown model "no-such-model"'),
                         ("gpt-4o-mini: 1.1", "YAML float"), ('gpt-4o-mini: "0"', "positive")):
        with pytest.raises(CommandError) as caught:
            apply(tmp_path, COMPANY % bad)
        assert message in str(caught.value)
    assert current() == {"gpt-4o-mini": Decimal("1.3000")}  # nothing half-applied


def test_the_company_admin_edits_per_model_coefficients_inline(personas, superadmin_client):
    from django.urls import reverse

    from apps.providers.models import Model, Provider

    company = personas.company_b
    model = Model.objects.create(name="demo-chat", provider=Provider.objects.create(slug="demo", kind="mock"), upstream_model="demo-chat")
    data = {
        "name": company.name, "slug": company.slug, "time_zone": "Europe/Moscow", "sell_coefficient": "",
        "data_residency": "any", "fallbacks": "{}", "is_active": "on",
        "departments-TOTAL_FORMS": "0", "departments-INITIAL_FORMS": "0",
        "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
        "model_coefficients-TOTAL_FORMS": "1", "model_coefficients-INITIAL_FORMS": "0",
        "model_coefficients-0-model": model.pk, "model_coefficients-0-sell_coefficient": "1.1500",
        "_save": "Save",
    }
    response = superadmin_client.post(reverse("admin:accounts_company_change", args=[company.pk]), data)
    assert response.status_code == 302, response.context["errors"]
    company.refresh_from_db()
    assert company.sell_coefficient is None  # left empty: the platform default
    assert company.effective_sell_coefficient == Decimal("1.0000")
    assert CompanyModelCoefficient.objects.get(company=company, model=model).sell_coefficient == Decimal("1.1500")
    listing = superadmin_client.get(reverse("admin:accounts_company_changelist")).content.decode()
    assert "1.0000 (platform default)" in listing


def test_a_refusal_counts_what_fits_at_the_per_model_coefficient(world, request):
    # The request's maximum cost and "max_tokens that fit" are computed at the model's 1.30, not the
    # company's 1.25: the number a 402 gives is true (that max_tokens passes; one more does not).
    import httpx

    from lib import tokenizer
    from tests.proxy.helpers import expected_cost

    CompanyModelCoefficient.objects.create(company=world.company, model=world.model, sell_coefficient=Decimal("1.30"))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What limits apply to me?"}], "max_tokens": 300}
    prompt = tokenizer.count_chat_request(body, encoding=tokenizer.encoding_for_model("gpt-4o-mini"))
    limit = expected_cost(prompt, 300, coefficient="1.30") - 1
    world.token.limit_total = limit
    world.token.save()
    gateway = request.getfixturevalue("gateway")

    def send(max_tokens: int) -> httpx.Response:
        return httpx.post(f"{gateway.base_url}/chat/completions", json={**body, "max_tokens": max_tokens}, timeout=30,
                          headers={"Authorization": f"Bearer {gateway.world.secret}"})

    refused = send(300)
    error = refused.json()["error"]
    fit = max(m for m in range(301) if expected_cost(prompt, m, coefficient="1.30") <= limit)
    assert refused.status_code == 402 and error["code"] == "limit_total"
    assert error["max_tokens_that_fit"] == fit == 299  # at 1.25 it would claim 300 fits
    assert expected_cost(prompt, 300, coefficient="1.25") <= limit
    assert send(fit).status_code == 200


@pytest.mark.parametrize(("value", "ok"), [("1.15", "1.1500"), ("0", None), ("1.12345", None), ("abc", None), ("-1", None)])
def test_the_platform_default_is_checked_when_the_settings_load(value, ok):
    import os
    import subprocess
    import sys

    from django.conf import settings as django_settings

    env = {**os.environ, "JETSTREAM_DEFAULT_SELL_COEFFICIENT": value, "DJANGO_SETTINGS_MODULE": "jetstream.settings"}
    code = "import django; django.setup(); from django.conf import settings; print(settings.JETSTREAM_DEFAULT_SELL_COEFFICIENT)"
    result = subprocess.run([sys.executable, "-c", code], cwd=django_settings.BASE_DIR, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    if ok:
        assert result.stdout.strip() == ok
    else:
        assert result.returncode != 0 and "JETSTREAM_DEFAULT_SELL_COEFFICIENT must be a positive number" in result.stderr
