"""Gemini end to end: the official ``openai`` SDK → the real gateway (uvicorn, PostgreSQL, Redis) → FakeGemini,
and the money that comes out of it (usage records, sell and buy costs)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from types import SimpleNamespace

import openai
import pytest

from apps.billing.models import UsageRecord
from tests.fakes.gemini_upstream import (
    DEFAULT_KEY,
    OTHER_KEY,
    fake_gemini,  # noqa: F401 - fixture
    fake_gemini_server,  # noqa: F401 - fixture
    google_error,
    leaky_error,
)
from tests.fakes.openai_upstream import DSN, INTERNAL_HOST, INTERNAL_IP
from tests.proxy.helpers import expected_cost

# gemini-2.5-flash's list price (USD per 1M tokens, micro-units): input 0.30, cached input 0.03, output 2.50.
PRICES = {"price_in": 300_000, "price_cached": 30_000, "price_out": 2_500_000}
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True}}]


@pytest.fixture
def gemini(world, fake_gemini):  # noqa: F811
    """A Gemini provider at FakeGemini with one good key, a chat model (public name ≠ upstream id) and an embedding model."""
    from apps.providers.models import Model, Price, Provider, SupplierKey

    provider = Provider.objects.create(slug="gemini-main", kind="gemini", base_url=fake_gemini.base_url, internal=True)
    key = SupplierKey(supplier=world.supplier, provider=provider, name="gk-1", buy_coefficient=Decimal("1.10"))
    key.set_secret(DEFAULT_KEY)
    key.save()
    model = Model.objects.create(name="gemini-flash", provider=provider, upstream_model="gemini-2.5-flash",
                                 context_window=1_000_000, max_output_tokens=8192)
    Price.objects.create(model=model, currency="USD", input_per_1m=PRICES["price_in"], cached_input_per_1m=PRICES["price_cached"],
                         output_per_1m=PRICES["price_out"])
    embed = Model.objects.create(name="gemini-embed", provider=provider, upstream_model="gemini-embedding-001", modality="embedding")
    Price.objects.create(model=embed, currency="USD", input_per_1m=150_000, output_per_1m=0)
    return SimpleNamespace(provider=provider, key=key, model=model, embed=embed, fake=fake_gemini)


@pytest.fixture
def gw(gemini, gateway):
    gateway.wait_config()  # the models were saved before the gateway started; this is belt and braces
    return gateway


def cost(prompt: int, completion: int, *, cached: int = 0, coefficient: str = "1.25") -> int:
    return expected_cost(prompt, completion, cached=cached, coefficient=coefficient, **PRICES)


def only_record() -> UsageRecord:
    return UsageRecord.objects.get()


def test_it_answers_a_chat_through_gemini_and_bills_it_exactly(gw, gemini):
    response = gw.client().chat.completions.with_raw_response.create(
        model="gemini-flash", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count the coins"}],
        max_tokens=50, temperature=0.1)
    completion = response.parse()
    assert completion.choices[0].message.content == "Gemini heard: Count the coins"
    assert completion.choices[0].finish_reason == "stop" and completion.model == "gemini-flash"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 5)
    seen = gemini.fake.last_request
    assert seen.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert seen.headers["x-goog-api-key"] == DEFAULT_KEY and "authorization" not in seen.headers
    assert seen.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert seen.body["generationConfig"] == {"maxOutputTokens": 50, "temperature": 0.1}
    gw.drain(expect=1)
    record = only_record()
    assert (record.status, record.http_status, record.input_tokens, record.output_tokens) == ("ok", 200, 5, 5)
    assert not record.usage_counted_locally and record.supplier_key_id == gemini.key.pk
    assert (record.sell_cost, record.buy_cost) == (cost(5, 5), cost(5, 5, coefficient="1.10"))
    assert response.headers["x-jetstream-cost"] == f"{record.sell_cost // 1_000_000}.{record.sell_cost % 1_000_000:06d}"


def test_thinking_and_cached_tokens_are_billed_at_their_prices(gw, gemini):
    gemini.fake.behavior(thoughts="Let me count them one by one", cached_tokens=4)
    completion = gw.client().chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "Count the coins"}])
    assert "Let me" not in completion.choices[0].message.content  # thoughts are never content
    usage = completion.usage
    # prompt = 3 words + 4 cached; output = 5 words + 7 thought words (reasoning tokens are output).
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 12)
    assert usage.prompt_tokens_details.cached_tokens == 4 and usage.completion_tokens_details.reasoning_tokens == 7
    gw.drain(expect=1)
    record = only_record()
    assert (record.input_tokens, record.output_tokens, record.cached_tokens) == (7, 12, 4)
    assert record.sell_cost == cost(7, 12, cached=4) and record.sell_cost != cost(7, 12)


def test_it_streams_with_the_usage_and_cost_at_the_end(gw, gemini):
    chunks = list(gw.client().chat.completions.create(
        model="gemini-flash", messages=[{"role": "user", "content": "Stream the vault inventory"}], stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Gemini heard: Stream the vault inventory"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    final = chunks[-1]
    assert final.choices == [] and (final.usage.prompt_tokens, final.usage.completion_tokens) == (4, 6)
    assert {c.model for c in chunks} == {"gemini-flash"}
    assert gemini.fake.last_request.path.endswith(":streamGenerateContent") and gemini.fake.last_request.query == {"alt": "sse"}
    gw.drain(expect=1)
    record = only_record()
    assert record.stream and (record.input_tokens, record.output_tokens) == (4, 6) and not record.usage_counted_locally
    assert record.sell_cost == cost(4, 6) and final.usage.model_extra["cost"] == pytest.approx(record.sell_cost / 1_000_000)


def test_a_stream_without_include_usage_hides_it_but_bills_from_it(gw, gemini):
    chunks = list(gw.client().chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "Hi there"}],
                                                      stream=True))
    assert chunks and all(c.usage is None for c in chunks)
    gw.drain(expect=1)
    assert (only_record().input_tokens, only_record().output_tokens, only_record().sell_cost) == (2, 4, cost(2, 4))


def test_the_async_client_and_a_tool_round_trip(gw, gemini):
    async def run():
        client = gw.async_client()
        messages = [{"role": "user", "content": "Weather in Rome?"}]
        first = await client.chat.completions.create(model="gemini-flash", messages=messages, tools=WEATHER, tool_choice="auto")
        call = first.choices[0].message.tool_calls[0]
        messages += [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 24}'}]
        second = await client.chat.completions.create(model="gemini-flash", messages=messages, tools=WEATHER)
        stream = await client.chat.completions.create(model="gemini-flash", messages=messages[:1], tools=WEATHER, stream=True)
        streamed = [chunk async for chunk in stream]
        await client.close()
        return first, second, streamed

    first, second, streamed = asyncio.run(run())
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.id.startswith("call_") and (call.function.name, call.function.arguments) == ("get_weather", '{"city":"Rome"}')
    assert second.choices[0].message.content == 'The tool said: {"temp_c":24}'
    sent = gemini.fake.requests[1].body
    assert sent["tools"][0]["functionDeclarations"][0]["parameters"] == {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    assert sent["contents"][1] == {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}]}
    assert sent["contents"][2] == {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 24}}}]}
    deltas = [c.choices[0].delta for c in streamed if c.choices]
    assert deltas[0].tool_calls[0].function.name == "get_weather" and deltas[-1].tool_calls is not None
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"
    gw.drain(expect=3)
    assert UsageRecord.objects.filter(status="ok", sell_cost__gt=0).count() == 3


def test_it_embeds_through_batch_embed_contents_and_counts_the_input_locally(gw, gemini):
    embedding = gw.client().embeddings.create(model="gemini-embed", input=["one coin", "two coins"], dimensions=4)
    assert [len(item.embedding) for item in embedding.data] == [4, 4] and [item.index for item in embedding.data] == [0, 1]
    seen = gemini.fake.last_request
    assert seen.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents" and len(seen.body["requests"]) == 2
    gw.drain(expect=1)
    record = only_record()
    assert record.usage_counted_locally and record.output_tokens == 0
    assert record.input_tokens == embedding.usage.prompt_tokens > 0
    assert record.sell_cost == expected_cost(record.input_tokens, 0, price_in=150_000)


def test_a_blocked_prompt_is_a_400_content_filter_and_a_broken_stream_an_error_event(gw, gemini):
    gemini.fake.behavior(block_prompt="SAFETY")
    with pytest.raises(openai.BadRequestError) as refused:
        gw.client().chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "something bad"}])
    assert refused.value.code == "content_filter" and "SAFETY" in refused.value.message
    with pytest.raises(openai.BadRequestError):
        list(gw.client().chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "bad"}], stream=True))
    gemini.fake.reset()
    gemini.fake.behavior(stream_error_after=1, chunks=4, stream_error_body=leaky_error(503, "UNAVAILABLE"))
    got = []
    with pytest.raises(openai.APIError) as broken:
        for chunk in gw.client().chat.completions.create(model="gemini-flash", stream=True,
                                                         messages=[{"role": "user", "content": "one two three four five"}]):
            got.append(chunk)
    assert got and DEFAULT_KEY not in str(broken.value.message)
    gw.drain(expect=3)
    blocked = UsageRecord.objects.filter(http_status=400)
    assert blocked.count() == 2 and all(r.status == "upstream_error" and r.sell_cost == 0 for r in blocked)
    cut = UsageRecord.objects.get(stream=True, http_status__gte=500)
    # What was generated before the error is billed, from the last usageMetadata Gemini sent.
    assert cut.status == "upstream_error" and cut.output_tokens > 0 and cut.sell_cost > 0


def test_errors_fail_over_between_keys_and_never_leak_the_key_or_url(gw, gemini):
    from apps.providers.models import SupplierKey

    bad = SupplierKey(supplier=gemini.key.supplier, provider=gemini.provider, name="gk-wrong", priority=-1)
    bad.set_secret("AIzaSyNOT-a-key-the-fake-knows-000000000")
    bad.save()
    gemini.key.set_secret(OTHER_KEY)
    gemini.key.save()
    gw.wait_config()
    completion = gw.client().chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "Fail over"}])
    assert completion.choices[0].message.content == "Gemini heard: Fail over"
    assert [r.status for r in gemini.fake.requests] == [400, 200]  # Google's 400 API_KEY_INVALID, then the next key
    assert all("key" not in r.query and "AIza" not in r.url for r in gemini.fake.requests)

    bad.delete()  # from here on one key: its own failure is the answer
    gw.wait_config()
    gemini.fake.reset()
    gemini.fake.behavior(status=500, error_body=leaky_error())
    with pytest.raises(openai.APIStatusError) as failed:
        gw.client().chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == 502
    gemini.fake.behavior(status=400, error_body=google_error(400, "INVALID_ARGUMENT", "bad temperature for {key} at {url} "
                                                             f"via {INTERNAL_HOST} ({INTERNAL_IP}) {DSN}"))
    with pytest.raises(openai.BadRequestError) as rejected:
        gw.client().chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "x"}])
    text = str(failed.value.body) + str(rejected.value.body)
    assert "bad temperature" in text
    for secret in (OTHER_KEY, DEFAULT_KEY, "127.0.0.1", INTERNAL_HOST, INTERNAL_IP, DSN):
        assert secret not in text
    gemini.fake.behavior(status=429, error_body=None)
    with pytest.raises(openai.RateLimitError):
        gw.client().chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "x"}])
    # Not one URL the upstream saw carried a key.
    assert all("key" not in r.query and OTHER_KEY not in r.url for r in gemini.fake.requests)


def test_an_image_and_two_candidates_reach_gemini_and_come_back_as_choices(gw, gemini):
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    completion = gw.client().chat.completions.create(model="gemini-flash", n=2, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]}])
    assert [c.index for c in completion.choices] == [0, 1]
    assert {c.message.content for c in completion.choices} == {"Gemini heard: What is this"}
    sent = gemini.fake.last_request.body
    assert sent["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": png}}
    assert sent["generationConfig"]["candidateCount"] == 2
    gw.drain(expect=1)
    record = only_record()
    # Gemini counts an image as 258 tokens; both candidates' words are output.
    assert (record.input_tokens, record.output_tokens) == (3 + 258, 2 * 5) and record.sell_cost == cost(261, 10)


@pytest.mark.parametrize("cut", [{"end_after_chunks": 2}, {"drop_after_chunks": 2}])
def test_a_stream_cut_before_its_finish_reason_ends_in_an_error_and_bills_what_came(gw, gemini, cut):
    gemini.fake.behavior(chunks=4, **cut)
    got = []
    with pytest.raises(openai.APIError):
        for chunk in gw.client().chat.completions.create(model="gemini-flash", stream=True,
                                                         messages=[{"role": "user", "content": "one two three four five six"}]):
            got.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "Gemini heard: one two"
    gw.drain(expect=1)
    record = only_record()
    assert (record.status, record.http_status) == ("upstream_error", 502)
    # Billed from the last usageMetadata that arrived: the whole prompt and the words generated so far.
    assert (record.input_tokens, record.output_tokens) == (6, 4) and record.sell_cost == cost(6, 4)


def test_without_max_tokens_gemini_is_capped_at_what_the_gateway_reserved(gw, gemini):
    gw.client().chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "no cap given"}])
    assert gemini.fake.last_request.body["generationConfig"]["maxOutputTokens"] == 8192  # the model's limit, reserved for
