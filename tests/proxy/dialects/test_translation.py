"""The dialects' translations, without a gateway: request bodies into the canonical form, canonical
answers and streams into each dialect's shape, and the OpenAI path left as bytes."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest

from apps.proxy.dialects.anthropic import ANTHROPIC, AnthropicStream, parse_messages
from apps.proxy.dialects.openai import OPENAI
from apps.proxy.dialects.responses import RESPONSES, ResponsesStream, parse_response_request
from apps.proxy.exceptions import ApiError


def anthropic_body(**fields) -> bytes:
    return orjson.dumps({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **fields})


def chunk(delta: dict, finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({"id": "c", "object": "chat.completion.chunk", "model": "upstream-id",
                                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def fake_call(raw: bytes = b"{}", **fields):
    request = SimpleNamespace(model="public", include_usage=True, endpoint="chat")
    values = {"id": "req_abc", "started": 1_700_000_000.0, "request": request, "raw": raw, "input_tokens": 10,
              "output_tokens": 5, "cached_tokens": 4, "sell": 1_500_000, "input_tokens_estimate": 9,
              "route": SimpleNamespace(name="public", upstream_model="upstream-id")}
    return SimpleNamespace(**{**values, **fields})


def sse_events(data: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in data.decode().strip().split("\n\n"):
        name, payload = block.split("\n", 1)
        out.append((name.removeprefix("event: "), orjson.loads(payload.removeprefix("data: "))))
    return out


def test_anthropic_system_blocks_tools_and_sampling_map_to_chat():
    request = parse_messages(anthropic_body(
        system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}], temperature=0.5, top_k=40,
        stop_sequences=["END"], metadata={"user_id": "u-1"}, stream=True,
        tools=[{"name": "f", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True}))
    assert request.endpoint == "chat" and request.stream and request.max_tokens == 10 and request.n == 1
    assert request.body == {"model": "m", "max_tokens": 10, "stream": True, "temperature": 0.5, "stop": ["END"], "user": "u-1",
                            "messages": [{"role": "system", "content": "A\nB"}, {"role": "user", "content": "hi"}],
                            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                            "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": False}


def test_anthropic_tool_turns_map_to_tool_calls_and_tool_messages():
    request = parse_messages(anthropic_body(messages=[
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "s"}, {"type": "text", "text": "Calling"},
                                          {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                                      "content": [{"type": "text", "text": "boom"}]}]},
    ]))
    assert request.body["messages"][1:] == [
        {"role": "assistant", "content": "Calling",
         "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"}]


@pytest.mark.parametrize(("fields", "param"), [
    ({"max_tokens": None}, "max_tokens"), ({"max_tokens": 0}, "max_tokens"), ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"), ({"temperature": 1.5}, "temperature"),
    ({"stop_sequences": ["a"] * 5}, "stop_sequences"), ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0"),
    ({"tool_choice": {"type": "sometimes"}, "tools": [{"name": "f", "input_schema": {}}]}, "tool_choice"),
    ({"messages": [{"role": "user", "content": [{"type": "search_result", "source": {}}]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages.0.content.0.source"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
     "messages.0.content.0.source"),
])
def test_anthropic_bodies_are_refused_naming_the_field(fields, param):
    body = orjson.loads(anthropic_body())
    body.update(fields)
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(ApiError) as caught:
        parse_messages(orjson.dumps(body))
    assert caught.value.status == 400 and caught.value.param == param


def test_anthropic_renders_an_answer_with_input_net_of_cache_reads():
    answer = orjson.dumps({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Let me check", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"city":"Oslo"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "not json"}}]}}]})
    message = orjson.loads(ANTHROPIC.render_body(fake_call(), answer))
    assert message == {"id": "msg_abc", "type": "message", "role": "assistant", "model": "public", "stop_reason": "tool_use",
                       "stop_sequence": None, "content": [
                           {"type": "text", "text": "Let me check"},
                           {"type": "tool_use", "id": "call_1", "name": "f", "input": {"city": "Oslo"}},
                           {"type": "tool_use", "id": "call_2", "name": "g", "input": {"_raw_arguments": "not json"}}],
                       "usage": {"input_tokens": 6, "output_tokens": 5, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 0}}


def test_anthropic_stream_blocks_follow_text_then_tool_calls():
    stream = AnthropicStream(fake_call())
    first = stream.events([chunk({"role": "assistant", "content": "Hi"}), chunk({"content": " there"})])
    second = stream.events([chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
                            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
                            chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}), chunk({}, "tool_calls")])
    end = stream.end(None, None)
    events = sse_events(first) + sse_events(second) + sse_events(end)
    assert [name for name, _ in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert events[0][1]["message"]["model"] == "public" and events[0][1]["message"]["usage"]["input_tokens"] == 9
    assert events[6][1] == {"type": "content_block_start", "index": 1,
                            "content_block": {"type": "tool_use", "id": "c1", "name": "f", "input": {}}}
    assert events[8][1]["delta"] == {"type": "input_json_delta", "partial_json": "1}"}
    assert events[10][1] == {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                             "usage": {"input_tokens": 6, "output_tokens": 5, "cache_read_input_tokens": 4,
                                       "cache_creation_input_tokens": 0, "cost": 1.5}}


def test_anthropic_errors_have_anthropics_types():
    call = fake_call()
    for status, kind in ((400, "invalid_request_error"), (401, "authentication_error"), (402, "billing_error"),
                         (403, "permission_error"), (404, "not_found_error"), (409, "invalid_request_error"),
                         (413, "request_too_large"), (429, "rate_limit_error"), (499, "invalid_request_error"),
                         (502, "api_error"), (503, "api_error"), (504, "timeout_error")):
        body = orjson.loads(ANTHROPIC.render_error(call, ApiError(status, "m", code="c")))
        assert body == {"type": "error", "error": {"type": kind, "message": "m", "code": "c"}, "request_id": "req_abc"}
    assert sse_events(AnthropicStream(call).end(None, ApiError(502, "m", code="c")))[0][0] == "error"


def test_responses_items_map_to_chat_messages():
    request = parse_response_request(orjson.dumps({
        "model": "m", "instructions": "Be brief", "max_output_tokens": 50, "store": True, "metadata": {"k": "v"},
        "reasoning": {"effort": "low"}, "safety_identifier": "u-9", "parallel_tool_calls": False,
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}],
        "tool_choice": {"type": "function", "name": "f"}, "text": {"format": {"type": "json_object"}},
        "input": [
            {"role": "user", "content": "go"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sure", "annotations": []}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{\"x\":1}"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
        ]}))
    assert request.max_tokens == 50 and not request.stream
    assert request.body == {
        "model": "m", "max_tokens": 50, "reasoning_effort": "low", "user": "u-9", "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "go"},
                     {"role": "assistant", "content": "Sure", "tool_calls": [
                         {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                         {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
                     {"role": "tool", "tool_call_id": "c1", "content": "one"}, {"role": "tool", "tool_call_id": "c2", "content": "two"}]}


@pytest.mark.parametrize(("fields", "param"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"), ({"conversation": "conv_1"}, "conversation"),
    ({"background": True}, "background"), ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].id"), ({"input": ""}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0]"),
    ({"tools": [{"type": "file_search"}]}, "tools[0]"), ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"text": {"format": {"type": "json_schema"}}}, "text.format"), ({"temperature": 3}, "temperature"),
])
def test_responses_bodies_are_refused_naming_the_field(fields, param):
    with pytest.raises(ApiError) as caught:
        parse_response_request(orjson.dumps({"model": "m", "input": "hi", **fields}))
    assert caught.value.status == 400 and caught.value.param == param


def test_responses_stream_numbers_every_event_and_ends_incomplete_at_the_length_limit():
    stream = ResponsesStream(fake_call(raw=b'{"model": "m", "input": "hi", "max_output_tokens": 5}'))
    data = stream.events([chunk({"role": "assistant", "content": "Hi"})]) + stream.events([chunk({"content": "!"}, "length")])
    data += stream.end({"usage": {"completion_tokens_details": {"reasoning_tokens": 2}}}, None)
    events = sse_events(data)
    assert [p["sequence_number"] for _, p in events] == list(range(len(events)))
    assert all(name == payload["type"] for name, payload in events)
    final = events[-1][1]["response"]
    assert events[-1][0] == "response.incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["content"][0]["text"] == "Hi!" and final["max_output_tokens"] == 5
    assert final["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
                              "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 15, "cost": 1.5}


def test_responses_render_an_answer_with_function_calls():
    answer = orjson.dumps({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                              "function": {"name": "f", "arguments": "{}"}}]}}]})
    response = orjson.loads(RESPONSES.render_body(fake_call(), answer))
    assert response["status"] == "completed" and response["model"] == "public" and response["id"] == "resp_abc"
    assert response["output"] == [{"type": "function_call", "id": "fc_abc_0", "call_id": "call_1", "name": "f", "arguments": "{}",
                                   "status": "completed"}]


def test_the_openai_stream_passes_bytes_through_and_renames_only_when_needed():
    same = fake_call(route=SimpleNamespace(name="public", upstream_model="public"))
    event = chunk({"content": "Hi"}).replace(b"upstream-id", b"public")
    assert OPENAI.stream_renderer(same).events([event, event]) == event + b"\n\n" + event + b"\n\n"
    renamed = OPENAI.stream_renderer(fake_call()).events([chunk({"content": "Hi"})])
    assert b'"model":"public"' in renamed and b"upstream-id" not in renamed
    assert OPENAI.render_body(same, b'{"model":"public"}') == b'{"model":"public"}'


def test_documents_become_file_parts_in_the_canonical_request():
    anthropic = orjson.loads(anthropic_body())
    anthropic["messages"] = [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}, "title": "a.pdf"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}}]}]
    parts = parse_messages(orjson.dumps(anthropic)).body["messages"][-1]["content"]
    assert parts == [{"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x", "filename": "a.pdf"}},
                     {"type": "text", "text": "plain words"}]
    responses = parse_response_request(orjson.dumps({"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0x", "filename": "b.pdf"}]}]}))
    assert responses.body["messages"][0]["content"] == [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x", "filename": "b.pdf"}}]
