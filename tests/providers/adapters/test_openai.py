"""The OpenAI wire adapter: request map, response parse, stream decoder, error mapping."""

from __future__ import annotations

import orjson
import pytest

from apps.providers.adapters.base import CanonicalRequest, Target, UpstreamFailure, Usage
from apps.providers.adapters.openai import OpenAIAdapter, OpenAIStreamDecoder

KEY = "sk-supplier-secret-0123456789"


def chunk(content: str | None = None, *, usage: dict | None = None, choices: bool = True) -> bytes:
    obj: dict = {"id": "c1", "object": "chat.completion.chunk", "choices": []}
    if choices:
        obj["choices"] = [{"index": 0, "delta": {"content": content}}]
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + orjson.dumps(obj)


def test_it_builds_the_request_with_the_upstream_model_auth_and_stream_usage():
    request = CanonicalRequest("chat", "public-name", {"model": "public-name", "messages": [], "stream": True}, stream=True)
    prepared = OpenAIAdapter().build_request(request, Target("https://api.example/v1", "gpt-4o-mini"), {"Authorization": "Bearer k"})
    assert prepared.url == "https://api.example/v1/chat/completions"
    assert prepared.headers["Authorization"] == "Bearer k" and prepared.headers["Content-Type"] == "application/json"
    body = orjson.loads(prepared.body)
    assert body["model"] == "gpt-4o-mini" and body["stream_options"] == {"include_usage": True}
    assert request.body["model"] == "public-name"  # the client's body is not changed


def test_it_parses_a_body_with_usage_and_counts_text_only_without():
    adapter, request = OpenAIAdapter(), CanonicalRequest("chat", "m", {})
    with_usage = orjson.dumps({"choices": [{"message": {"content": "hi"}}],
                               "usage": {"prompt_tokens": 7, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 3}}})
    parsed = adapter.parse_body(with_usage, request)
    assert parsed.body is with_usage and parsed.usage == Usage(7, 2, 3) and parsed.text is None
    without = orjson.dumps({"choices": [{"message": {"content": "hello", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}}]})
    parsed = adapter.parse_body(without, request)
    assert parsed.usage is None and parsed.text == "hellof{}"


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'"text"'])
def test_it_refuses_a_malformed_body(body):
    with pytest.raises(UpstreamFailure) as refused:
        OpenAIAdapter().parse_body(body, CanonicalRequest("chat", "m", {}))
    assert refused.value.status == 502 and refused.value.code == "upstream_malformed" and not refused.value.failover


def test_the_decoder_relays_events_whole_across_reads_and_withholds_the_usage_chunk():
    decoder = OpenAIStreamDecoder("chat")
    stream = b"\r\n\r\n".join([chunk("Hel"), b": keep-alive comment", chunk("lo"),
                               chunk(usage={"prompt_tokens": 5, "completion_tokens": 2}, choices=False), b"data: [DONE]", chunk("late")])
    out = []
    for i in range(0, len(stream), 7):  # one event split over many network reads
        out += decoder.feed(stream[i:i + 7])
    out += decoder.finish()
    assert out == [chunk("Hel"), chunk("lo")]
    assert decoder.done and decoder.produced()
    assert decoder.usage() == Usage(5, 2, 0) and decoder.usage_chunk["choices"] == []
    assert decoder.generated_text() == "Hello"


def test_the_decoder_keeps_a_usage_chunk_with_choices_in_the_stream():
    decoder = OpenAIStreamDecoder("chat")
    both = chunk("x", usage={"prompt_tokens": 1, "completion_tokens": 1})
    assert decoder.feed(both + b"\n\n") == [both]
    assert decoder.usage() == Usage(1, 1, 0)


def test_the_decoder_hands_over_an_unterminated_tail_when_the_upstream_closes():
    decoder = OpenAIStreamDecoder("completion")
    tail = b'data: {"choices": [{"text": "end"}]}'
    assert decoder.feed(tail) == []
    assert decoder.finish() == [tail] and not decoder.done
    assert decoder.usage() is None and decoder.generated_text() == "end"


def test_an_empty_stream_produced_nothing():
    decoder = OpenAIStreamDecoder("chat")
    assert decoder.feed(b"data: [DONE]\n\n") == [] and decoder.done and not decoder.produced()


@pytest.mark.parametrize(("status", "gateway_status", "code", "failover", "cooldown"), [
    (401, 502, "upstream_auth_failed", True, 300.0),
    (403, 502, "upstream_auth_failed", True, 300.0),
    (429, 429, "upstream_rate_limited", True, 7.0),
    (500, 502, "upstream_error", True, 5.0),
    (503, 502, "upstream_error", True, 5.0),
    (408, 502, "upstream_error", True, 5.0),
    (400, 400, "context_length_exceeded", False, None),
    (404, 404, "context_length_exceeded", False, None),
    (418, 400, "context_length_exceeded", False, None),
])
def test_it_maps_upstream_errors_to_the_gateway_and_the_key(status, gateway_status, code, failover, cooldown):
    body = orjson.dumps({"error": {"message": f"bad {KEY} at https://internal.example/v1", "type": "invalid_request_error",
                                   "code": "context_length_exceeded"}})
    failure = OpenAIAdapter().map_error(status, body, {"retry-after": "7"}, KEY)
    assert (failure.status, failure.code, failure.failover, failure.cooldown) == (gateway_status, code, failover, cooldown)
    assert KEY not in failure.message and "internal.example" not in failure.message


def test_a_rate_limit_without_retry_after_cools_the_key_for_the_default():
    failure = OpenAIAdapter().map_error(429, b"{}", {}, KEY)
    assert failure.cooldown == 10.0 and failure.type == "rate_limit_error"
