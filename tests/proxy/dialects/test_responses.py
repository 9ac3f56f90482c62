"""OpenAI Responses inbound (/v1/responses) through the real gateway with the official `openai`
SDK's ``client.responses``: string and item input, typed stream events, function tools, refusals of
stored-response features — metered exactly as chat completions."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from apps.billing.models import UsageRecord
from tests.fakes.openai_upstream import DEFAULT_KEY, leaky_error
from tests.proxy.conftest import RUB
from tests.proxy.helpers import expected_cost

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_a_string_input_with_instructions_is_answered_and_billed_as_chat(gateway, fake_openai):
    client = gateway.client()
    raw = client.responses.with_raw_response.create(model="gpt-4o-mini", instructions="Be brief.", input="Say hello",
                                                    max_output_tokens=60, store=False)
    response = raw.parse()
    assert response.object == "response" and response.status == "completed" and response.model == "gpt-4o-mini"
    assert response.id == "resp_" + raw.headers["x-request-id"].removeprefix("req_")
    assert response.output[0].type == "message" and response.output_text
    assert response.instructions == "Be brief." and response.store is False
    assert fake_openai.last_request.body["messages"] == [{"role": "system", "content": "Be brief."},
                                                         {"role": "user", "content": "Say hello"}]
    assert fake_openai.last_request.body["max_tokens"] == 60

    chat = client.chat.completions.create(model="gpt-4o-mini", max_tokens=60, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}])
    assert response.output_text == chat.choices[0].message.content
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens) == (chat.usage.prompt_tokens, chat.usage.completion_tokens)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens and usage.input_tokens_details.cached_tokens == 0
    sell = expected_cost(usage.input_tokens, usage.output_tokens)
    assert raw.headers["x-jetstream-cost"] == f"{sell // RUB}.{sell % RUB:06d}"
    gateway.drain(expect=2)
    assert {(r.status, r.input_tokens, r.output_tokens, r.sell_cost, r.buy_cost) for r in UsageRecord.objects.all()} == {
        ("ok", usage.input_tokens, usage.output_tokens, sell, expected_cost(usage.input_tokens, usage.output_tokens, coefficient="1.10"))}


def test_message_items_with_text_and_images(gateway, fake_openai):
    response = gateway.client().responses.create(model="gpt-4o-mini", input=[
        {"role": "developer", "content": "Answer in one line."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "https://example.com/cat.jpg", "detail": "low"}]},
    ])
    assert response.output_text
    assert fake_openai.last_request.body["messages"] == [
        {"role": "developer", "content": "Answer in one line."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}}]}]


def test_the_stream_is_typed_events_in_sequence_ending_with_the_billed_usage(gateway):
    events = list(gateway.client().responses.create(model="gpt-4o-mini", input="Stream a story", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and text == next(e.text for e in events if e.type == "response.output_text.done")
    completed = events[-1].response
    assert completed.status == "completed" and completed.output_text == text
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.stream and (completed.usage.input_tokens, completed.usage.output_tokens) == (record.input_tokens, record.output_tokens)
    assert record.sell_cost == expected_cost(record.input_tokens, record.output_tokens)
    assert completed.usage.model_extra["cost"] == pytest.approx(record.sell_cost / RUB)


def test_the_sdk_stream_helper_builds_the_final_response(gateway):
    with gateway.client().responses.stream(model="demo-chat", input="Hello there") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) != ""


def test_a_function_tool_round_trip(gateway, fake_openai):
    client = gateway.client()
    first = client.responses.create(model="gpt-4o-mini", input="Weather in Oslo?", tools=[WEATHER], tool_choice="required")
    assert fake_openai.last_request.body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER["parameters"]}}]
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and "city" in call.arguments and call.call_id

    second = client.responses.create(model="gpt-4o-mini", tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
    ])
    assert second.output_text
    assert fake_openai.last_request.body["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.call_id, "type": "function",
                                                                "function": {"name": "get_weather", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny, 21 C"}]


def test_a_streamed_function_call_has_its_argument_events(gateway):
    events = list(gateway.client().responses.create(model="gpt-4o-mini", input="Weather?", tools=[WEATHER],
                                                    tool_choice={"type": "function", "name": "get_weather"}, stream=True))
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and "response.output_text.delta" not in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert done.arguments == deltas and "city" in deltas
    item = events[-1].response.output[0]
    assert item.type == "function_call" and item.name == "get_weather" and item.arguments == deltas


def test_stored_responses_are_refused_with_a_clear_400(gateway, fake_openai):
    client = gateway.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-4o-mini", input="And then?", previous_response_id="resp_abc")
    assert caught.value.code == "unsupported_parameter" and caught.value.param == "previous_response_id"
    assert "does not keep responses" in caught.value.message and "'input'" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.retrieve("resp_abc")
    assert "does not keep responses" in caught.value.message
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="gpt-4o-mini", input=[{"type": "item_reference", "id": "msg_1"}])
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-4o-mini", input="search", tools=[{"type": "web_search"}])
    assert caught.value.param == "tools[0]"
    assert fake_openai.requests == []


def test_max_output_tokens_reached_is_an_incomplete_response(gateway):
    response = gateway.client().responses.create(model="demo-chat", input="Tell me a long story", max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens <= 3


def test_text_format_json_schema_becomes_response_format(gateway, fake_openai):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"], "additionalProperties": False}
    gateway.client().responses.create(model="gpt-4o-mini", input="A name, please",
                                      text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}})
    assert fake_openai.last_request.body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


def test_the_async_client(gateway):
    async def run():
        client = gateway.async_client()
        answers = await asyncio.gather(*(client.responses.create(model="demo-chat", input=f"q {i}") for i in range(4)))
        stream = await client.responses.create(model="demo-chat", input="s", stream=True)
        kinds = [event.type async for event in stream]
        await client.close()
        return answers, kinds

    answers, kinds = asyncio.run(run())
    assert all(a.output_text for a in answers) and kinds[-1] == "response.completed"
    gateway.drain(expect=5)
    assert UsageRecord.objects.filter(status="ok", sell_cost__gt=0).count() == 5


def test_errors_keep_openais_shape_and_a_mid_stream_failure_is_error_then_failed(gateway, fake_openai):
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().responses.create(model="gpt-4o-mini", input=[])
    assert caught.value.param == "input"
    fake_openai.behavior(stream_error_after=3, stream_error_body=leaky_error())
    events = list(gateway.client().responses.create(model="gpt-4o-mini", input="Stream a story", stream=True))
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert events[-2].code == "upstream_error" and DEFAULT_KEY not in events[-2].message
    assert events[-1].response.status == "failed" and events[-1].response.error.code == "server_error"
    gateway.drain(expect=2)
    failed = UsageRecord.objects.get(stream=True)
    assert failed.status == "upstream_error" and failed.output_tokens > 0


def test_an_idempotent_replay_via_responses(gateway):
    headers = {"Idempotency-Key": "resp-1", "Authorization": f"Bearer {gateway.world.secret}"}
    body = {"model": "demo-chat", "input": "Replay me"}
    first = httpx.post(gateway.base_url + "/responses", json=body, headers=headers, timeout=10)
    second = httpx.post(gateway.base_url + "/responses", json=body, headers=headers, timeout=10)
    assert first.status_code == second.status_code == 200 and first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"
    gateway.drain(expect=2)
    assert sorted(UsageRecord.objects.values_list("sell_cost", flat=True))[0] == 0
