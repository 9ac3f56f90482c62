"""The OpenAI wire adapter: request map, response parse, stream decoder, error mapping."""

from __future__ import annotations

import logging

import orjson
import pytest

from apps.providers.adapters import base
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


def test_the_decoder_relays_a_content_chunk_with_usage_once_without_its_usage():
    decoder = OpenAIStreamDecoder("chat")
    both = chunk("x", usage={"prompt_tokens": 1, "completion_tokens": 1})
    assert decoder.feed(both + b"\n\n") == [chunk("x")]
    assert decoder.usage() == Usage(1, 1, 0) and decoder.usage_chunk["choices"] == []


def test_the_decoder_hands_over_an_unterminated_tail_when_the_upstream_closes():
    decoder = OpenAIStreamDecoder("completion")
    tail = b'data: {"choices": [{"text": "end", "finish_reason": "stop"}]}'
    assert decoder.feed(tail) == []
    assert decoder.finish() == [tail] and decoder.error is None
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
    failure = OpenAIAdapter().map_error(status, body, {"retry-after": "7"}, (KEY,))
    assert (failure.status, failure.code, failure.failover, failure.cooldown) == (gateway_status, code, failover, cooldown)
    assert KEY not in failure.message and "internal.example" not in failure.message


def test_a_rate_limit_without_retry_after_cools_the_key_for_the_default():
    failure = OpenAIAdapter().map_error(429, b"{}", {}, (KEY,))
    assert failure.cooldown == 10.0 and failure.type == "rate_limit_error"


# --------------------------------------------------------------------------- scrubbing and in-band errors

# Keys with no recognisable shape: only the secrets passed in can catch them.
USED = "q7Zt!used-supplier-key"
SIBLING = "w9Xy!sibling-supplier-key"
SECRETS = (USED, SIBLING)
LEAK = (f"key {USED} (or {SIBLING}) at https://llm.supplier.example/v1 via host pgmain and pg-7.prod.internal "
        "(10.12.0.5, [fd00::17]:8443); dsn postgres://jet:hunter2@pg-main.svc:5432/billing")
LEAKS = (USED, SIBLING, "llm.supplier.example", "pgmain", "pg-7.prod.internal", "10.12.0.5", "fd00::17", "postgres://",
         "hunter2", "pg-main.svc")
GATEWAY_TYPES = {"invalid_request_error", "api_error", "rate_limit_error"}
GATEWAY_CODES = {"upstream_rejected", "upstream_error", "upstream_auth_failed", "upstream_rate_limited",
                 *base.REQUEST_ERROR_CODES}
ERROR_SHAPES = {
    "openai": orjson.dumps({"error": {"message": LEAK, "type": LEAK, "param": LEAK, "code": LEAK}}),
    "openai-numeric-code": orjson.dumps({"error": {"message": LEAK, "type": LEAK, "param": LEAK, "code": 400}}),
    "string": orjson.dumps({"error": LEAK, "error_type": LEAK}),
    "vllm": orjson.dumps({"object": "error", "message": LEAK, "type": LEAK, "param": LEAK, "code": 503}),
    "plain-text": LEAK.encode(),
    "html": f"<html><body><h1>502 Bad Gateway</h1>{LEAK}</body></html>".encode(),
}


def assert_clean(failure: UpstreamFailure) -> None:
    for text in (failure.message, failure.type, failure.code):
        assert not [leak for leak in LEAKS if leak in text], text
    assert failure.type in GATEWAY_TYPES and failure.code in GATEWAY_CODES


@pytest.mark.parametrize("shape", ERROR_SHAPES)
@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 418, 422, 429, 500, 502, 503])
def test_no_error_shape_carries_a_key_url_host_or_address_through_map_error(status, shape, caplog):
    caplog.set_level(logging.INFO, logger="jetstream.providers")
    failure = OpenAIAdapter().map_error(status, ERROR_SHAPES[shape], {"retry-after": LEAK}, SECRETS)
    assert_clean(failure)
    assert caplog.records, "the upstream's answer is logged for operators"
    assert not [leak for leak in LEAKS if leak in caplog.text], caplog.text


@pytest.mark.parametrize(("code", "mapped"), [
    ("context_length_exceeded", "context_length_exceeded"), ("invalid_value", "invalid_value"),
    ("model_not_found", "model_not_found"), ("unsupported_parameter", "unsupported_parameter"),
    ("sk-leaked-in-code-0123456789", "upstream_rejected"), ("billing_hard_limit_reached", "upstream_rejected"),
    ("bad\x00code", "upstream_rejected"), (None, "upstream_rejected"), (12, "upstream_rejected"),
])
def test_a_request_error_keeps_only_allow_listed_codes_and_never_the_upstream_type(code, mapped):
    body = orjson.dumps({"error": {"message": "Fix it.", "type": f"type-{KEY}", "param": "x", "code": code}})
    failure = OpenAIAdapter().map_error(400, body, {}, (KEY,))
    assert (failure.status, failure.type, failure.code, failure.message) == (400, "invalid_request_error", mapped, "Fix it.")
    assert not failure.failover


def test_a_request_error_in_plain_text_gets_the_gateways_message():
    failure = OpenAIAdapter().map_error(400, LEAK.encode(), {}, SECRETS)
    assert (failure.status, failure.code, failure.message) == (400, "upstream_rejected", "The upstream provider rejected the request.")


def test_a_request_error_message_is_passed_on_scrubbed():
    body = orjson.dumps({"error": {"message": f"Invalid 'messages': see {LEAK}", "code": "invalid_value"}})
    failure = OpenAIAdapter().map_error(422, body, {}, SECRETS)
    assert failure.status == 422 and failure.message.startswith("Invalid 'messages': see key *** (or ***) at ***")
    assert_clean(failure)


def test_server_and_credential_failures_say_nothing_of_the_upstreams_text():
    body = orjson.dumps({"error": {"message": "Engine overloaded in eu-west pool 7", "code": None}})
    assert OpenAIAdapter().map_error(503, body, {}, ()).message == "The upstream provider failed (HTTP 503)."
    assert OpenAIAdapter().map_error(429, body, {}, ()).message == "The upstream provider is rate limiting; retry later."
    assert OpenAIAdapter().map_error(401, body, {}, ()).message == "The upstream provider rejected the gateway's credentials."


def test_a_huge_retry_after_cannot_bench_a_key_for_longer_than_a_refused_one():
    assert OpenAIAdapter().map_error(429, b"{}", {"retry-after": "99999999"}, ()).cooldown == 300.0


@pytest.mark.parametrize(("body", "status", "code", "failover"), [
    (ERROR_SHAPES["openai"], 502, "upstream_error", True),
    (ERROR_SHAPES["openai-numeric-code"], 400, "upstream_rejected", False),
    (ERROR_SHAPES["string"], 502, "upstream_error", True),
    (ERROR_SHAPES["vllm"], 502, "upstream_error", True),
    (orjson.dumps({"error": {"message": LEAK, "code": 429}}), 429, "upstream_rate_limited", True),
    (orjson.dumps({"error": {"message": LEAK, "status": 401}}), 502, "upstream_auth_failed", True),
    (orjson.dumps({"error": {"message": LEAK}, "choices": []}), 502, "upstream_error", True),
])
def test_a_200_body_that_is_an_error_object_is_a_failure(body, status, code, failover):
    failure = OpenAIAdapter().body_failure(body, SECRETS)
    assert failure is not None
    assert (failure.status, failure.code, failure.failover) == (status, code, failover)
    assert_clean(failure)


@pytest.mark.parametrize("body", [
    orjson.dumps({"choices": [{"message": {"content": '{"error": "a model may write this"}'}}]}),
    orjson.dumps({"choices": [{"message": {"content": "x"}}], "error": None}),
    orjson.dumps({"object": "list", "data": [{"embedding": [0.1]}], "error": {"message": "partial"}}),
    b"not json at all",
])
def test_an_answer_is_not_taken_for_an_error(body):
    assert OpenAIAdapter().body_failure(body, SECRETS) is None


def stream_error_event(payload: bytes, *, before: bytes = b"") -> tuple[OpenAIStreamDecoder, list[bytes]]:
    decoder = OpenAIStreamDecoder("chat")
    out = decoder.feed(before + payload + b"\n\n" + chunk("after the error") + b"\n\ndata: [DONE]\n\n")
    return decoder, out + decoder.finish()


@pytest.mark.parametrize("payload", [
    b"data: " + ERROR_SHAPES["openai"],
    b"data:" + ERROR_SHAPES["string"],
    b"data: " + ERROR_SHAPES["vllm"],
    b"event: error\ndata: " + orjson.dumps({"message": LEAK}),
    b"data: " + LEAK.encode(),  # not JSON: a plain-text complaint
])
def test_the_decoder_never_relays_an_error_event_and_ends_the_stream_there(payload):
    for before in (b"", chunk("Hel") + b"\n\n"):
        decoder, out = stream_error_event(payload, before=before)
        assert out == ([chunk("Hel")] if before else [])
        assert decoder.done and decoder.error is not None and decoder.produced() == bool(before)
        assert not [leak for leak in LEAKS if leak.encode() in b"".join(out)]
        assert_clean(OpenAIAdapter().in_band_error(decoder.error, SECRETS))


def test_the_decoder_takes_an_error_cut_off_mid_event_for_an_error():
    decoder = OpenAIStreamDecoder("chat")
    assert decoder.feed(chunk("Hel") + b'\n\ndata: {"error": {"message": "key ' + USED.encode()) == [chunk("Hel")]
    assert decoder.finish() == [] and decoder.error is not None and decoder.done


def test_an_event_after_event_error_is_not_marked_by_it():
    decoder = OpenAIStreamDecoder("chat")
    assert decoder.feed(b"event: ping\ndata: " + chunk("a")[6:] + b"\n\n") == [chunk("a")]
    assert decoder.error is None


@pytest.mark.parametrize("body", [ERROR_SHAPES["openai"], LEAK.encode(), b""])
def test_a_stream_that_held_no_event_at_all_ends_with_an_error(body):
    decoder = OpenAIStreamDecoder("chat")
    assert decoder.feed(body) == [] and decoder.finish() == []
    assert decoder.done and decoder.error == body.strip() and not decoder.produced()
    assert_clean(OpenAIAdapter().in_band_error(decoder.error, SECRETS))


def test_the_decoder_drops_empty_data_and_accepts_done_without_a_space():
    decoder = OpenAIStreamDecoder("chat")
    assert decoder.feed(b"data: \n\n" + chunk("x") + b"\n\ndata:[DONE]\n\n") == [chunk("x")]
    assert decoder.done and decoder.error is None
