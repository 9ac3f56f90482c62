"""YandexGPT end to end: the official ``openai`` SDK → the gateway → FakeYandex, native and
OpenAI-compatible, with the money checked (RUB prices, usage records, sell and buy costs)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from decimal import Decimal

import openai
import orjson
import pytest

from apps.billing.models import UsageRecord
from lib.money import cost_micro
from tests.fakes import yandex_upstream
from tests.fakes.yandex_upstream import (
    ANSWER,
    API_KEY,
    FOLDER,
    LEAKY_ERROR,
    embedding_of,
    new_authorized_key,
    prompt_tokens,
    words_of,
)
from tests.proxy.conftest import RUB, Gateway, ServerThread, free_port

# The fake's fixtures, by assignment (an import would be shadowed by every test's argument).
fake_yandex_server = yandex_upstream.fake_yandex_server
fake_yandex = yandex_upstream.fake_yandex

LITE_PRICE = 200 * RUB  # YandexGPT Lite: 0.20 ₽ per 1000 tokens = 200 ₽ per 1M, input and output
EMB_PRICE = 10 * RUB
WEATHER_TOOL = {"type": "function", "function": {"name": "weather", "description": "Погода в городе",
                                                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
QUESTION = [{"role": "system", "content": "Ты — вежливый помощник."}, {"role": "user", "content": "Какая погода в Москве?"}]


@dataclass
class Yandex:
    provider: object
    key: object
    compat: object
    compat_key: object


def _key(provider, supplier, name: str, secret: str, **fields):
    from apps.providers.models import SupplierKey

    key = SupplierKey(supplier=supplier, provider=provider, name=name, buy_coefficient=Decimal("1.10"), **fields)
    key.set_secret(secret)
    key.save()
    return key


@pytest.fixture
def yandex(world, fake_yandex):
    from apps.providers.models import Model, Price, Provider

    native = Provider.objects.create(slug="yandex-native", kind="yandexgpt", base_url=fake_yandex.native_url, internal=True,
                                     options={"folder_id": FOLDER})
    key = _key(native, world.supplier, "ya-1", API_KEY)
    lite = Model.objects.create(name="yandexgpt-lite", provider=native, upstream_model="yandexgpt-lite/latest", max_output_tokens=2000)
    Price.objects.create(model=lite, currency="RUB", input_per_1m=LITE_PRICE, output_per_1m=LITE_PRICE)
    emb = Model.objects.create(name="yandex-emb", provider=native, upstream_model="text-search-doc/latest", modality="embedding")
    Price.objects.create(model=emb, currency="RUB", input_per_1m=EMB_PRICE, output_per_1m=0)
    compat = Provider.objects.create(slug="yandex-compat", kind="yandexgpt", base_url=fake_yandex.compat_url, internal=True,
                                     options={"folder_id": FOLDER, "api": "openai"})
    compat_key = _key(compat, world.supplier, "ya-compat", API_KEY)
    pro = Model.objects.create(name="yandexgpt-compat", provider=compat, upstream_model="yandexgpt/latest", max_output_tokens=2000)
    Price.objects.create(model=pro, currency="RUB", input_per_1m=LITE_PRICE, output_per_1m=LITE_PRICE)
    return Yandex(native, key, compat, compat_key)


@pytest.fixture
def gateway(world, yandex):
    from apps.proxy.pipeline.app import ProxyApp
    from jetstream.asgi import build_application

    with ServerThread(build_application(ProxyApp()), free_port()) as server:
        yield Gateway(world, server)


def cost(prompt: int, completion: int, *, coefficient: str = "1.25", price_in: int = LITE_PRICE, price_out: int = LITE_PRICE) -> int:
    return cost_micro(tokens_by_price=[(prompt, price_in), (completion, price_out)], fx_micro=RUB, coefficient=Decimal(coefficient))


def assert_billed(gateway, *, prompt: int, completion: int, status: str = "ok", stream: bool = False, key=None) -> UsageRecord:
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert (record.status, record.stream, record.input_tokens, record.output_tokens, record.cached_tokens) == (
        status, stream, prompt, completion, 0)
    assert not record.usage_counted_locally
    assert (record.sell_cost, record.buy_cost) == (cost(prompt, completion), cost(prompt, completion, coefficient="1.10"))
    assert record.sell_cost > 0
    if key is not None:
        assert record.supplier_key_id == key.pk
    return record


def native_prompt(messages: list[dict]) -> int:
    return prompt_tokens([{"text": m["content"]} for m in messages])


# ------------------------------------------------------------------ native API


def test_it_answers_a_sync_chat_and_bills_the_string_token_counts(gateway, fake_yandex, yandex):
    completion = gateway.client().chat.completions.create(model="yandexgpt-lite", messages=QUESTION, max_tokens=300, temperature=0.3)
    assert completion.choices[0].message.content == ANSWER and completion.choices[0].finish_reason == "stop"
    assert completion.model == "yandexgpt-lite"
    prompt, words = native_prompt(QUESTION), len(words_of(ANSWER))
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt, words)
    upstream = fake_yandex.last_request
    assert upstream.path == "/foundationModels/v1/completion"
    assert upstream.headers["authorization"] == f"Api-Key {API_KEY}" and "x-folder-id" not in upstream.headers
    assert upstream.body["modelUri"] == f"gpt://{FOLDER}/yandexgpt-lite/latest"
    assert upstream.body["completionOptions"] == {"stream": False, "temperature": 0.3, "maxTokens": "300"}
    assert_billed(gateway, prompt=prompt, completion=words, key=yandex.key)


def test_it_answers_async_and_bills_reasoning_tokens_as_output(gateway, fake_yandex):
    fake_yandex.behavior(reasoning_tokens=40)

    async def ask():
        async with gateway.async_client() as client:
            return await client.chat.completions.create(model="yandexgpt-lite", messages=QUESTION, max_tokens=300)

    completion = asyncio.run(ask())
    words = len(words_of(ANSWER))
    assert completion.usage.completion_tokens == words + 40
    assert completion.usage.completion_tokens_details.reasoning_tokens == 40
    assert_billed(gateway, prompt=native_prompt(QUESTION), completion=words + 40)


def test_a_truncated_answer_finishes_with_length(gateway, fake_yandex):
    completion = gateway.client().chat.completions.create(model="yandexgpt-lite", messages=QUESTION, max_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "".join(words_of(ANSWER)[:3])
    assert_billed(gateway, prompt=native_prompt(QUESTION), completion=3)


def test_it_streams_the_cumulative_text_as_exact_deltas_and_bills_the_last_usage(gateway, fake_yandex):
    fake_yandex.behavior(write_bytes=5, line_ending="\r\n")  # every read cuts Cyrillic letters in half
    chunks = list(gateway.client().chat.completions.create(model="yandexgpt-lite", messages=QUESTION, max_tokens=300, stream=True,
                                                           stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == words_of(ANSWER) and "".join(pieces) == ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    final = chunks[-1]
    prompt, words = native_prompt(QUESTION), len(words_of(ANSWER))
    assert final.choices == [] and (final.usage.prompt_tokens, final.usage.completion_tokens) == (prompt, words)
    assert final.usage.model_extra["cost"] == pytest.approx(cost(prompt, words) / RUB)
    assert fake_yandex.last_request.body["completionOptions"]["stream"] is True
    record = assert_billed(gateway, prompt=prompt, completion=words, stream=True)
    assert record.ttft_ms is not None


def test_an_async_stream_without_include_usage_is_still_billed_from_upstream_usage(gateway, fake_yandex):
    async def ask():
        async with gateway.async_client() as client:
            stream = await client.chat.completions.create(model="yandexgpt-lite", messages=QUESTION, stream=True)
            return [chunk async for chunk in stream]

    chunks = asyncio.run(ask())
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert_billed(gateway, prompt=native_prompt(QUESTION), completion=len(words_of(ANSWER)), stream=True)


def test_a_tool_round_trip_through_the_native_api(gateway, fake_yandex):
    fake_yandex.behavior(tool_call={"name": "weather", "arguments": {"city": "Москва"}})
    client = gateway.client()
    first = client.chat.completions.create(model="yandexgpt-lite", messages=QUESTION, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "weather" and json.loads(call.function.arguments) == {"city": "Москва"}
    assert fake_yandex.last_request.body["tools"] == [{"function": WEATHER_TOOL["function"]}]

    history = [*QUESTION, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "−3 °C, снег"}]
    second = client.chat.completions.create(model="yandexgpt-lite", messages=history, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "Результат: weather = −3 °C, снег"
    sent = fake_yandex.last_request.body["messages"]
    assert sent[-2] == {"role": "assistant", "toolCallList": {"toolCalls": [{"functionCall": {"name": "weather",
                                                                                               "arguments": {"city": "Москва"}}}]}}
    assert sent[-1] == {"role": "assistant", "toolResultList": {"toolResults": [{"functionResult": {"name": "weather",
                                                                                                     "content": "−3 °C, снег"}}]}}
    gateway.drain(expect=2)
    records = list(UsageRecord.objects.order_by("started_at"))
    assert [r.output_tokens for r in records] == [1, len(words_of(second.choices[0].message.content))]
    assert all(r.sell_cost == cost(r.input_tokens, r.output_tokens) and r.input_tokens > 0 for r in records)


def test_a_streamed_tool_call(gateway, fake_yandex):
    fake_yandex.behavior(tool_call={"name": "weather", "arguments": {"city": "Казань"}})

    async def ask():
        async with gateway.async_client() as client:
            stream = await client.chat.completions.create(model="yandexgpt-lite", messages=QUESTION, tools=[WEATHER_TOOL], stream=True)
            return [chunk async for chunk in stream]

    chunks = asyncio.run(ask())
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "weather" and calls[0].id.startswith("call_")
    assert json.loads(calls[0].function.arguments) == {"city": "Казань"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert_billed(gateway, prompt=native_prompt(QUESTION), completion=1, stream=True)


def test_embeddings_come_back_in_openai_shape_and_are_billed(gateway, fake_yandex):
    text = "Мама мыла раму"
    response = gateway.client().embeddings.create(model="yandex-emb", input=text)  # the SDK asks for base64
    assert response.data[0].embedding == pytest.approx(embedding_of(text))
    assert fake_yandex.last_request.body == {"modelUri": f"emb://{FOLDER}/text-search-doc/latest", "text": text}
    tokens = len(text.split()) + 1
    assert response.usage.prompt_tokens == tokens
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert (record.input_tokens, record.output_tokens) == (tokens, 0)
    assert record.sell_cost == cost(tokens, 0, price_in=EMB_PRICE, price_out=0) > 0


def test_several_embedding_inputs_are_refused_clearly(gateway, fake_yandex):
    with pytest.raises(openai.BadRequestError) as refused:
        gateway.client().embeddings.create(model="yandex-emb", input=["раз", "два"])
    assert "one text per request" in refused.value.message
    assert fake_yandex.requests == []


# ------------------------------------------------------------------ failures


def test_a_refused_key_fails_over_to_the_next(gateway, fake_yandex, yandex, world):
    from apps.providers.models import SupplierKey

    SupplierKey.objects.filter(pk=yandex.key.pk).update(priority=1)
    _key(yandex.provider, world.supplier, "ya-revoked", "AQVNrevokedkey000000000000000000000000000", priority=0)
    _key(yandex.provider, world.supplier, "ya-fallback", API_KEY, priority=2)
    gateway.wait_config()
    completion = gateway.client().chat.completions.create(model="yandexgpt-lite", messages=QUESTION)
    assert completion.choices[0].message.content == ANSWER
    statuses = [r.status for r in fake_yandex.requests]
    assert statuses == [401, 200]
    assert_billed(gateway, prompt=native_prompt(QUESTION), completion=len(words_of(ANSWER)), key=yandex.key)


def test_a_failing_upstream_is_a_502_that_leaks_nothing_and_costs_nothing(gateway, fake_yandex):
    fake_yandex.behavior(status=500, error_body=LEAKY_ERROR)
    with pytest.raises(openai.APIStatusError) as failed:
        gateway.client().chat.completions.create(model="yandexgpt-lite", messages=QUESTION)
    assert failed.value.status_code == 502
    text = failed.value.response.text
    assert API_KEY not in text and "127.0.0.1" not in text and "prod.internal" not in text
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert (record.status, record.http_status, record.sell_cost, record.buy_cost) == ("upstream_error", 502, 0, 0)


def test_a_bad_request_reaches_the_client_scrubbed(gateway, fake_yandex):
    fake_yandex.behavior(status=400, error_body={"error": {"grpcCode": 3, "httpCode": 400, "httpStatus": "Bad Request", "details": [],
                                                           "message": "invalid temperature for key {key} at {url}"}})
    with pytest.raises(openai.BadRequestError) as refused:
        gateway.client().chat.completions.create(model="yandexgpt-lite", messages=QUESTION)
    assert "invalid temperature" in refused.value.message
    assert API_KEY not in refused.value.response.text and "127.0.0.1" not in refused.value.response.text
    assert len(fake_yandex.requests) == 1  # about the request: no other key is tried


def test_an_error_line_mid_stream_ends_with_an_error_event_and_bills_what_was_generated(gateway, fake_yandex):
    fake_yandex.behavior(stream_error_after=3, stream_error_body=LEAKY_ERROR)
    stream = gateway.client().chat.completions.create(model="yandexgpt-lite", messages=QUESTION, stream=True)
    received = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "".join(words_of(ANSWER)[:3])
    assert API_KEY not in str(failed.value.body) and "127.0.0.1" not in str(failed.value.body)
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.status == "upstream_error" and record.input_tokens == native_prompt(QUESTION) and record.output_tokens == 3
    assert record.sell_cost == cost(record.input_tokens, 3)


def test_a_stream_cut_before_its_final_status_is_not_shown_as_complete(gateway, fake_yandex):
    fake_yandex.behavior(drop_after_lines=4)
    with pytest.raises(openai.APIError):
        list(gateway.client().chat.completions.create(model="yandexgpt-lite", messages=QUESTION, stream=True))
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.status == "upstream_error" and record.output_tokens == 4 and record.sell_cost > 0


# ------------------------------------------------------------------ OpenAI-compatible API and IAM


def test_the_openai_mode_answers_sync_with_the_uri_and_folder(gateway, fake_yandex, yandex):
    completion = gateway.client().chat.completions.create(model="yandexgpt-compat", messages=QUESTION, max_tokens=100)
    assert completion.choices[0].message.content == ANSWER and completion.model == "yandexgpt-compat"
    upstream = fake_yandex.last_request
    assert upstream.path == "/v1/chat/completions" and upstream.body["model"] == f"gpt://{FOLDER}/yandexgpt/latest"
    assert upstream.headers["authorization"] == f"Bearer {API_KEY}" and upstream.headers["openai-project"] == FOLDER
    prompt = prompt_tokens([{"text": m["content"]} for m in QUESTION])
    assert_billed(gateway, prompt=prompt, completion=len(words_of(ANSWER)), key=yandex.compat_key)


def test_the_openai_mode_streams_a_tool_call(gateway, fake_yandex):
    fake_yandex.behavior(tool_call={"name": "weather", "arguments": {"city": "Сочи"}})
    chunks = list(gateway.client().chat.completions.create(model="yandexgpt-compat", messages=QUESTION, tools=[WEATHER_TOOL],
                                                           stream=True, stream_options={"include_usage": True}))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and json.loads(calls[0].function.arguments) == {"city": "Сочи"}
    assert fake_yandex.last_request.body["stream_options"] == {"include_usage": True}
    prompt = prompt_tokens([{"text": m["content"]} for m in QUESTION])
    assert chunks[-1].usage.prompt_tokens == prompt
    assert_billed(gateway, prompt=prompt, completion=1, stream=True)


def test_an_authorized_key_is_exchanged_for_an_iam_token(gateway, fake_yandex, yandex, world):
    from apps.providers.models import Provider

    authorized = new_authorized_key()
    fake_yandex.register_key(authorized)
    Provider.objects.filter(pk=yandex.provider.pk).update(options={"folder_id": FOLDER, "auth": "iam", "iam_url": fake_yandex.iam_url})
    yandex.key.set_secret(orjson.dumps(authorized).decode())
    yandex.key.save()
    gateway.wait_config()
    client = gateway.client()
    for _ in range(2):
        assert client.chat.completions.create(model="yandexgpt-lite", messages=QUESTION).choices[0].message.content == ANSWER
    assert fake_yandex.issued == 1  # cached for the second request
    calls = [r for r in fake_yandex.requests if r.path.endswith("/completion")]
    assert len(calls) == 2 and all(r.headers["authorization"].startswith("Bearer t1.9euelZexchanged") for r in calls)
    assert all(r.headers["x-folder-id"] == FOLDER for r in calls)
    gateway.drain(expect=2)
