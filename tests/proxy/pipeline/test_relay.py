"""The relay: answers, streams and their usage chunk, completions, embeddings, the mock — priced and recorded."""

from __future__ import annotations

import asyncio

import pytest

from apps.billing.models import Transfer, UsageRecord
from tests.proxy.conftest import RUB
from tests.proxy.helpers import expected_cost


def test_it_answers_a_chat_completion_and_bills_it_exactly(gateway, fake_openai):
    response = gateway.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}], max_tokens=20)
    completion = response.parse()
    assert completion.choices[0].message.content
    usage = completion.usage
    sell = expected_cost(usage.prompt_tokens, usage.completion_tokens)
    buy = expected_cost(usage.prompt_tokens, usage.completion_tokens, coefficient="1.10")
    assert response.headers["x-request-id"].startswith("req_")
    assert response.headers["x-jetstream-cost"] == f"{sell // RUB}.{sell % RUB:06d}"
    # The upstream got the supplier's key, never the developer's token.
    upstream = fake_openai.last_request
    assert upstream.headers["authorization"] == f"Bearer {fake_openai.api_key}"
    assert upstream.body["model"] == "gpt-4o-mini"

    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.request_id == response.headers["x-request-id"]
    assert (record.status, record.http_status, record.input_tokens, record.output_tokens) == ("ok", 200, usage.prompt_tokens, usage.completion_tokens)
    assert (record.sell_cost, record.buy_cost) == (sell, buy)
    assert record.token_id == gateway.world.token.pk and record.supplier_key_id in (gateway.world.key.pk, gateway.world.key2.pk)
    assert record.price_id is not None and record.fx_rub_per_unit == 92_500_000
    assert set(Transfer.objects.filter(kind__in=["usage", "usage_cost"]).values_list("idempotency_id", "amount")) == {
        (f"usage:{record.request_id}:sell", sell), (f"usage:{record.request_id}:buy", buy)}


def test_it_streams_with_the_cost_in_the_final_usage_chunk(gateway):
    stream = gateway.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Stream please"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    sell = expected_cost(final.usage.prompt_tokens, final.usage.completion_tokens)
    assert final.usage.model_extra["cost"] == pytest.approx(sell / RUB)
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.stream and record.sell_cost == sell and record.ttft_ms is not None


def test_it_hides_the_usage_chunk_when_the_client_did_not_ask(gateway, fake_openai):
    chunks = list(gateway.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "No usage"}], stream=True))
    assert all(c.usage is None for c in chunks)
    # …but the gateway asked upstream for it, and bills from it.
    assert fake_openai.last_request.body["stream_options"] == {"include_usage": True}
    gateway.drain(expect=1)
    assert UsageRecord.objects.get().sell_cost > 0


def test_it_serves_the_async_client_concurrently(gateway):
    async def run():
        client = gateway.async_client()
        results = await asyncio.gather(*(client.chat.completions.create(
            model="demo-chat", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=16) for i in range(20)))
        stream = await client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "s"}], stream=True)
        pieces = [chunk async for chunk in stream]
        await client.close()
        return results, pieces

    results, pieces = asyncio.run(run())
    assert all(r.choices[0].message.content for r in results) and pieces
    gateway.drain(expect=21)
    assert UsageRecord.objects.filter(status="ok").count() == 21


def test_it_passes_tools_response_format_n_stop_and_seed_through(gateway, fake_openai):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    completion = gateway.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Weather in Moscow?"}], tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, n=2, stop=["\n\n"], seed=7,
        response_format={"type": "text"})
    assert completion.choices[0].message.tool_calls[0].function.name == "get_weather"
    sent = fake_openai.last_request.body
    assert sent["tools"] == tools and sent["n"] == 2 and sent["stop"] == ["\n\n"] and sent["seed"] == 7
    assert sent["response_format"] == {"type": "text"}


def test_it_serves_completions_and_embeddings(gateway, fake_openai):
    client = gateway.client()
    completion = client.completions.create(model="gpt-4o-mini", prompt="Once upon a time", max_tokens=12)
    assert completion.choices[0].text and completion.usage.completion_tokens <= 12
    assert fake_openai.last_request.path == "/v1/completions"
    streamed = list(client.completions.create(model="gpt-4o-mini", prompt="Once upon a time", max_tokens=12, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == completion.choices[0].text
    embedding = client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert len(embedding.data) == 2 and embedding.usage.prompt_tokens > 0
    gateway.drain(expect=3)
    records = {r.endpoint + ("-stream" if r.stream else ""): r for r in UsageRecord.objects.all()}
    assert records["completion"].sell_cost == expected_cost(completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert records["completion-stream"].sell_cost == records["completion"].sell_cost
    assert records["embedding"].output_tokens == 0
    assert records["embedding"].sell_cost == expected_cost(embedding.usage.prompt_tokens, 0, price_in=20_000)


def test_it_serves_the_mock_provider_without_any_upstream(gateway, fake_openai):
    completion = gateway.client().chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "Привет"}])
    assert completion.choices[0].message.content
    assert fake_openai.requests == []
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    # 10 / 20 RUB per 1M tokens × sell coefficient 1.25; no supplier behind the mock.
    assert record.sell_cost == expected_cost(completion.usage.prompt_tokens, completion.usage.completion_tokens,
                                             price_in=10 * RUB, price_out=20 * RUB, fx=RUB)
    assert record.buy_cost == 0 and record.supplier_key_id is None
