"""The Anthropic Messages adapter: request map, response map, stream decoder, usage, error mapping —
and FakeAnthropic checked against the official ``anthropic`` SDK, so the fake the gateway's tests
lean on speaks the real wire format."""

from __future__ import annotations

import asyncio

import anthropic
import orjson
import pytest

from apps.providers.adapters import adapter_for
from apps.providers.adapters.anthropic import AnthropicAdapter, AnthropicStreamDecoder
from apps.providers.adapters.anthropic.stream import TRUNCATED
from apps.providers.adapters.base import CanonicalRequest, Credential, Target, UpstreamFailure, Usage
from tests.fakes.anthropic_upstream import DEFAULT_KEY, fake_anthropic, fake_anthropic_server  # noqa: F401 - fixtures

KEY = "sk-ant-api03-supplier-secret-0123456789"
TARGET = Target("https://api.anthropic.example/v1", "claude-sonnet-4-5")
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


def chat(body: dict, *, stream: bool = False, endpoint: str = "chat") -> CanonicalRequest:
    return CanonicalRequest(endpoint, "claude", {"model": "claude", **body}, stream=stream,
                            max_tokens=body.get("max_tokens"))


def build(body: dict, *, target: Target = TARGET, stream: bool = False) -> tuple[dict, dict]:
    prepared = AnthropicAdapter().build_request(chat(body, stream=stream), target, {"x-api-key": KEY})
    assert prepared.url == f"{target.base_url}/messages"
    return prepared.headers, orjson.loads(prepared.body)


def refused(body: dict, *, endpoint: str = "chat") -> UpstreamFailure:
    with pytest.raises(UpstreamFailure) as caught:
        AnthropicAdapter().build_request(chat(body, endpoint=endpoint), TARGET, {"x-api-key": KEY})
    return caught.value


# --------------------------------------------------------------------------- request


def test_the_registry_serves_the_anthropic_kind():
    assert isinstance(adapter_for("anthropic"), AnthropicAdapter)


def test_it_authenticates_with_x_api_key_not_bearer():
    headers = asyncio.run(AnthropicAdapter.auth.headers(Credential(1, KEY), None))
    assert headers == {"x-api-key": KEY}


def test_it_maps_the_conversation_system_prompt_and_sampling():
    headers, body = build({
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
                     {"role": "user", "content": "Hi"}, {"role": "user", "content": "Still there?"},
                     {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "Good."}],
        "max_tokens": 300, "stop": "END", "temperature": 0.2, "top_p": 0.9, "user": "dev-7", "seed": 4, "logprobs": True,
    }, stream=True)
    assert headers == {"x-api-key": KEY, "anthropic-version": "2023-06-01", "content-type": "application/json",
                       "Accept-Encoding": "identity"}
    assert body == {
        "model": "claude-sonnet-4-5", "max_tokens": 300, "stream": True, "stop_sequences": ["END"], "temperature": 0.2, "top_p": 0.9,
        "metadata": {"user_id": "dev-7"},
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Still there?"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]},
                     {"role": "user", "content": [{"type": "text", "text": "Good."}]}],
    }


def test_max_tokens_comes_from_the_client_then_the_options_then_the_default():
    messages = [{"role": "user", "content": "Hi"}]
    assert build({"messages": messages, "max_completion_tokens": 77, "max_tokens": 5})[1]["max_tokens"] == 77
    assert build({"messages": messages})[1]["max_tokens"] == 4096
    configured = Target(TARGET.base_url, TARGET.upstream_model, {"default_max_tokens": 1024})
    assert build({"messages": messages}, target=configured)[1]["max_tokens"] == 1024


def test_a_temperature_above_anthropics_top_is_capped():
    # OpenAI's temperature runs to 2, Anthropic's to 1.
    assert build({"messages": [{"role": "user", "content": "Hi"}], "temperature": 1.7})[1]["temperature"] == 1


def test_options_set_the_api_version_and_beta_and_2026_versions_drop_sampling():
    target = Target(TARGET.base_url, TARGET.upstream_model, {"anthropic_version": "2026-10-21",
                                                             "anthropic_beta": ["prompt-caching-2024-07-31", "x"]})
    headers, body = build({"messages": [{"role": "user", "content": "Hi"}], "temperature": 1.0, "top_p": 0.5}, target=target)
    assert headers["anthropic-version"] == "2026-10-21" and headers["anthropic-beta"] == "prompt-caching-2024-07-31,x"
    assert "temperature" not in body and "top_p" not in body
    configured = Target(TARGET.base_url, TARGET.upstream_model, {"api_version": "2026-10-21"})  # the YAML field api_version
    assert build({"messages": [{"role": "user", "content": "Hi"}]}, target=configured)[0]["anthropic-version"] == "2026-10-21"


def test_it_maps_images_as_base64_and_url_sources_and_pdfs_as_documents():
    _, body = build({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://img.example/cat.jpg"}, "cache_control": {"type": "ephemeral"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}},
    ]}]})
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://img.example/cat.jpg"}, "cache_control": {"type": "ephemeral"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}},
    ]


def test_it_maps_a_tool_round_trip():
    _, body = build({
        "messages": [
            {"role": "user", "content": "Weather in Oslo and Bergen?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
                {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Bergen"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "4 °C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "7 °C"}]},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False,
    })
    assert body["tools"] == [{"name": "get_weather", "description": "Weather now", "input_schema": WEATHER["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo and Bergen?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
                                          {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Bergen"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "4 °C"},
                                     {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "7 °C"}]},
                                     {"type": "text", "text": "Thanks"}]},
    ]


def test_tool_results_open_their_user_turn():
    _, body = build({"messages": [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"role": "user", "content": "(the result follows)"},
        {"role": "tool", "tool_call_id": "t1", "content": "done"},
    ]})
    assert [block["type"] for block in body["messages"][2]["content"]] == ["tool_result", "text"]
    assert body["messages"][1]["content"][0]["input"] == {}


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}),
    ("none", {"type": "none"}),
    ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
])
def test_it_maps_tool_choice(choice, expected):
    assert build({"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER], "tool_choice": choice})[1]["tool_choice"] == expected


@pytest.mark.parametrize(("body", "endpoint", "says"), [
    ({"prompt": "x"}, "completion", "no completion endpoint"),
    ({"input": "x"}, "embedding", "no embedding endpoint"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "chat", "'n' must be 1"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "chat", "must be a JSON object"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "chat", "'input_audio'"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}, "chat", "image URL"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "chat", "role 'function'"),
])
def test_it_refuses_what_anthropic_cannot_take_without_calling_it(body, endpoint, says):
    failure = refused(body, endpoint=endpoint)
    assert (failure.status, failure.type, failure.code, failure.failover) == (400, "invalid_request_error", "invalid_request", False)
    assert says in failure.message


# --------------------------------------------------------------------------- response


def message(content: list, stop_reason: str = "end_turn", **usage) -> bytes:
    return orjson.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
                         "content": content, "stop_reason": stop_reason, "stop_sequence": None,
                         "usage": {"input_tokens": 10, "output_tokens": 5, **usage}})


def test_it_parses_text_and_tool_use_into_a_chat_completion():
    parsed = AnthropicAdapter().parse_body(message(
        [{"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "text", "text": "Checking"},
         {"type": "text", "text": " now."}, {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}}],
        "tool_use", cache_read_input_tokens=2048, cache_creation_input_tokens=100, output_tokens_details={"thinking_tokens": 3}),
        chat({}))
    body = orjson.loads(parsed.body)
    assert body["object"] == "chat.completion" and body["id"] == "msg_1" and body["model"] == "claude-sonnet-4-5-20250929"
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": "Checking now.", "refusal": None, "tool_calls": [
        {"id": "toolu_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}
    # Anthropic's input_tokens leaves out cache reads and writes: the canonical input holds them all.
    assert parsed.usage == Usage(10 + 2048 + 100, 5, 2048, 100) and parsed.text is None
    assert body["usage"] == {"prompt_tokens": 2158, "completion_tokens": 5, "total_tokens": 2163,
                             "prompt_tokens_details": {"cached_tokens": 2048, "cache_creation_tokens": 100},
                             "completion_tokens_details": {"reasoning_tokens": 3}}


@pytest.mark.parametrize(("stop_reason", "finish_reason"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "stop"), ("model_context_window_exceeded", "length"), ("something_new", "stop"),
])
def test_stop_reasons_become_openai_finish_reasons(stop_reason, finish_reason):
    body = orjson.loads(AnthropicAdapter().parse_body(message([{"type": "text", "text": "x"}], stop_reason), chat({})).body)
    assert body["choices"][0]["finish_reason"] == finish_reason


def test_a_message_without_usage_is_counted_locally():
    body = orjson.dumps({"type": "message", "content": [{"type": "text", "text": "hello"},
                                                        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]})
    parsed = AnthropicAdapter().parse_body(body, chat({}))
    assert parsed.usage is None and parsed.text == "hellof{}"


@pytest.mark.parametrize("body", [b"", b"not json", b"[1]", b'{"type": "completion"}'])
def test_it_refuses_a_malformed_body(body):
    with pytest.raises(UpstreamFailure) as caught:
        AnthropicAdapter().parse_body(body, chat({}))
    assert caught.value.code == "upstream_malformed" and caught.value.status == 502


# --------------------------------------------------------------------------- stream


def sse(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


def tool_stream(*, usage: bool = True) -> bytes:
    start = {"id": "msg_01A", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
             "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": 377, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 100, "output_tokens": 1}}
    delta: dict = {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}}
    if usage:
        delta["usage"] = {"output_tokens": 65}
    return b"".join([
        sse("message_start", {"type": "message_start", "message": start}),
        sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        sse("ping", {"type": "ping"}),
        sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}}),
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse("content_block_start", {"type": "content_block_start", "index": 1,
                                    "content_block": {"type": "tool_use", "id": "toolu_01N", "name": "get_weather", "input": {}}}),
        sse("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        sse("content_block_delta", {"type": "content_block_delta", "index": 1,
                                    "delta": {"type": "input_json_delta", "partial_json": '{"city": "Os'}}),
        sse("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": 'lo"}'}}),
        sse("content_block_stop", {"type": "content_block_stop", "index": 1}),
        sse("content_block_start", {"type": "content_block_start", "index": 2,
                                    "content_block": {"type": "tool_use", "id": "toolu_01M", "name": "now", "input": {}}}),
        sse("content_block_stop", {"type": "content_block_stop", "index": 2}),
        sse("message_delta", delta),
        sse("message_stop", {"type": "message_stop"}),
    ])


def decode(stream: bytes, step: int = 7) -> tuple[AnthropicStreamDecoder, list[dict]]:
    decoder = AnthropicStreamDecoder()
    out: list[bytes] = []
    for i in range(0, len(stream), step):  # events split over many network reads
        out += decoder.feed(stream[i:i + step])
    out += decoder.finish()
    assert all(line.startswith(b"data: ") and b"\n" not in line for line in out)
    return decoder, [orjson.loads(line[6:]) for line in out]


def test_the_decoder_turns_named_events_into_chunks():
    decoder, chunks = decode(tool_stream().replace(b"\n", b"\r\n"))
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert {chunk["id"] for chunk in chunks} == {"msg_01A"} and {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Let me check."},
        {"content": None, "tool_calls": [{"index": 0, "id": "toolu_01N", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Os'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'lo"}'}}]},
        {"content": None, "tool_calls": [{"index": 1, "id": "toolu_01M", "type": "function", "function": {"name": "now", "arguments": ""}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},  # no fragments came: its (empty) input
        {},
    ]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None] * 7 + ["tool_calls"]
    assert decoder.done and decoder.error is None and decoder.produced()
    assert decoder.usage() == Usage(377 + 100 + 20, 65, 100, 20)
    assert decoder.usage_chunk is not None and decoder.usage_chunk["choices"] == []
    assert decoder.usage_chunk["usage"]["prompt_tokens_details"] == {"cached_tokens": 100, "cache_creation_tokens": 20}
    assert decoder.generated_text() == 'Let me check.get_weather{"city": "Oslo"}now{}'


def test_message_delta_usage_is_cumulative_and_may_restate_the_input():
    stream = tool_stream().replace(b'"usage":{"output_tokens":65}',
                                   b'"usage":{"output_tokens":70,"input_tokens":400,"cache_read_input_tokens":null}')
    decoder, _ = decode(stream)
    assert decoder.usage() == Usage(400 + 100 + 20, 70, 100, 20)


def test_a_stream_without_output_usage_is_counted_locally():
    decoder, _ = decode(tool_stream(usage=False))
    assert decoder.usage() is None and decoder.generated_text()


def test_an_error_event_ends_the_stream_and_is_never_relayed():
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    stream = tool_stream()
    cut = stream.index(b"event: content_block_stop")
    decoder, chunks = decode(stream[:cut] + sse("error", error) + stream[cut:])
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Let me check."]
    assert decoder.done and orjson.loads(decoder.error) == error
    assert decoder.usage() is None  # message_start's output figure is a placeholder, not a count
    failure = AnthropicAdapter().in_band_error(decoder.error, (KEY,))
    assert (failure.status, failure.code, failure.failover) == (502, "upstream_error", True)


def test_a_stream_cut_before_message_stop_is_an_error_not_a_complete_answer():
    stream = tool_stream()
    decoder, chunks = decode(stream[:stream.index(b"event: message_delta")])
    assert chunks and decoder.done and decoder.error == TRUNCATED


def test_a_stream_with_nothing_in_it_hands_over_what_came():
    decoder, chunks = decode(b"upstream fell over")
    assert chunks == [] and decoder.error == b"upstream fell over" and not decoder.produced()
    decoder, _ = decode(sse("message_start", {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3}}}))
    assert decoder.error == TRUNCATED and not decoder.produced()


def test_a_tool_choice_goes_only_with_tools():
    assert "tool_choice" not in build({"messages": [{"role": "user", "content": "x"}], "tool_choice": "none"})[1]


def test_an_event_may_spread_its_data_over_several_lines():
    decoder, chunks = decode(b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0,\n'
                             b'data: "delta": {"type": "text_delta", "text": "hi"}}\n\n')
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": "hi"}]


def test_a_whole_message_where_the_stream_belonged_is_relayed_as_one_chunk():
    decoder, chunks = decode(message([{"type": "text", "text": "Hi."}, {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
                                     "tool_use", cache_read_input_tokens=4))
    [chunk] = chunks
    assert chunk["id"] == "msg_1" and chunk["choices"][0]["finish_reason"] == "tool_calls"
    assert chunk["choices"][0]["delta"] == {"role": "assistant", "content": "Hi.", "tool_calls": [
        {"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]}
    assert decoder.done and decoder.error is None and decoder.usage() == Usage(14, 5, 4)
    assert decoder.usage_chunk["usage"]["prompt_tokens"] == 14 and decoder.generated_text() == 'Hi.f{"a":1}'


def test_a_payload_that_is_not_json_fails_the_stream():
    decoder, _ = decode(b"event: content_block_delta\ndata: {cut off\n\n")
    assert decoder.done and decoder.error == b"{cut off"


# --------------------------------------------------------------------------- errors

USED, SIBLING = "q7Zt!used-supplier-key", "w9Xy!sibling-supplier-key"
LEAK = (f"key {USED} (or {SIBLING}) at https://llm.supplier.example/v1 via host pgmain and pg-7.prod.internal "
        "(10.12.0.5, [fd00::17]:8443); dsn postgres://jet:hunter2@pg-main.svc:5432/billing")
LEAKS = (USED, SIBLING, "llm.supplier.example", "pgmain", "pg-7.prod.internal", "10.12.0.5", "fd00::17", "hunter2", "pg-main.svc")


def error_body(kind: str, text: str = LEAK) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": text}, "request_id": "req_1"})


@pytest.mark.parametrize(("status", "kind", "gateway", "code", "failover", "cooldown"), [
    (400, "invalid_request_error", 400, "invalid_request", False, None),
    (401, "authentication_error", 502, "upstream_auth_failed", True, 300.0),
    (402, "billing_error", 502, "upstream_auth_failed", True, 300.0),
    (403, "permission_error", 502, "upstream_auth_failed", True, 300.0),
    (404, "not_found_error", 404, "model_not_found", False, None),
    (409, "conflict_error", 502, "upstream_error", True, 5.0),
    (413, "request_too_large", 413, "upstream_rejected", False, None),
    (418, "invalid_request_error", 400, "invalid_request", False, None),
    (429, "rate_limit_error", 429, "upstream_rate_limited", True, 10.0),
    (500, "api_error", 502, "upstream_error", True, 5.0),
    (529, "overloaded_error", 502, "upstream_error", True, 5.0),
    (307, "api_error", 502, "upstream_redirect", False, None),
])
def test_it_maps_errors_for_the_client_and_the_key(status, kind, gateway, code, failover, cooldown):
    failure = AnthropicAdapter().map_error(status, error_body(kind), {}, (USED, SIBLING))
    assert (failure.status, failure.code, failure.failover, failure.cooldown) == (gateway, code, failover, cooldown)
    assert not [leak for leak in LEAKS if leak in failure.message], failure.message


def test_a_rejection_keeps_the_scrubbed_message():
    failure = AnthropicAdapter().map_error(400, error_body("invalid_request_error", f"messages.0: bad block for {USED}"), {}, (USED,))
    assert failure.message.startswith("messages.0: bad block for") and USED not in failure.message


@pytest.mark.parametrize(("headers", "cooldown"), [
    ({"retry-after": "7"}, 7.0), ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5), ({"retry-after": "86400"}, 300.0),
    ({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}, 10.0),
])
def test_a_rate_limit_rests_the_key_as_the_upstream_asks_within_a_cap(headers, cooldown):
    failure = AnthropicAdapter().map_error(429, error_body("rate_limit_error"), headers, (KEY,))
    assert failure.cooldown == cooldown and failure.type == "rate_limit_error"


def test_a_200_body_that_is_an_error_fails_like_its_type():
    adapter = AnthropicAdapter()
    failure = adapter.body_failure(error_body("overloaded_error"), (USED,))
    assert failure is not None and failure.failover and failure.status == 502
    assert adapter.body_failure(message([{"type": "text", "text": 'the "error" word'}]), (USED,)) is None
    rejected = adapter.in_band_error(error_body("invalid_request_error"), (USED, SIBLING))
    assert rejected.status == 400 and not rejected.failover and USED not in rejected.message


# --------------------------------------------------------------------------- the fake, read by the official SDK


@pytest.fixture
def sdk(fake_anthropic):  # noqa: F811
    with anthropic.Anthropic(base_url=fake_anthropic.base_url.removesuffix("/v1"), api_key=DEFAULT_KEY, max_retries=0,
                             timeout=10) as client:
        yield client


def test_the_fake_answers_the_official_sdk(fake_anthropic, sdk):  # noqa: F811
    fake_anthropic.behavior(cache_read=50, cache_creation=7)
    reply = sdk.messages.create(model="claude-x", max_tokens=50, system="Be brief.", stop_sequences=["STOP"],
                                messages=[{"role": "user", "content": "Hello there STOP now"}])
    assert reply.content[0].text == "You said: Hello there " and reply.stop_reason == "stop_sequence"
    assert (reply.usage.input_tokens, reply.usage.cache_read_input_tokens, reply.usage.cache_creation_input_tokens) == (6, 50, 7)
    assert fake_anthropic.last_request.headers["anthropic-version"]


def test_the_fake_streams_a_tool_call_the_sdk_reassembles(fake_anthropic, sdk):  # noqa: F811
    tools = [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}]
    with sdk.messages.stream(model="claude-x", max_tokens=50, tools=tools,
                             messages=[{"role": "user", "content": "Weather?"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[1].input == {"city": "Oslo"}
    answer = sdk.messages.create(model="claude-x", max_tokens=50, tools=tools, messages=[
        {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": final.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": final.content[1].id, "content": "4 C"}]}])
    assert answer.content[0].text == "The tool said: 4 C"


def test_the_fake_refuses_like_anthropic(fake_anthropic, sdk):  # noqa: F811
    with pytest.raises(anthropic.BadRequestError, match="tool_result"):
        sdk.messages.create(model="claude-x", max_tokens=50, messages=[
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {"role": "user", "content": "no result"}])
    with pytest.raises(anthropic.BadRequestError, match="temperature"):
        sdk.messages.create(model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "x"}],
                            extra_body={"temperature": 0.5})  # the SDK sends API version 2026-10-21
    fake_anthropic.behavior(status=529)
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk.messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 529 and caught.value.body["error"]["type"] == "overloaded_error"
    with anthropic.Anthropic(base_url=sdk.base_url, api_key="sk-ant-wrong", max_retries=0) as stranger, \
            pytest.raises(anthropic.AuthenticationError):
        stranger.messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}])
