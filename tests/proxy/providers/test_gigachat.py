"""GigaChat end to end: the official `openai` SDK → the real gateway (uvicorn, PostgreSQL, Redis) →
FakeGigaChat (token service + API on loopback), with the usage record's tokens and money checked."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from decimal import Decimal

import openai
import pytest

from apps.billing.models import UsageRecord
from tests.fakes.gigachat_upstream import DEFAULT_AUTH_KEY, FakeGigaChat, leaky_gigachat_error
from tests.fakes.openai_upstream import INTERNAL_HOST
from tests.proxy.conftest import RUB
from tests.proxy.helpers import expected_cost

PRICE_IN, PRICE_OUT = 500 * RUB, 1500 * RUB  # RUB per 1M tokens; cached input is free, as Sber bills it
WRONG_KEY = "d3Jvbmc6a2V5LXRoZS10b2tlbi1zZXJ2aWNlLXJlZnVzZXM="
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def cost(prompt: int, completion: int, *, cached: int = 0, coefficient: str = "1.25") -> int:
    return expected_cost(prompt, completion, price_in=PRICE_IN, price_out=PRICE_OUT, fx=RUB, coefficient=coefficient,
                         cached=cached, price_cached=0)


@dataclass
class Giga:
    fake: FakeGigaChat
    provider: object
    key: object
    key2: object


@pytest.fixture(scope="module")
def gigachat_server():
    with FakeGigaChat() as fake:
        yield fake


@pytest.fixture
def fake_gigachat(gigachat_server):
    gigachat_server.reset()
    yield gigachat_server
    gigachat_server.reset()


@pytest.fixture
def giga(world, fake_gigachat) -> Giga:
    """A GigaChat provider on the fake (two keys, priority 0 then 1), a chat and an embeddings model."""
    from apps.providers.models import Model, Price, Provider, SupplierKey

    provider = Provider.objects.create(slug="gigachat", kind="gigachat", base_url=fake_gigachat.base_url, internal=True,
                                       options={"auth_url": fake_gigachat.auth_url, "scope": "GIGACHAT_API_PERS"})
    keys = []
    for priority in (0, 1):
        key = SupplierKey(supplier=world.supplier, provider=provider, name=f"giga-{priority}", priority=priority,
                          buy_coefficient=Decimal("1.10"))
        key.set_secret(DEFAULT_AUTH_KEY)
        key.save()
        keys.append(key)
    model = Model.objects.create(name="giga-max", provider=provider, upstream_model="GigaChat-2-Max", max_output_tokens=4096)
    Price.objects.create(model=model, currency="RUB", input_per_1m=PRICE_IN, output_per_1m=PRICE_OUT, cached_input_per_1m=0)
    embed = Model.objects.create(name="giga-embed", provider=provider, upstream_model="Embeddings", modality="embedding")
    Price.objects.create(model=embed, currency="RUB", input_per_1m=PRICE_IN, output_per_1m=0)
    return Giga(fake_gigachat, provider, keys[0], keys[1])


@pytest.fixture
def gw(giga, gateway):
    """The gateway, started after the GigaChat provider exists."""
    return gateway


def test_it_answers_through_the_sync_sdk_and_bills_the_upstream_s_usage(gw, giga):
    giga.fake.behavior(prompt_tokens=40, completion_tokens=9, precached_tokens=16)
    response = gw.client().chat.completions.with_raw_response.create(
        model="giga-max", messages=[{"role": "system", "content": "Кратко."}, {"role": "user", "content": "Привет"}], max_tokens=50)
    completion = response.parse()
    assert completion.choices[0].message.content == "Привет! Это ответ от GigaChat."
    assert completion.model == "giga-max" and completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (40, 9)
    assert completion.usage.prompt_tokens_details.cached_tokens == 16
    upstream = giga.fake.last_request
    assert upstream.body["model"] == "GigaChat-2-Max" and upstream.body["max_tokens"] == 50
    assert upstream.headers["Authorization"].startswith("Bearer eyJ.fake.")  # the exchanged token, never the key
    sell = cost(40, 9, cached=16)
    assert response.headers["x-jetstream-cost"] == f"{sell // RUB}.{sell % RUB:06d}"
    gw.drain(expect=1)
    record = UsageRecord.objects.get()
    assert (record.status, record.input_tokens, record.output_tokens, record.cached_tokens) == ("ok", 40, 9, 16)
    assert (record.sell_cost, record.buy_cost) == (sell, cost(40, 9, cached=16, coefficient="1.10"))
    assert record.supplier_key_id == giga.key.pk and not record.stream


def test_concurrent_async_requests_share_one_token_exchange(gw, giga):
    giga.fake.behavior(oauth_latency_ms=300, prompt_tokens=10, completion_tokens=6)

    async def run():
        client = gw.async_client()
        results = await asyncio.gather(*(client.chat.completions.create(
            model="giga-max", messages=[{"role": "user", "content": f"вопрос {i}"}], max_tokens=20) for i in range(8)))
        await client.close()
        return results

    results = asyncio.run(run())
    assert all(r.choices[0].message.content for r in results)
    assert len(giga.fake.exchanges) == 1 and len(giga.fake.requests) == 8
    gw.drain(expect=8)
    assert sorted(UsageRecord.objects.values_list("sell_cost", flat=True)) == [cost(10, 6)] * 8


@pytest.mark.parametrize("empty_last", [False, True])
def test_a_stream_with_include_usage_relays_each_piece_once_and_ends_with_the_cost(gw, giga, empty_last):
    giga.fake.behavior(chunks=4, prompt_tokens=30, completion_tokens=8, precached_tokens=10, usage_on_empty_chunk=empty_last)
    chunks = list(gw.client().chat.completions.create(
        model="giga-max", messages=[{"role": "user", "content": "Стрим"}], stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Привет! Это ответ от GigaChat."  # the usage-carrying content chunk came once
    assert [c.choices[0].finish_reason for c in chunks if c.choices].count("stop") == 1
    final = chunks[-1]
    assert final.choices == [] and (final.usage.prompt_tokens, final.usage.completion_tokens) == (30, 8)
    sell = cost(30, 8, cached=10)
    assert final.usage.model_extra["cost"] == pytest.approx(sell / RUB)
    assert all(c.usage is None for c in chunks[:-1])
    gw.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.stream and (record.input_tokens, record.output_tokens, record.cached_tokens, record.sell_cost) == (30, 8, 10, sell)


def test_a_stream_without_include_usage_shows_no_usage_but_is_billed_from_it(gw, giga):
    giga.fake.behavior(prompt_tokens=12, completion_tokens=7)
    chunks = list(gw.client().chat.completions.create(
        model="giga-max", messages=[{"role": "user", "content": "Стрим"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Привет! Это ответ от GigaChat."
    assert all(c.usage is None for c in chunks) and "stream_options" not in giga.fake.last_request.body
    gw.drain(expect=1)
    record = UsageRecord.objects.get()
    assert (record.input_tokens, record.output_tokens, record.sell_cost) == (12, 7, cost(12, 7))


def test_tools_round_trip_through_the_sdk(gw, giga):
    client = gw.client()
    messages = [{"role": "user", "content": "Погода в Казани?"}]
    first = client.chat.completions.create(model="giga-max", messages=messages, tools=[WEATHER], tool_choice="auto")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Казань"}
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": -5})}]
    second = client.chat.completions.create(model="giga-max", messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content and second.choices[0].finish_reason == "stop"
    sent = giga.fake.last_request.body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "function"]
    assert sent[1]["function_call"] == {"name": "get_weather", "arguments": {"city": "Казань"}}
    # A streamed call too.
    streamed = list(client.chat.completions.create(model="giga-max", messages=messages[:1], tools=[WEATHER], stream=True))
    calls = [c for chunk in streamed if chunk.choices for c in chunk.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and json.loads(calls[0].function.arguments) == {"city": "Казань"}
    gw.drain(expect=3)
    assert UsageRecord.objects.filter(status="ok").count() == 3


def test_a_refused_token_exchange_fails_over_to_the_next_key(gw, giga):
    giga.key.set_secret(WRONG_KEY)  # the token service does not know the first key
    giga.key.save()
    gw.wait_config()
    completion = gw.client().chat.completions.create(model="giga-max", messages=[{"role": "user", "content": "Привет"}])
    assert completion.choices[0].message.content
    assert [e.headers["Authorization"] for e in giga.fake.exchanges] == [f"Basic {WRONG_KEY}", f"Basic {DEFAULT_AUTH_KEY}"]
    gw.drain(expect=1)
    assert UsageRecord.objects.get().supplier_key_id == giga.key2.pk


def test_a_stale_token_is_renewed_once_without_the_client_noticing(gw, giga):
    client = gw.client()
    client.chat.completions.create(model="giga-max", messages=[{"role": "user", "content": "раз"}])
    giga.fake.revoke_tokens()
    client.chat.completions.create(model="giga-max", messages=[{"role": "user", "content": "два"}])
    assert len(giga.fake.exchanges) == 2 and [r.status for r in giga.fake.requests] == [200, 401, 200]
    gw.drain(expect=2)
    assert set(UsageRecord.objects.values_list("supplier_key_id", flat=True)) == {giga.key.pk}


def test_embeddings_through_the_sdk_are_billed_from_the_per_item_usage(gw, giga):
    result = gw.client().embeddings.create(model="giga-embed", input=["один два", "три"])  # the SDK asks for base64
    assert [len(item.embedding) for item in result.data] == [8, 8] and result.usage.prompt_tokens == 3
    assert giga.fake.last_request.body == {"model": "Embeddings", "input": ["один два", "три"]}
    gw.drain(expect=1)
    record = UsageRecord.objects.get()
    assert (record.input_tokens, record.output_tokens, record.sell_cost) == (3, 0, cost(3, 0))


def test_an_upstream_refusal_reaches_the_client_scrubbed(gw, giga):
    giga.fake.behavior(status=422, error_body=leaky_gigachat_error(422))
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        gw.client().chat.completions.create(model="giga-max", messages=[{"role": "user", "content": "x"}])
    message = refused.value.body["message"] if isinstance(refused.value.body, dict) else str(refused.value)
    assert "failed at" in message
    for secret in (DEFAULT_AUTH_KEY, "eyJ.fake.", giga.fake.root, INTERNAL_HOST):
        assert secret not in message
    gw.drain(expect=1)
    assert UsageRecord.objects.get().sell_cost == 0


def test_a_200_answer_that_finished_with_error_fails_over_to_the_next_key(gw, giga):
    giga.fake.behavior(finish_reason="error")
    with pytest.raises(openai.APIStatusError) as failed:
        gw.client().chat.completions.create(model="giga-max", messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == 502 and len(giga.fake.requests) == 2  # both keys tried
    gw.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.status == "upstream_error" and record.sell_cost == 0


def test_a_blacklisted_topic_ends_with_content_filter(gw, giga):
    giga.fake.behavior(finish_reason="blacklist")
    completion = gw.client().chat.completions.create(model="giga-max", messages=[{"role": "user", "content": "x"}])
    assert completion.choices[0].finish_reason == "content_filter"
    chunks = list(gw.client().chat.completions.create(model="giga-max", messages=[{"role": "user", "content": "x"}], stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"


def test_an_error_mid_stream_ends_it_with_an_error_event_and_bills_what_was_generated(gw, giga):
    giga.fake.behavior(chunks=4, stream_error_after=2, stream_error_body=leaky_gigachat_error(500))
    stream = gw.client().chat.completions.create(model="giga-max", messages=[{"role": "user", "content": "x"}], stream=True)
    received = []
    with pytest.raises(openai.APIError) as broke:
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 2 and "failed at" not in str(broke.value) and DEFAULT_AUTH_KEY not in str(broke.value)
    gw.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.status == "upstream_error" and record.output_tokens > 0 and record.sell_cost > 0


def test_rate_limits_on_every_key_reach_the_client_as_429(gw, giga):
    giga.fake.behavior(status=429, error_headers={"Retry-After": "3"})
    with pytest.raises(openai.RateLimitError):
        gw.client().chat.completions.create(model="giga-max", messages=[{"role": "user", "content": "x"}])
    assert len(giga.fake.requests) == 2
