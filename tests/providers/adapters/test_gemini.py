"""The Gemini adapter: request map, response and usage map, stream decoder, errors — by unit and against FakeGemini."""

from __future__ import annotations

import asyncio
import base64
import struct

import aiohttp
import orjson
import pytest

from apps.providers.adapters import adapter_for
from apps.providers.adapters.base import (
    COOLDOWN_AUTH_FAILED,
    COOLDOWN_RATE_LIMITED,
    CanonicalRequest,
    Credential,
    Target,
    UpstreamFailure,
    Usage,
)
from apps.providers.adapters.gemini import GeminiAdapter, GeminiStreamDecoder
from apps.providers.adapters.gemini.ids import split_call_id
from apps.providers.adapters.gemini.request import SKIP_SIGNATURE
from apps.providers.adapters.gemini.stream import TRUNCATED
from apps.providers.models import ProviderKind
from tests.fakes.gemini_upstream import (
    DEFAULT_KEY,
    FakeGemini,
    fake_gemini,  # noqa: F401 - fixture
    fake_gemini_server,  # noqa: F401 - fixture
    google_error,
    invalid_key,
    leaky_error,
    rate_limited,
)
from tests.fakes.openai_upstream import DSN, INTERNAL_HOST, INTERNAL_IP

ADAPTER = GeminiAdapter()
TARGET = Target("https://generativelanguage.googleapis.com/v1beta", "gemini-2.5-flash")
AUTH = {"x-goog-api-key": DEFAULT_KEY}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image").decode()
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city", "strict": True,
    "parameters": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False,
                   "properties": {"city": {"type": "string", "description": "City", "format": "uri"},
                                  "when": {"type": "string", "format": "date-time"},
                                  "unit": {"type": ["string", "null"], "enum": ["C", "F"]},
                                  "where": {"$ref": "#/$defs/place"}},
                   "required": ["city"], "$defs": {"place": {"type": "object", "additionalProperties": False,
                                                             "properties": {"lat": {"type": "number"}}}}}}}


def chat(body: dict, *, stream: bool = False, endpoint: str = "chat") -> CanonicalRequest:
    return CanonicalRequest(endpoint, "gemini-pub", {"model": "gemini-pub", **body}, stream=stream)


def built(body: dict, *, stream: bool = False, target: Target = TARGET) -> tuple[str, dict]:
    prepared = ADAPTER.build_request(chat(body, stream=stream), target, AUTH)
    return prepared.url, orjson.loads(prepared.body)


# --------------------------------------------------------------------------- request map


def test_it_is_the_registered_adapter_for_the_gemini_kind():
    assert type(adapter_for(ProviderKind.GEMINI)) is GeminiAdapter


def test_it_builds_generate_content_with_the_key_in_a_header_and_never_in_the_url():
    prepared = ADAPTER.build_request(chat({"messages": [{"role": "user", "content": "hi"}]}), TARGET, AUTH)
    assert prepared.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    assert prepared.headers["x-goog-api-key"] == DEFAULT_KEY and DEFAULT_KEY not in prepared.url
    assert "Authorization" not in prepared.headers
    url, body = built({"messages": [{"role": "user", "content": "hi"}], "stream": True}, stream=True)
    assert url.endswith("/models/gemini-2.5-flash:streamGenerateContent?alt=sse") and "key=" not in url
    assert body == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_it_maps_system_roles_images_and_generation_settings():
    _, body = built({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp?size=2"}}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Sure?"}],
        "max_completion_tokens": 64, "temperature": 0.2, "top_p": 0.9, "stop": "END", "n": 2, "seed": 7,
        "response_format": {"type": "json_object"}, "reasoning_effort": "low"})
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Answer in English."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][0]["parts"][1:] == [{"inlineData": {"mimeType": "image/png", "data": PNG}},
                                                {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?size=2"}}]
    assert body["generationConfig"] == {"maxOutputTokens": 64, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"],
                                        "candidateCount": 2, "seed": 7, "responseMimeType": "application/json",
                                        "thinkingConfig": {"thinkingBudget": 1024}}


def test_it_maps_tools_to_declarations_gemini_accepts_and_tool_choice_to_its_config():
    _, body = built({"messages": [{"role": "user", "content": "Weather?"}], "tools": [WEATHER_TOOL],
                     "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    declaration = body["tools"][0]["functionDeclarations"][0]
    assert declaration["name"] == "get_weather" and declaration["description"] == "Weather in a city"
    assert declaration["parameters"] == {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": "City"},
        "when": {"type": "string", "format": "date-time"},
        "unit": {"type": "string", "nullable": True, "enum": ["C", "F"]},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}}}}}
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    for choice, mode in (("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")):
        assert built({"messages": [{"role": "user", "content": "x"}], "tool_choice": choice})[1]["toolConfig"] == {
            "functionCallingConfig": {"mode": mode}}
    no_args = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
    assert built({"messages": [{"role": "user", "content": "x"}], "tools": [no_args]})[1]["tools"] == [
        {"functionDeclarations": [{"name": "now"}]}]


def test_it_replays_tool_calls_and_answers_them_by_name_in_one_turn():
    signed = "call_0123456789abcdef01234567__ts__c2lnbmF0dXJl"
    _, body = built({"messages": [
        {"role": "user", "content": "Weather in Rome and Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": signed, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
        {"role": "tool", "tool_call_id": signed, "content": '{"temp": 24}'}]})
    model, answers = body["contents"][1:]
    assert model == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}, "thoughtSignature": "c2lnbmF0dXJl"},
        {"functionCall": {"name": "get_time", "args": {}}}]}
    assert answers == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_time", "response": {"output": "noon"}}},
        {"functionResponse": {"name": "get_weather", "response": {"temp": 24}}}]}


def test_it_signs_an_unsigned_replayed_call_for_gemini_3_only():
    messages = [{"role": "user", "content": "x"},
                {"role": "assistant", "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "ok"}]
    _, body = built({"messages": messages}, target=Target(TARGET.base_url, "gemini-3-pro-preview"))
    assert body["contents"][1]["parts"][0]["thoughtSignature"] == SKIP_SIGNATURE
    _, body = built({"messages": messages})
    assert "thoughtSignature" not in body["contents"][1]["parts"][0]


@pytest.mark.parametrize(("body", "complaint"), [
    ({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}, "unknown tool_call_id"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "at least one user"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]}, "base64"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "video": "x"}]}]}, "not supported"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"}, "tool_choice"),
])
def test_it_refuses_what_gemini_cannot_carry_with_a_400_before_sending(body, complaint):
    with pytest.raises(UpstreamFailure) as refused:
        built(body)
    assert refused.value.status == 400 and not refused.value.failover and complaint in refused.value.message


def test_it_builds_batch_embeddings_and_refuses_legacy_completions():
    prepared = ADAPTER.build_request(chat({"input": ["a", "b"], "dimensions": 4}, endpoint="embedding"),
                                     Target(TARGET.base_url, "gemini-embedding-001"), AUTH)
    assert prepared.url.endswith("/models/gemini-embedding-001:batchEmbedContents")
    assert orjson.loads(prepared.body) == {"requests": [
        {"model": "models/gemini-embedding-001", "outputDimensionality": 4, "content": {"parts": [{"text": "a"}]}},
        {"model": "models/gemini-embedding-001", "outputDimensionality": 4, "content": {"parts": [{"text": "b"}]}}]}
    with pytest.raises(UpstreamFailure) as refused:
        ADAPTER.build_request(chat({"input": [[1, 2, 3]]}, endpoint="embedding"), TARGET, AUTH)
    assert refused.value.status == 400
    with pytest.raises(UpstreamFailure) as refused:
        ADAPTER.build_request(chat({"prompt": "x"}, endpoint="completion"), TARGET, AUTH)
    assert refused.value.status == 400 and "completions" in refused.value.message


# --------------------------------------------------------------------------- response map


def answer(parts: list[dict], *, finish: str = "STOP", usage: dict | None = None) -> bytes:
    obj: dict = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
                 "responseId": "r1", "modelVersion": "gemini-2.5-flash-001"}
    if usage is not None:
        obj["usageMetadata"] = usage
    return orjson.dumps(obj)


def test_it_parses_text_without_thoughts_and_bills_thinking_and_cached_tokens():
    usage = {"promptTokenCount": 100, "cachedContentTokenCount": 60, "candidatesTokenCount": 7, "thoughtsTokenCount": 40,
             "toolUsePromptTokenCount": 5, "totalTokenCount": 152}
    parsed = ADAPTER.parse_body(answer([{"text": "hmm", "thought": True}, {"text": "Sunny, "}, {"text": "24°C."}], usage=usage),
                                chat({}))
    assert parsed.usage == Usage(input_tokens=105, output_tokens=47, cached_tokens=60) and parsed.text is None
    body = orjson.loads(parsed.body)
    assert body["object"] == "chat.completion" and body["id"] == "chatcmpl-r1" and body["model"] == "gemini-pub"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Sunny, 24°C."}, "logprobs": None,
                                "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 105, "completion_tokens": 47, "total_tokens": 152,
                             "prompt_tokens_details": {"cached_tokens": 60}, "completion_tokens_details": {"reasoning_tokens": 40}}


def test_it_turns_function_calls_into_tool_calls_with_ids_carrying_their_signature():
    parsed = ADAPTER.parse_body(answer([{"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}, "thoughtSignature": "c2ln"},
                                        {"functionCall": {"name": "get_time"}}], usage={"promptTokenCount": 3}), chat({}))
    message = orjson.loads(parsed.body)["choices"][0]
    assert message["finish_reason"] == "tool_calls" and message["message"]["content"] is None
    first, second = message["message"]["tool_calls"]
    assert first["type"] == "function" and first["function"] == {"name": "get_weather", "arguments": '{"city":"Rome"}'}
    assert first["id"].startswith("call_") and split_call_id(first["id"]) == "c2ln"
    assert second["function"]["arguments"] == "{}" and split_call_id(second["id"]) is None and second["id"] != first["id"]


@pytest.mark.parametrize(("finish", "expected"), [("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
                                                  ("RECITATION", "content_filter"), ("BLOCKLIST", "content_filter"),
                                                  ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
                                                  ("MALFORMED_FUNCTION_CALL", "stop"), ("OTHER", "stop")])
def test_it_maps_finish_reasons_into_openais_vocabulary(finish, expected):
    parsed = ADAPTER.parse_body(answer([{"text": "x"}], finish=finish), chat({}))
    assert orjson.loads(parsed.body)["choices"][0]["finish_reason"] == expected
    assert parsed.usage is None and parsed.text == "x"  # no usageMetadata: the text is counted locally


def test_a_blocked_prompt_is_a_400_content_filter_not_a_server_error():
    blocked = orjson.dumps({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 9}})
    failure = ADAPTER.body_failure(blocked, [DEFAULT_KEY])
    assert failure is not None and (failure.status, failure.code, failure.failover) == (400, "content_filter", False)
    assert "PROHIBITED_CONTENT" in failure.message
    with pytest.raises(UpstreamFailure) as refused:
        ADAPTER.parse_body(blocked, chat({}))
    assert refused.value.code == "content_filter"
    assert ADAPTER.body_failure(answer([{"text": "the word blockReason in an answer"}]), []) is None


@pytest.mark.parametrize("body", [b"", b"not json", b"[1]", b'{"candidates": []}'])
def test_it_refuses_a_malformed_body(body):
    with pytest.raises(UpstreamFailure) as refused:
        ADAPTER.parse_body(body, chat({}))
    assert refused.value.code == "upstream_malformed"


def test_it_parses_embeddings_with_locally_counted_usage():
    request = chat({"input": ["hello world", "bye"]}, endpoint="embedding")
    parsed = ADAPTER.parse_body(orjson.dumps({"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]}), request)
    body = orjson.loads(parsed.body)
    assert parsed.usage is None  # the gateway counts (and marks the record counted locally)
    assert body["object"] == "list" and [d["embedding"] for d in body["data"]] == [[0.1, 0.2], [0.3, 0.4]]
    assert [d["index"] for d in body["data"]] == [0, 1] and body["usage"]["prompt_tokens"] == 3
    request.body["encoding_format"] = "base64"
    encoded = orjson.loads(ADAPTER.parse_body(orjson.dumps({"embeddings": [{"values": [0.5, -2.0]}]}), request).body)
    assert struct.unpack("<2f", base64.b64decode(encoded["data"][0]["embedding"])) == (0.5, -2.0)
    with pytest.raises(UpstreamFailure):
        ADAPTER.parse_body(orjson.dumps({"embeddings": [{"values": ["x"]}]}), request)


# --------------------------------------------------------------------------- stream decoder


def sse(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"


def piece(parts: list[dict], *, finish: str | None = None, usage: dict | None = None) -> dict:
    candidate: dict = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    obj: dict = {"candidates": [candidate], "responseId": "s1"}
    if usage:
        obj["usageMetadata"] = usage
    return obj


def decode(stream: bytes, step: int = 5) -> tuple[GeminiStreamDecoder, list[dict]]:
    decoder = GeminiStreamDecoder(chat({}, stream=True))
    out: list[bytes] = []
    for i in range(0, len(stream), step):
        out += decoder.feed(stream[i:i + step])
    out += decoder.finish()
    assert all(line.startswith(b"data: ") for line in out)
    return decoder, [orjson.loads(line[6:]) for line in out]


def test_the_decoder_turns_chunks_into_openai_chunks_and_keeps_the_last_usage():
    stream = (sse(piece([{"text": "thinking…", "thought": True}], usage={"promptTokenCount": 10, "thoughtsTokenCount": 4}))
              + sse(piece([{"text": "Hel"}], usage={"promptTokenCount": 10, "candidatesTokenCount": 1, "thoughtsTokenCount": 4}))
              + sse(piece([{"text": "lo"}], finish="STOP", usage={"promptTokenCount": 10, "candidatesTokenCount": 2,
                                                                  "thoughtsTokenCount": 4, "cachedContentTokenCount": 6})))
    decoder, chunks = decode(stream)
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": "Hel"}, {"content": "lo"}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "stop"]
    assert {c["id"] for c in chunks} == {"chatcmpl-s1"} and {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert decoder.usage() == Usage(10, 6, 6) and decoder.error is None and decoder.produced()
    assert decoder.usage_chunk["choices"] == [] and decoder.usage_chunk["usage"]["completion_tokens_details"] == {"reasoning_tokens": 4}
    assert decoder.generated_text() == "Hello"


def test_the_decoder_streams_function_calls_with_indexes_and_finishes_with_tool_calls():
    stream = (sse(piece([{"functionCall": {"name": "a", "args": {"x": 1}}, "thoughtSignature": "sig"}]))
              + sse(piece([{"functionCall": {"name": "b", "args": {}}}], finish="STOP", usage={"promptTokenCount": 3,
                                                                                               "candidatesTokenCount": 5})))
    decoder, chunks = decode(stream, step=3)
    first, second = (c["choices"][0]["delta"]["tool_calls"][0] for c in chunks)
    assert (first["index"], first["function"], split_call_id(first["id"])) == (0, {"name": "a", "arguments": '{"x":1}'}, "sig")
    assert (second["index"], second["function"]["name"]) == (1, "b")
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert decoder.usage() == Usage(3, 5, 0)


def test_the_decoder_ends_with_an_error_for_a_cut_stream_a_raw_error_and_a_blocked_prompt():
    decoder, chunks = decode(sse(piece([{"text": "Hel"}])))
    assert len(chunks) == 1 and decoder.done and decoder.error == TRUNCATED
    failure = ADAPTER.in_band_error(decoder.error, [])
    assert (failure.status, failure.code) == (502, "upstream_broken")

    raw = orjson.dumps(google_error(503, "UNAVAILABLE", "overloaded"), option=orjson.OPT_INDENT_2)
    decoder, chunks = decode(sse(piece([{"text": "Hel"}])) + raw + b"\n")
    assert len(chunks) == 1 and decoder.error is not None
    failure = ADAPTER.in_band_error(decoder.error, [])
    assert (failure.status, failure.code, failure.failover) == (502, "upstream_error", True)

    decoder, chunks = decode(sse({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}}))
    assert chunks == [] and not decoder.produced()
    failure = ADAPTER.in_band_error(decoder.error, [])
    assert (failure.status, failure.code) == (400, "content_filter")

    decoder, chunks = decode(b"")
    assert chunks == [] and decoder.error == TRUNCATED

    as_event = google_error(429, "RESOURCE_EXHAUSTED", "slow down")
    decoder, chunks = decode(sse(piece([{"text": "Hel"}])) + sse(as_event) + sse(piece([{"text": "lo"}], finish="STOP")))
    assert len(chunks) == 1 and orjson.loads(decoder.error) == as_event
    assert ADAPTER.in_band_error(decoder.error, []).code == "upstream_rate_limited"


# --------------------------------------------------------------------------- errors


def test_it_fails_over_on_key_trouble_including_googles_400_for_a_bad_key():
    for status, body in ((403, google_error(403, "PERMISSION_DENIED", "denied")), (401, google_error(401, "UNAUTHENTICATED", "no")),
                         (400, invalid_key()), (400, google_error(400, "FAILED_PRECONDITION", "User location is not supported"))):
        failure = ADAPTER.map_error(status, orjson.dumps(body), {}, [DEFAULT_KEY])
        assert (failure.status, failure.code, failure.failover, failure.cooldown) == (502, "upstream_auth_failed", True,
                                                                                     COOLDOWN_AUTH_FAILED), (status, body)


def test_it_rests_a_rate_limited_key_for_the_retry_delay_google_names():
    failure = ADAPTER.map_error(429, orjson.dumps(rate_limited("12s")), {}, [])
    assert (failure.status, failure.code, failure.failover, failure.cooldown) == (429, "upstream_rate_limited", True, 12.0)
    assert ADAPTER.map_error(429, orjson.dumps(rate_limited("1.5s")), {}, []).cooldown == 1.5
    assert ADAPTER.map_error(429, orjson.dumps(rate_limited("86400s")), {}, []).cooldown == COOLDOWN_AUTH_FAILED
    assert ADAPTER.map_error(429, orjson.dumps(rate_limited("12s")), {"retry-after": "3"}, []).cooldown == 3.0
    assert ADAPTER.map_error(429, b"{}", {}, []).cooldown == COOLDOWN_RATE_LIMITED


def test_server_errors_fail_over_and_request_errors_are_passed_on_scrubbed():
    for status in (500, 503, 504):
        failure = ADAPTER.map_error(status, orjson.dumps(leaky_error(status)), {}, [DEFAULT_KEY])
        assert (failure.status, failure.failover) == (502, True) and "key" not in failure.message
    failure = ADAPTER.map_error(400, orjson.dumps(google_error(400, "INVALID_ARGUMENT", f"bad field; key {DEFAULT_KEY} at "
                                                               f"https://{INTERNAL_HOST}/x ({INTERNAL_IP}) {DSN}")), {}, [DEFAULT_KEY])
    assert (failure.status, failure.type, failure.code, failure.failover) == (400, "invalid_request_error", "invalid_request", False)
    assert "bad field" in failure.message
    for secret in (DEFAULT_KEY, INTERNAL_HOST, INTERNAL_IP, DSN, "https://"):
        assert secret not in failure.message
    not_found = ADAPTER.map_error(404, orjson.dumps(google_error(404, "NOT_FOUND", "models/x is not found")), {}, [])
    assert (not_found.status, not_found.code) == (404, "model_not_found")
    assert ADAPTER.map_error(302, b"", {}, []).code == "upstream_redirect"
    assert ADAPTER.body_failure(orjson.dumps(google_error(500, "INTERNAL", "x")), []).failover


# --------------------------------------------------------------------------- against FakeGemini


async def _call(fake: FakeGemini, request: CanonicalRequest, *, model: str = "gemini-2.5-flash", key: str = DEFAULT_KEY):
    async with aiohttp.ClientSession() as http:
        response = await ADAPTER.open(http, request, Target(fake.base_url, model), Credential(1, key), proxy=None)
        try:
            if response.status >= 300:
                return response.status, ADAPTER.map_error(response.status, await response.read(), response.headers, [key])
            if not request.stream:
                return response.status, ADAPTER.parse_body(await response.read(), request)
            decoder = ADAPTER.stream_decoder(request)
            events = []
            async for data in response.chunks():
                events += decoder.feed(data)
            events += decoder.finish()
            return response.status, (decoder, [orjson.loads(e[6:]) for e in events])
        finally:
            response.release()


def run(coro):
    return asyncio.run(coro)


def test_it_talks_to_a_gemini_server_with_the_key_only_in_its_header(fake_gemini):  # noqa: F811
    status, parsed = run(_call(fake_gemini, chat({"messages": [{"role": "system", "content": "Be brief."},
                                                               {"role": "user", "content": "Ping the vault"}]})))
    assert status == 200
    body = orjson.loads(parsed.body)
    assert body["choices"][0]["message"]["content"] == "Gemini heard: Ping the vault"
    seen = fake_gemini.last_request
    assert seen.path == "/v1beta/models/gemini-2.5-flash:generateContent" and seen.headers["x-goog-api-key"] == DEFAULT_KEY
    assert seen.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    # promptTokenCount counts system + user words; the usage is the fake's, not a local count.
    assert parsed.usage == Usage(5, 5, 0)
    status, (decoder, chunks) = run(_call(fake_gemini, chat({"messages": [{"role": "user", "content": "Stream it"}]}, stream=True)))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Gemini heard: Stream it"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and decoder.error is None
    assert fake_gemini.last_request.query == {"alt": "sse"}
    assert all(DEFAULT_KEY not in r.url and "key" not in r.query for r in fake_gemini.requests)


def test_a_whole_tool_round_trip_is_accepted_by_the_strict_server(fake_gemini):  # noqa: F811
    fake_gemini.behavior(thought_signature="c2lnbmF0dXJlLTE=")
    messages = [{"role": "user", "content": "Weather in Rome?"}]
    status, parsed = run(_call(fake_gemini, chat({"messages": messages, "tools": [WEATHER_TOOL]}), model="gemini-3-pro-preview"))
    assert status == 200, parsed.message if isinstance(parsed, UpstreamFailure) else None
    call = orjson.loads(parsed.body)["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Rome"}'}
    messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": call["id"], "content": '{"temp": 24}'}]
    status, parsed = run(_call(fake_gemini, chat({"messages": messages, "tools": [WEATHER_TOOL]}), model="gemini-3-pro-preview"))
    assert status == 200, parsed.message if isinstance(parsed, UpstreamFailure) else None
    assert orjson.loads(parsed.body)["choices"][0]["message"]["content"] == 'The tool said: {"temp":24}'
    # The signature went back with the call it came with, as Gemini 3 demands.
    assert fake_gemini.last_request.body["contents"][1]["parts"][0]["thoughtSignature"] == "c2lnbmF0dXJlLTE="


def test_the_strict_server_refuses_json_schema_keys_the_adapter_strips(fake_gemini):  # noqa: F811
    raw = {"contents": [{"role": "user", "parts": [{"text": "x"}]}],
           "tools": [{"functionDeclarations": [{"name": "f", "parameters": WEATHER_TOOL["function"]["parameters"]}]}]}

    async def post() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as http, http.post(f"{fake_gemini.base_url}/models/gemini-2.5-flash:generateContent",
                                                              json=raw, headers=AUTH) as response:
            return response.status, await response.json()

    status, body = run(post())
    assert status == 400 and "Unknown name" in body["error"]["message"]


def test_a_wrong_key_is_googles_400_and_fails_over(fake_gemini):  # noqa: F811
    status, failure = run(_call(fake_gemini, chat({"messages": [{"role": "user", "content": "x"}]}), key="AIzaSyWRONG-key-000000000000000000000"))
    assert status == 400 and failure.failover and failure.code == "upstream_auth_failed"


def test_a_careless_upstreams_echo_of_key_and_url_never_comes_through(fake_gemini):  # noqa: F811
    fake_gemini.behavior(status=400, error_body=google_error(400, "INVALID_ARGUMENT", "{key} at {url} " + INTERNAL_HOST))
    status, failure = run(_call(fake_gemini, chat({"messages": [{"role": "user", "content": "x"}]})))
    assert status == 400 and failure.status == 400
    assert DEFAULT_KEY not in failure.message and "127.0.0.1" not in failure.message and INTERNAL_HOST not in failure.message


def test_it_reads_images_thoughts_and_cached_usage_from_the_server(fake_gemini):  # noqa: F811
    fake_gemini.behavior(thoughts="Let me look closely", cached_tokens=3)
    content = [{"type": "text", "text": "What is it"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
    status, parsed = run(_call(fake_gemini, chat({"messages": [{"role": "user", "content": content}]})))
    assert status == 200
    text = orjson.loads(parsed.body)["choices"][0]["message"]["content"]
    assert text == "Gemini heard: What is it" and "Let me" not in text
    assert fake_gemini.last_request.body["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
    # prompt: 3 words + 258 for the image + 3 cached; output: 5 words + 4 thought words.
    assert parsed.usage == Usage(3 + 258 + 3, 5 + 4, 3)
