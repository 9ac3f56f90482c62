"""Anthropic Messages inbound (/v1/messages) through the real gateway with the official `anthropic`
SDK: answers, streams, tools, images, errors — metered and limited exactly as chat completions."""

from __future__ import annotations

import asyncio
import base64

import anthropic
import httpx
import openai
import pytest

from apps.billing import services as ledger
from apps.billing.models import UsageRecord
from tests.fakes.openai_upstream import DEFAULT_KEY, leaky_error
from tests.proxy.conftest import RUB
from tests.proxy.helpers import expected_cost

WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def claude(gateway, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=kwargs.pop("api_key", gateway.world.secret),
                               max_retries=kwargs.pop("max_retries", 0), **kwargs)


def test_it_answers_like_anthropic_and_bills_exactly_as_chat_completions(gateway, fake_openai):
    raw = claude(gateway).messages.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=60, system="Be brief.", messages=[{"role": "user", "content": "Say hello"}])
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.model == "gpt-4o-mini"
    assert message.id == "msg_" + raw.headers["x-request-id"].removeprefix("req_")
    assert message._request_id == raw.headers["x-request-id"] == raw.headers["request-id"]
    assert message.stop_reason == "end_turn" and message.content[0].type == "text" and message.content[0].text
    # The upstream got the canonical chat request, with the supplier's key.
    upstream = fake_openai.last_request
    assert upstream.path == "/v1/chat/completions" and upstream.headers["authorization"] == f"Bearer {DEFAULT_KEY}"
    assert upstream.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    assert upstream.body["max_tokens"] == 60

    chat = gateway.client().chat.completions.create(
        model="gpt-4o-mini", max_tokens=60, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}])
    assert chat.choices[0].message.content == message.content[0].text
    assert (message.usage.input_tokens, message.usage.output_tokens) == (chat.usage.prompt_tokens, chat.usage.completion_tokens)
    assert message.usage.cache_read_input_tokens == 0
    sell = expected_cost(chat.usage.prompt_tokens, chat.usage.completion_tokens)
    assert raw.headers["x-jetstream-cost"] == f"{sell // RUB}.{sell % RUB:06d}"
    gateway.drain(expect=2)
    records = {r.request_id: r for r in UsageRecord.objects.all()}
    mine = records[raw.headers["x-request-id"]]
    assert (mine.status, mine.endpoint, mine.input_tokens, mine.output_tokens, mine.sell_cost) == (
        "ok", "chat", chat.usage.prompt_tokens, chat.usage.completion_tokens, sell)
    assert sorted((r.input_tokens, r.output_tokens, r.sell_cost, r.buy_cost) for r in records.values())[0] == \
        sorted((r.input_tokens, r.output_tokens, r.sell_cost, r.buy_cost) for r in records.values())[1]


def test_input_tokens_exclude_cache_reads_as_anthropic_counts_them(gateway, fake_openai):
    fake_openai.behavior(cached_tokens=4)
    message = claude(gateway).messages.create(model="gpt-4o-mini", max_tokens=30, messages=[{"role": "user", "content": "Cache me"}])
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.cached_tokens == 4 and message.usage.cache_read_input_tokens == 4
    assert message.usage.input_tokens == record.input_tokens - 4
    assert record.sell_cost == expected_cost(record.input_tokens, record.output_tokens, cached=4)


def test_it_takes_the_token_as_x_api_key_or_bearer_and_refuses_a_bad_one(gateway):
    ok = claude(gateway).messages.create(model="demo-chat", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert ok.content[0].text
    bearer = anthropic.Anthropic(base_url=gateway.url, auth_token=gateway.world.secret, max_retries=0)
    assert bearer.messages.create(model="demo-chat", max_tokens=20, messages=[{"role": "user", "content": "hi"}]).content
    with pytest.raises(anthropic.AuthenticationError) as caught:
        claude(gateway, api_key="js-wrong-0000").messages.create(model="demo-chat", max_tokens=20,
                                                                 messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "authentication_error"


def test_it_streams_named_events_that_the_sdk_accumulates(gateway):
    with claude(gateway).messages.stream(model="gpt-4o-mini", max_tokens=80,
                                         messages=[{"role": "user", "content": "Stream a story"}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= set(kinds)
    assert final.stop_reason == "end_turn" and final.content[0].text
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.stream and record.status == "ok" and final.usage.output_tokens == record.output_tokens
    assert final.usage.input_tokens == record.input_tokens
    assert record.sell_cost == expected_cost(record.input_tokens, record.output_tokens)


def test_the_raw_stream_has_ping_and_the_cost_in_message_delta(gateway):
    body = {"model": "demo-chat", "max_tokens": 40, "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
    with httpx.stream("POST", gateway.base_url + "/messages", json=body, timeout=10,
                      headers={"x-api-key": gateway.world.secret, "anthropic-version": "2023-06-01"}) as response:
        text = response.read().decode()
    assert response.headers["content-type"].startswith("text/event-stream")
    names = [line[len("event: "):] for line in text.splitlines() if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    assert "[DONE]" not in text and "chat.completion" not in text
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert f'"cost":{record.sell_cost // RUB}.{record.sell_cost % RUB:06d}' in text


def test_the_async_client_creates_and_streams(gateway):
    async def run():
        client = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=gateway.world.secret, max_retries=0)
        answers = await asyncio.gather(*(client.messages.create(
            model="demo-chat", max_tokens=16, messages=[{"role": "user", "content": f"question {i}"}]) for i in range(5)))
        async with client.messages.stream(model="demo-chat", max_tokens=16, messages=[{"role": "user", "content": "s"}]) as stream:
            text = "".join([t async for t in stream.text_stream])
        await client.close()
        return answers, text

    answers, text = asyncio.run(run())
    assert all(a.content[0].text for a in answers) and text
    gateway.drain(expect=6)
    assert UsageRecord.objects.filter(status="ok", sell_cost__gt=0).count() == 6


def test_a_tool_round_trip(gateway, fake_openai):
    client = claude(gateway)
    first = client.messages.create(model="gpt-4o-mini", max_tokens=100, tools=[WEATHER], tool_choice={"type": "any"},
                                   messages=[{"role": "user", "content": "Weather in Oslo?"}])
    assert fake_openai.last_request.body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["input_schema"], "description": "The weather in a city."}}]
    assert fake_openai.last_request.body["tool_choice"] == "required"
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict) and "city" in call.input

    second = client.messages.create(model="gpt-4o-mini", max_tokens=100, tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"},
                                     {"type": "text", "text": "Thanks, and tomorrow?"}]},
    ])
    assert second.stop_reason == "end_turn" and second.content[0].text
    sent = fake_openai.last_request.body["messages"]
    assert sent[1]["role"] == "assistant" and sent[1]["tool_calls"][0]["id"] == call.id
    assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}
    assert sent[3] == {"role": "user", "content": [{"type": "text", "text": "Thanks, and tomorrow?"}]}
    assert "tool_choice" not in fake_openai.last_request.body


def test_a_streamed_tool_call_arrives_as_input_json_deltas(gateway):
    with claude(gateway).messages.stream(model="gpt-4o-mini", max_tokens=100, tools=[WEATHER],
                                         tool_choice={"type": "tool", "name": "get_weather"},
                                         messages=[{"role": "user", "content": "Weather in Oslo?"}]) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert deltas and set(deltas) == {"input_json_delta"}
    assert final.stop_reason == "tool_use"  # OpenAI's "stop" after a call forced by name is still a tool_use stop
    block = final.content[0]
    assert block.type == "tool_use" and block.name == "get_weather" and isinstance(block.input, dict) and block.input


def test_images_by_base64_and_url_reach_the_upstream_as_image_parts(gateway, fake_openai):
    claude(gateway).messages.create(model="gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "What is in these?"}]}])
    parts = fake_openai.last_request.body["messages"][0]["content"]
    assert parts == [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                     {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                     {"type": "text", "text": "What is in these?"}]


def test_a_missing_max_tokens_is_a_400_in_anthropics_shape_and_recorded_invalid(gateway, fake_openai):
    response = httpx.post(gateway.base_url + "/messages", timeout=10, headers={"x-api-key": gateway.world.secret},
                          json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400
    assert response.json() == {"type": "error", "request_id": response.headers["x-request-id"], "error": {
        "type": "invalid_request_error", "message": "max_tokens: Field required", "code": "missing_required_parameter"}}
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude(gateway).messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert fake_openai.requests == []
    gateway.drain(expect=2)
    assert sorted(UsageRecord.objects.values_list("status", "http_status")) == [("invalid", 400), ("invalid", 404)]


def test_upstream_failures_are_anthropic_errors_and_scrubbed(gateway, fake_openai):
    fake_openai.behavior(status=500, error_body=leaky_error())
    with pytest.raises(anthropic.InternalServerError) as caught:
        claude(gateway).messages.create(model="gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502 and caught.value.body["error"]["type"] == "api_error"
    assert DEFAULT_KEY not in str(caught.value.body) and fake_openai.base_url not in str(caught.value.body)


def test_a_failure_mid_stream_is_an_error_event_and_what_was_generated_is_billed(gateway, fake_openai):
    fake_openai.behavior(stream_error_after=3, stream_error_body=leaky_error())
    with pytest.raises(anthropic.APIStatusError) as caught:
        with claude(gateway).messages.stream(model="gpt-4o-mini", max_tokens=80,
                                             messages=[{"role": "user", "content": "Stream a story"}]) as stream:
            for _ in stream:
                pass
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "api_error"
    assert DEFAULT_KEY not in str(caught.value.body)
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.status == "upstream_error" and record.output_tokens > 0 and record.sell_cost > 0


def test_a_refusal_no_retry_can_cure_is_not_retried_by_the_sdk(gateway):
    wallet = ledger.company_wallet(gateway.world.company)
    ledger.transfer(idempotency_id="drain", debit=wallet, credit=ledger.platform_account("platform_revenue"),
                    amount=ledger.balance(wallet).available)
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude(gateway, max_retries=3).messages.create(model="demo-chat", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 402 and caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.body["error"] == {"type": "billing_error", "message": caught.value.body["error"]["message"],
                                          "code": "insufficient_balance"}
    gateway.drain(expect=1)  # one request: the SDK did not retry
    assert UsageRecord.objects.get().status == "rejected"


def test_spend_limits_apply_to_messages_as_to_chat(gateway):
    token = gateway.world.token
    token.limit_total = 1  # one micro-ruble: no request fits
    token.save()
    gateway.wait_config()
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude(gateway).messages.create(model="demo-chat", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 402  # never fits: not a rate limit (tests/proxy/test_refusals.py)
    assert caught.value.body["error"]["type"] == "billing_error" and caught.value.body["error"]["code"] == "limit_total"
    with pytest.raises(openai.APIStatusError):
        gateway.client().chat.completions.create(model="demo-chat", max_tokens=20, messages=[{"role": "user", "content": "hi"}])


def test_an_idempotent_replay_via_messages_costs_nothing(gateway):
    client = claude(gateway)
    request = {"model": "demo-chat", "max_tokens": 30, "messages": [{"role": "user", "content": "Replay me"}],
               "extra_headers": {"Idempotency-Key": "msg-42"}}
    first = client.messages.with_raw_response.create(**request)
    second = client.messages.with_raw_response.create(**request)
    assert second.headers["idempotent-replayed"] == "true" and second.headers["x-jetstream-cost"] == "0.000000"
    assert second.parse().model_dump() == first.parse().model_dump()
    streamed = {**request, "extra_headers": {"Idempotency-Key": "msg-43"}}
    texts = []
    for _ in range(2):
        with client.messages.stream(**streamed) as stream:
            texts.append(stream.get_final_message().content[0].text)
    assert texts[0] == texts[1]
    gateway.drain(expect=4)
    assert sorted(UsageRecord.objects.values_list("sell_cost", flat=True))[:2] == [0, 0]
    assert UsageRecord.objects.filter(sell_cost__gt=0).count() == 2


def test_one_idempotency_key_on_two_dialects_is_two_requests(gateway):
    # A body both dialects accept, sent with one key to chat completions and then to messages: the
    # second is refused as a key reused for another request, never answered in the first's shape.
    body = {"model": "demo-chat", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {gateway.world.secret}", "Idempotency-Key": "both-ways", "anthropic-version": "2023-06-01"}
    first = httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers, timeout=10)
    second = httpx.post(f"{gateway.base_url}/messages", json=body, headers=headers, timeout=10)
    assert first.status_code == 200 and first.json()["object"] == "chat.completion"
    assert second.status_code == 409 and second.json()["type"] == "error"


def test_count_tokens_counts_locally_and_records_nothing(gateway, fake_openai):
    from lib import tokenizer

    counted = claude(gateway).messages.count_tokens(model="gpt-4o-mini", system="Be brief.",
                                                    messages=[{"role": "user", "content": "How many tokens is this?"}])
    expected = tokenizer.count_chat_request(
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How many tokens is this?"}]},
        encoding=tokenizer.encoding_for_model("gpt-4o-mini"))
    assert counted.input_tokens == expected > 0
    assert fake_openai.requests == []
    gateway.drain()
    assert UsageRecord.objects.count() == 0
