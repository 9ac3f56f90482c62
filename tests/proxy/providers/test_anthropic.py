"""An Anthropic provider end to end: the official ``openai`` SDK → the gateway (uvicorn, PostgreSQL,
Redis) → the Anthropic adapter → FakeAnthropic on loopback; answers, streams, tools, images, stop
sequences, cache usage, failover and errors — and the money each request moved."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import openai
import pytest

from apps.billing.models import UsageRecord
from tests.fakes import anthropic_upstream
from tests.fakes.anthropic_upstream import DEFAULT_KEY, SECOND_KEY, leaky_error
from tests.proxy.conftest import RUB
from tests.proxy.helpers import expected_cost

# FakeAnthropic's fixtures, for this module only.
fake_anthropic_server = anthropic_upstream.fake_anthropic_server
fake_anthropic = anthropic_upstream.fake_anthropic

MODEL = "claude-sonnet"
UPSTREAM = "claude-sonnet-4-5-20250929"
PRICES = {"price_in": 3_000_000, "price_out": 15_000_000, "price_cached": 300_000}  # USD micro-units per 1M tokens
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


@pytest.fixture
def world(world, fake_anthropic):
    """The shared world plus an Anthropic provider at FakeAnthropic: key A (tried first) and key B."""
    from apps.providers.models import Model, Price, Provider, SupplierKey

    provider = Provider.objects.create(slug="anthropic-main", kind="anthropic", base_url=fake_anthropic.base_url, internal=True)
    keys = []
    for name, secret, priority in (("ant-a", DEFAULT_KEY, 0), ("ant-b", SECOND_KEY, 1)):
        key = SupplierKey(supplier=world.supplier, provider=provider, name=name, priority=priority, buy_coefficient=Decimal("1.10"))
        key.set_secret(secret)
        key.save()
        keys.append(key)
    model = Model.objects.create(name=MODEL, provider=provider, upstream_model=UPSTREAM, context_window=200_000,
                                 max_output_tokens=8192)
    Price.objects.create(model=model, currency="USD", input_per_1m=PRICES["price_in"], output_per_1m=PRICES["price_out"],
                         cached_input_per_1m=PRICES["price_cached"])
    world.claude_keys = keys
    accepted = fake_anthropic.expected_keys
    yield world
    fake_anthropic.expected_keys = accepted


def record() -> UsageRecord:
    return UsageRecord.objects.get()


def assert_billed(rec: UsageRecord, prompt: int, completion: int, *, cached: int = 0) -> None:
    sell = expected_cost(prompt, completion, cached=cached, **PRICES)
    buy = expected_cost(prompt, completion, cached=cached, coefficient="1.10", **PRICES)
    assert (rec.input_tokens, rec.output_tokens, rec.cached_tokens, rec.usage_counted_locally) == (prompt, completion, cached, False)
    assert (rec.sell_cost, rec.buy_cost) == (sell, buy) and sell > 0


def test_it_answers_through_anthropic_and_bills_its_usage(gateway, fake_anthropic):
    response = gateway.client().chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=50, temperature=0.3,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about ledgers"}])
    completion = response.parse()
    assert completion.choices[0].message.content == "You said: Tell me about ledgers"
    assert completion.choices[0].finish_reason == "stop" and completion.model == MODEL
    # Anthropic's input_tokens: the words of the system prompt and the message (the fake's count).
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2 + 4, 6)

    upstream = fake_anthropic.last_request
    assert upstream.path == "/v1/messages"
    assert upstream.headers["x-api-key"] == DEFAULT_KEY and "authorization" not in upstream.headers
    assert upstream.headers["anthropic-version"] == "2023-06-01"
    assert upstream.body == {"model": UPSTREAM, "max_tokens": 50, "temperature": 0.3, "system": [{"type": "text", "text": "Be brief."}],
                             "messages": [{"role": "user", "content": [{"type": "text", "text": "Tell me about ledgers"}]}]}

    gateway.drain(expect=1)
    rec = record()
    assert (rec.status, rec.http_status, rec.supplier_key_id, rec.provider_id) == ("ok", 200, gateway.world.claude_keys[0].pk,
                                                                                   gateway.world.claude_keys[0].provider_id)
    assert_billed(rec, 6, 6)
    assert response.headers["x-jetstream-cost"] == f"{rec.sell_cost // RUB}.{rec.sell_cost % RUB:06d}"


def test_cache_reads_and_writes_count_as_input_and_reads_bill_at_the_cached_price(gateway, fake_anthropic):
    fake_anthropic.behavior(cache_read=1000, cache_creation=200, thinking_tokens=9)
    completion = gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Cached question"}])
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (2 + 1000 + 200, 4 + 9)
    assert usage.prompt_tokens_details.cached_tokens == 1000 and usage.completion_tokens_details.reasoning_tokens == 9
    assert fake_anthropic.last_request.body["max_tokens"] == 8192  # required upstream: what the gateway reserved for (the model's limit)
    gateway.drain(expect=1)
    assert_billed(record(), 1202, 13, cached=1000)


def test_it_streams_with_usage_and_cost(gateway, fake_anthropic):
    fake_anthropic.behavior(cache_read=40)
    chunks = list(gateway.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Stream a longer answer for me please"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: Stream a longer answer for me please"
    assert chunks[0].choices[0].delta.role == "assistant" and {c.model for c in chunks} == {MODEL}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    final = chunks[-1]
    assert final.choices == [] and (final.usage.prompt_tokens, final.usage.completion_tokens) == (7 + 40, 9)
    assert fake_anthropic.last_request.body["stream"] is True
    gateway.drain(expect=1)
    rec = record()
    assert rec.stream and rec.ttft_ms is not None
    assert_billed(rec, 47, 9, cached=40)
    assert final.usage.model_extra["cost"] == pytest.approx(rec.sell_cost / RUB)


def test_it_serves_the_async_client_concurrently(gateway):
    async def run():
        client = gateway.async_client()
        answers = await asyncio.gather(*(client.chat.completions.create(
            model=MODEL, max_tokens=30, messages=[{"role": "user", "content": f"question {i}"}]) for i in range(8)))
        stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "async stream"}],
                                                      stream=True)
        pieces = [chunk async for chunk in stream]
        await client.close()
        return answers, pieces

    answers, pieces = asyncio.run(run())
    assert sorted(a.choices[0].message.content for a in answers) == sorted(f"You said: question {i}" for i in range(8))
    assert "".join(p.choices[0].delta.content or "" for p in pieces if p.choices) == "You said: async stream"
    gateway.drain(expect=9)
    assert UsageRecord.objects.filter(status="ok", sell_cost__gt=0).count() == 9
    assert UsageRecord.objects.get(stream=True).output_tokens == 4


def test_a_tool_call_round_trip(gateway, fake_anthropic):
    client = gateway.client()
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], tool_choice="required")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"Oslo"}'
    assert fake_anthropic.last_request.body["tool_choice"] == {"type": "any"}

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "4 degrees and rain"}]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "The tool said: 4 degrees and rain"
    sent = fake_anthropic.last_request.body["messages"]
    assert sent[1]["content"][-1] == {"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": "Oslo"}}
    assert sent[2]["content"] == [{"type": "tool_result", "tool_use_id": call.id, "content": "4 degrees and rain"}]
    gateway.drain(expect=2)
    assert UsageRecord.objects.filter(status="ok", sell_cost__gt=0).count() == 2


def test_a_streamed_tool_call_arrives_in_openai_deltas(gateway):
    chunks = list(gateway.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER], stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id == "toolu_01FakeCall" and calls[0].function.name == "get_weather"
    assert {tc.index for tc in calls} == {0}
    assert "".join(tc.function.arguments or "" for tc in calls) == '{"city":"Oslo"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_images_go_as_base64_and_url_sources(gateway, fake_anthropic):
    completion = gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Compare these"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://images.example/cat.webp"}}]}])
    assert completion.choices[0].message.content == "You said: Compare these [2 image(s)]"
    blocks = fake_anthropic.last_request.body["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://images.example/cat.webp"}}


def test_stop_sequences_and_max_tokens_end_the_answer_in_openais_words(gateway, fake_anthropic):
    client = gateway.client()
    stopped = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "one two HALT three"}],
                                             stop=["HALT", " "])
    assert stopped.choices[0].message.content == "You said: one two " and stopped.choices[0].finish_reason == "stop"
    assert fake_anthropic.last_request.body["stop_sequences"] == ["HALT"]  # whitespace-only ones are refused upstream
    cut = client.chat.completions.create(model=MODEL, max_completion_tokens=3,
                                         messages=[{"role": "user", "content": "a b c d e f"}])
    assert cut.choices[0].message.content == "You said: a" and cut.choices[0].finish_reason == "length"


# --------------------------------------------------------------------------- failures


def test_a_refused_key_fails_over_to_the_next(gateway, fake_anthropic):
    fake_anthropic.expected_keys = {SECOND_KEY}  # key A was revoked upstream
    completion = gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
    assert completion.choices[0].message.content == "You said: hello"
    assert [r.headers["x-api-key"] for r in fake_anthropic.requests] == [DEFAULT_KEY, SECOND_KEY]
    gateway.drain(expect=1)
    rec = record()
    assert rec.status == "ok" and rec.supplier_key_id == gateway.world.claude_keys[1].pk
    assert_billed(rec, 1, 3)


def test_a_rate_limit_fails_over_and_rests_the_key_as_retry_after_says(gateway, fake_anthropic):
    fake_anthropic.behavior(status=429, error_headers={"retry-after": "7"}, fail_times=1)
    client = gateway.client()
    assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "one"}]).choices[0].message.content
    assert [r.status for r in fake_anthropic.requests] == [429, 200]
    # Key A rests: the next request goes to key B first.
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "two"}])
    assert fake_anthropic.last_request.headers["x-api-key"] == SECOND_KEY and len(fake_anthropic.requests) == 3


def test_every_key_rate_limited_is_a_429_for_the_client(gateway, fake_anthropic):
    fake_anthropic.behavior(status=429, error_headers={"retry-after": "3"})
    with pytest.raises(openai.RateLimitError) as caught:
        gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "upstream_rate_limited" and len(fake_anthropic.requests) == 2
    gateway.drain(expect=1)
    rec = record()
    assert (rec.status, rec.http_status, rec.sell_cost, rec.buy_cost) == ("upstream_error", 429, 0, 0)


def test_overloaded_529_fails_over_and_then_is_a_502(gateway, fake_anthropic):
    fake_anthropic.behavior(status=529)
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502 and caught.value.code == "upstream_error"
    assert [r.headers["x-api-key"] for r in fake_anthropic.requests] == [DEFAULT_KEY, SECOND_KEY]
    gateway.drain(expect=1)
    assert (record().status, record().sell_cost) == ("upstream_error", 0)


def test_a_refused_request_is_passed_on_scrubbed_without_failover(gateway, fake_anthropic):
    fake_anthropic.behavior(status=400, error_body=leaky_error())
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    error = caught.value
    assert error.code == "invalid_request" and error.type == "invalid_request_error"
    text = str(error.body)
    assert "pg-7.prod.internal" not in text and "hunter2" not in text and "10.12.0.5" not in text
    assert DEFAULT_KEY not in text and fake_anthropic.base_url not in text and f"127.0.0.1:{fake_anthropic.port}" not in text
    assert len(fake_anthropic.requests) == 1


def test_a_request_anthropic_cannot_carry_is_refused_before_any_call(gateway, fake_anthropic):
    with pytest.raises(openai.BadRequestError, match="'n' must be 1"):
        gateway.client().chat.completions.create(model=MODEL, n=2, messages=[{"role": "user", "content": "x"}])
    assert fake_anthropic.requests == []


def test_a_mid_stream_error_event_ends_the_stream_with_the_gateways_error_and_bills_what_was_generated(gateway, fake_anthropic):
    fake_anthropic.behavior(stream_error_after=5, stream_error_body=leaky_error("overloaded_error"))
    stream = gateway.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a long answer with many words in it"}], stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "You said: a long answer with "
    assert "pg-7.prod.internal" not in str(caught.value.body) and DEFAULT_KEY not in str(caught.value.body)
    gateway.drain(expect=1)
    rec = record()
    assert rec.status == "upstream_error" and rec.usage_counted_locally and rec.output_tokens > 0 and rec.sell_cost > 0


def test_api_version_2026_10_21_gets_no_sampling_parameters(gateway, fake_anthropic):
    provider = gateway.world.claude_keys[0].provider
    provider.options = {"anthropic_version": "2026-10-21", "default_max_tokens": 1024}
    provider.save()
    gateway.wait_config()
    completion = gateway.client().chat.completions.create(model=MODEL, temperature=0.7, top_p=0.9,
                                                          messages=[{"role": "user", "content": "new version"}])
    assert completion.choices[0].message.content == "You said: new version"  # FakeAnthropic refuses them, as Anthropic does
    upstream = fake_anthropic.last_request
    assert upstream.headers["anthropic-version"] == "2026-10-21" and upstream.body["max_tokens"] == 1024
    assert "temperature" not in upstream.body and "top_p" not in upstream.body


def test_an_embedding_model_on_anthropic_is_refused_clearly(gateway, fake_anthropic):
    from apps.providers.models import Model, Price

    model = Model.objects.create(name="claude-embed", provider=gateway.world.claude_keys[0].provider, upstream_model="x",
                                 modality="embedding")
    Price.objects.create(model=model, currency="USD", input_per_1m=100_000, output_per_1m=0)
    gateway.wait_config()
    with pytest.raises(openai.BadRequestError, match="no embedding endpoint"):
        gateway.client().embeddings.create(model="claude-embed", input="hello")
    assert fake_anthropic.requests == []
    gateway.drain(expect=1)
    assert (record().status, record().sell_cost) == ("upstream_error", 0)
