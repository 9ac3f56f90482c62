"""The YandexGPT adapter: model URIs, request map, answers with string token counts, the cumulative
NDJSON stream diffed into deltas, the OpenAI-compatible mode, errors, and IAM authentication."""

from __future__ import annotations

import asyncio
import base64
import logging
import struct

import aiohttp
import orjson
import pytest

from apps.providers.adapters import adapter_for, base
from apps.providers.adapters.base import CanonicalRequest, Credential, Target, UpstreamFailure, Usage
from apps.providers.adapters.yandexgpt import NativeStreamDecoder, YandexGPTAdapter, YandexStreamDecoder, wire
from apps.providers.adapters.yandexgpt.auth import signed_jwt
from apps.providers.adapters.yandexgpt.stream import TRUNCATED
from tests.fakes import yandex_upstream
from tests.fakes.yandex_upstream import (
    API_KEY,
    FOLDER,
    new_authorized_key,
)

# The fake's fixtures, by assignment (an import would be shadowed by every test's argument).
fake_yandex_server = yandex_upstream.fake_yandex_server
fake_yandex = yandex_upstream.fake_yandex

NATIVE = Target("https://llm.api.cloud.yandex.net/foundationModels/v1", "yandexgpt-lite/latest", {"folder_id": FOLDER})
COMPAT = Target("https://llm.api.cloud.yandex.net/v1", "yandexgpt/latest", {"folder_id": FOLDER, "api": "openai"})
AUTH = {"Authorization": f"Api-Key {API_KEY}"}


def chat(body: dict | None = None, *, stream: bool = False, endpoint: str = "chat") -> CanonicalRequest:
    body = {"model": "yandex-lite", "messages": [{"role": "user", "content": "Привет"}], **(body or {})}
    if stream:
        body["stream"] = True
    return CanonicalRequest(endpoint, "yandex-lite", body, stream=stream)


def result(text: str | None = None, *, status: str = "ALTERNATIVE_STATUS_FINAL", usage: tuple | None = ("12", "30", "42"),
           reasoning: str = "0", calls: list | None = None) -> bytes:
    message: dict = {"role": "assistant"}
    if calls is not None:
        message["toolCallList"] = {"toolCalls": calls}
    else:
        message["text"] = text
    obj: dict = {"alternatives": [{"message": message, "status": status}], "modelVersion": "23.10.2025"}
    if usage is not None:
        obj["usage"] = {"inputTextTokens": usage[0], "completionTokens": usage[1], "totalTokens": usage[2],
                        "completionTokensDetails": {"reasoningTokens": reasoning}}
    return orjson.dumps({"result": obj})


def deltas(events: list[bytes]) -> list[dict]:
    return [orjson.loads(event[len(b"data: "):]) for event in events]


# ------------------------------------------------------------------ requests


def test_the_registry_serves_yandexgpt_with_this_adapter():
    assert isinstance(adapter_for("yandexgpt"), YandexGPTAdapter)


@pytest.mark.parametrize(("model", "scheme", "uri"), [
    ("yandexgpt-lite/latest", "gpt", "gpt://b1gexamplefolder/yandexgpt-lite/latest"),
    ("yandexgpt/rc", "gpt", "gpt://b1gexamplefolder/yandexgpt/rc"),
    ("gpt://b1gotherfolder/yandexgpt/latest", "gpt", "gpt://b1gotherfolder/yandexgpt/latest"),
    ("text-search-doc/latest", "emb", "emb://b1gexamplefolder/text-search-doc/latest"),
    ("ds://bt1dedicated", "gpt", "ds://bt1dedicated"),
])
def test_it_builds_the_model_uri(model, scheme, uri):
    assert wire.model_uri(FOLDER, model, scheme=scheme) == uri


def test_it_builds_a_native_completion_request():
    request = chat({"messages": [{"role": "system", "content": "Ты — помощник."}, {"role": "user", "content": "Какая погода?"}],
                    "max_tokens": 200, "temperature": 0.4, "top_p": 0.9, "stop": ["\n"]}, stream=True)
    prepared = YandexGPTAdapter().build_request(request, NATIVE, AUTH)
    assert prepared.url == "https://llm.api.cloud.yandex.net/foundationModels/v1/completion"
    assert prepared.headers["Authorization"] == f"Api-Key {API_KEY}"
    assert "x-folder-id" not in prepared.headers  # with an API key the service account's folder is used
    body = orjson.loads(prepared.body)
    assert body == {"modelUri": "gpt://b1gexamplefolder/yandexgpt-lite/latest",
                    "completionOptions": {"stream": True, "temperature": 0.4, "maxTokens": "200"},
                    "messages": [{"role": "system", "text": "Ты — помощник."}, {"role": "user", "text": "Какая погода?"}]}
    assert request.body["model"] == "yandex-lite"  # the client's body is not changed


def test_it_maps_tools_and_a_tool_round_trip_by_name():
    request = chat({
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Отвечай кратко."}]},
            {"role": "user", "content": "Погода в Москве и Казани?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Москва"}'}},
                {"id": "call_b", "type": "function", "function": {"name": "forecast", "arguments": '{"city": "Казань"}'}}]},
            {"role": "tool", "tool_call_id": "call_a", "content": "−5 °C"},
            {"role": "tool", "tool_call_id": "call_b", "content": "снег"},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Погода", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "weather"}}, "parallel_tool_calls": False,
        "max_completion_tokens": 50, "response_format": {"type": "json_object"},
    })
    body = orjson.loads(YandexGPTAdapter().build_request(request, NATIVE, AUTH).body)
    assert body["messages"] == [
        {"role": "system", "text": "Отвечай кратко."},
        {"role": "user", "text": "Погода в Москве и Казани?"},
        {"role": "assistant", "toolCallList": {"toolCalls": [
            {"functionCall": {"name": "weather", "arguments": {"city": "Москва"}}},
            {"functionCall": {"name": "forecast", "arguments": {"city": "Казань"}}}]}},
        {"role": "assistant", "toolResultList": {"toolResults": [
            {"functionResult": {"name": "weather", "content": "−5 °C"}},
            {"functionResult": {"name": "forecast", "content": "снег"}}]}},
    ]
    assert body["tools"] == [{"function": {"name": "weather", "description": "Погода", "parameters": {"type": "object"}}}]
    assert body["toolChoice"] == {"functionName": "weather"} and body["parallelToolCalls"] is False
    assert body["completionOptions"]["maxTokens"] == "50" and body["jsonObject"] is True


@pytest.mark.parametrize(("body", "endpoint", "fragment"), [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]}, "chat", "text only"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "chat", "not valid JSON"),
    ({"input": ["раз", "два"]}, "embedding", "one text per request"),
    ({"prompt": "hi"}, "completion", "legacy completions"),
])
def test_it_refuses_what_the_native_api_cannot_take(body, endpoint, fragment):
    with pytest.raises(UpstreamFailure) as refused:
        YandexGPTAdapter().build_request(CanonicalRequest(endpoint, "m", {"model": "m", **body}), NATIVE, AUTH)
    assert refused.value.status == 400 and not refused.value.failover and fragment in refused.value.message


@pytest.mark.parametrize(("options", "fragment"), [
    ({}, "folder_id"), ({"folder_id": FOLDER, "auth": "oauth"}, "auth"), ({"folder_id": FOLDER, "api": "grpc"}, "api")])
def test_a_misconfigured_provider_is_a_502_without_failover(options, fragment):
    with pytest.raises(UpstreamFailure) as refused:
        YandexGPTAdapter().build_request(chat(), Target(NATIVE.base_url, "yandexgpt/latest", options), AUTH)
    assert (refused.value.status, refused.value.code, refused.value.failover) == (502, "provider_misconfigured", False)
    assert fragment in refused.value.message


def test_it_builds_a_native_embedding_request():
    request = CanonicalRequest("embedding", "yandex-emb", {"model": "yandex-emb", "input": ["Мама мыла раму"], "dimensions": 256})
    prepared = YandexGPTAdapter().build_request(request, Target(NATIVE.base_url, "text-search-doc/latest", NATIVE.options), AUTH)
    assert prepared.url.endswith("/foundationModels/v1/textEmbedding")
    assert orjson.loads(prepared.body) == {"modelUri": "emb://b1gexamplefolder/text-search-doc/latest", "text": "Мама мыла раму",
                                           "dim": "256"}


def test_the_openai_mode_sends_the_uri_as_model_and_the_folder_as_project():
    prepared = YandexGPTAdapter().build_request(chat(stream=True), COMPAT, {"Authorization": f"Bearer {API_KEY}"})
    assert prepared.url == "https://llm.api.cloud.yandex.net/v1/chat/completions"
    assert prepared.headers["OpenAI-Project"] == FOLDER and "x-folder-id" not in prepared.headers
    body = orjson.loads(prepared.body)
    assert body["model"] == "gpt://b1gexamplefolder/yandexgpt/latest" and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "Привет"}]


def test_iam_tokens_carry_the_folder_header():
    iam = Target(NATIVE.base_url, NATIVE.upstream_model, {"folder_id": FOLDER, "auth": "iam"})
    prepared = YandexGPTAdapter().build_request(chat(), iam, {"Authorization": "Bearer t1.x"})
    assert prepared.headers["x-folder-id"] == FOLDER


@pytest.mark.parametrize(("options", "header"), [
    ({"folder_id": FOLDER}, f"Api-Key {API_KEY}"),
    ({"folder_id": FOLDER, "auth": "api_key", "api": "openai"}, f"Bearer {API_KEY}"),
    ({"folder_id": FOLDER, "auth": "iam"}, f"Bearer {API_KEY}"),
])
def test_the_auth_option_picks_the_scheme(options, header):
    adapter = YandexGPTAdapter()
    headers = asyncio.run(adapter.auth_headers(adapter_options(options), Credential(1, API_KEY), None))
    assert headers == {"Authorization": header}


def adapter_options(options: dict):
    from apps.providers.adapters.yandexgpt import YandexOptions

    return YandexOptions.of(options)


# ------------------------------------------------------------------ answers


def test_it_turns_a_native_answer_into_a_chat_completion_with_integer_usage():
    parsed = YandexGPTAdapter().parse_body(result("Привет! Чем помочь?", usage=("12", "30", "42"), reasoning="8"), chat())
    body = orjson.loads(parsed.body)
    assert parsed.usage == Usage(12, 30, 0) and parsed.text is None
    assert body["object"] == "chat.completion" and body["model"] == "yandex-lite" and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Привет! Чем помочь?"},
                                "finish_reason": "stop", "logprobs": None}]
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42,
                             "completion_tokens_details": {"reasoning_tokens": 8}}


@pytest.mark.parametrize(("status", "finish"), [
    ("ALTERNATIVE_STATUS_FINAL", "stop"), ("ALTERNATIVE_STATUS_TRUNCATED_FINAL", "length"),
    ("ALTERNATIVE_STATUS_CONTENT_FILTER", "content_filter"), ("ALTERNATIVE_STATUS_TOOL_CALLS", "tool_calls")])
def test_statuses_become_openai_finish_reasons(status, finish):
    body = orjson.loads(YandexGPTAdapter().parse_body(result("текст", status=status), chat()).body)
    assert body["choices"][0]["finish_reason"] == finish


def test_a_tool_call_answer_becomes_openai_tool_calls_with_json_string_arguments():
    calls = [{"functionCall": {"name": "weather", "arguments": {"city": "Москва", "days": 3}}}]
    parsed = YandexGPTAdapter().parse_body(result(calls=calls, status="ALTERNATIVE_STATUS_TOOL_CALLS"), chat())
    choice = orjson.loads(parsed.body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function" and "index" not in call
    assert call["function"]["name"] == "weather" and orjson.loads(call["function"]["arguments"]) == {"city": "Москва", "days": 3}


def test_without_usage_the_text_is_counted_locally():
    parsed = YandexGPTAdapter().parse_body(result("Только текст", usage=None), chat())
    assert parsed.usage is None and parsed.text == "Только текст"


@pytest.mark.parametrize("body", [b"", b"not json", b"[1]", b'{"result": 5}'])
def test_it_refuses_a_malformed_body(body):
    with pytest.raises(UpstreamFailure) as refused:
        YandexGPTAdapter().parse_body(body, chat())
    assert refused.value.code == "upstream_malformed"


def test_an_openai_mode_answer_passes_through():
    answer = orjson.dumps({"id": "x", "object": "chat.completion", "model": "gpt://b1gexamplefolder/yandexgpt/latest",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "Да"}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}})
    parsed = YandexGPTAdapter().parse_body(answer, chat())
    assert parsed.body is answer and parsed.usage == Usage(9, 12, 0)


@pytest.mark.parametrize("values", [[0.25, -0.5, 1.0], ["0.25", "-0.5", "1"]])
def test_an_embedding_becomes_an_openai_list(values):
    answer = orjson.dumps({"embedding": values, "numTokens": "4", "modelVersion": "1"})
    request = CanonicalRequest("embedding", "yandex-emb", {"model": "yandex-emb", "input": "Мама"})
    parsed = YandexGPTAdapter().parse_body(answer, request)
    assert parsed.usage == Usage(4, 0, 0)
    assert orjson.loads(parsed.body) == {"object": "list", "model": "yandex-emb", "usage": {"prompt_tokens": 4, "total_tokens": 4},
                                         "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}]}
    request.body["encoding_format"] = "base64"
    encoded = orjson.loads(YandexGPTAdapter().parse_body(answer, request).body)["data"][0]["embedding"]
    assert struct.unpack("<3f", base64.b64decode(encoded)) == (0.25, -0.5, 1.0)


# ------------------------------------------------------------------ streams

RUSSIAN = ["Прив", "Привет! Ч", "Привет! Чем помочь", "Привет! Чем помочь? 🙂"]


def native_stream(texts: list[str], *, final: str = "ALTERNATIVE_STATUS_FINAL", ending: bytes = b"\n") -> bytes:
    lines = []
    for number, text in enumerate(texts, start=1):
        status = final if number == len(texts) else "ALTERNATIVE_STATUS_PARTIAL"
        lines.append(result(text, status=status, usage=("12", str(number), str(12 + number))))
    return ending.join(lines) + ending


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_the_decoder_diffs_cumulative_russian_text_exactly_across_any_reads(step):
    decoder = YandexStreamDecoder("chat", "yandex-lite")
    stream = native_stream(RUSSIAN, ending=b"\r\n")
    events = []
    for start in range(0, len(stream), step):  # reads cut through multi-byte characters
        events += decoder.feed(stream[start:start + step])
        if decoder.done:
            break
    assert decoder.done and decoder.error is None
    chunks = deltas(events + decoder.finish())
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert pieces == ["Прив", "ет! Ч", "ем помочь", "? 🙂", None]
    assert "".join(p for p in pieces if p) == RUSSIAN[-1] == decoder.generated_text()
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant" and "role" not in chunks[1]["choices"][0]["delta"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, None, "stop"]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert decoder.usage() == Usage(12, 4, 0)  # cumulative: the last line's, not a sum
    assert decoder.usage_chunk is not None and decoder.usage_chunk["usage"]["completion_tokens"] == 4
    assert decoder.usage_chunk["choices"] == [] and decoder.produced()


def test_a_line_repeating_the_same_text_emits_nothing():
    decoder = NativeStreamDecoder("m")
    events = decoder.feed(native_stream(["Да", "Да", "Да, конечно"]))
    assert [c["choices"][0]["delta"].get("content") for c in deltas(events)] == ["Да", ", конечно", None]


def test_a_truncated_final_status_ends_with_length():
    decoder = NativeStreamDecoder("m")
    events = decoder.feed(native_stream(["Один", "Один два"], final="ALTERNATIVE_STATUS_TRUNCATED_FINAL"))
    assert deltas(events)[-1]["choices"][0]["finish_reason"] == "length" and decoder.done


def test_a_streamed_tool_call_is_one_delta_with_finish_reason_tool_calls():
    decoder = NativeStreamDecoder("m")
    line = result(calls=[{"functionCall": {"name": "weather", "arguments": {"city": "Казань"}}}],
                  status="ALTERNATIVE_STATUS_TOOL_CALLS", usage=("20", "7", "27"))
    chunks = deltas(decoder.feed(line + b"\n"))
    (call,) = chunks[0]["choices"][0]["delta"]["tool_calls"]
    assert call["index"] == 0 and call["function"]["name"] == "weather"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Казань"}
    assert chunks[1]["choices"][0]["finish_reason"] == "tool_calls" and decoder.usage() == Usage(20, 7, 0)


def test_a_stream_that_stops_before_its_final_status_ends_in_an_error():
    decoder = NativeStreamDecoder("m")
    stream = native_stream(RUSSIAN)
    events = decoder.feed(stream[: stream.index(b"\n", len(stream) // 2) + 1])
    assert events and not decoder.done
    assert decoder.finish() == [] and decoder.done and decoder.error == TRUNCATED
    failure = YandexGPTAdapter().in_band_error(decoder.error, [API_KEY])
    assert failure.status == 502 and failure.code == "upstream_error"


def test_the_last_line_without_a_newline_is_decoded_at_the_end():
    decoder = NativeStreamDecoder("m")
    stream = native_stream(["Раз", "Раз два"]).rstrip(b"\n")
    events = decoder.feed(stream)
    events += decoder.finish()
    assert [c["choices"][0]["delta"].get("content") for c in deltas(events)] == ["Раз", " два", None]
    assert decoder.error is None


def test_an_error_line_ends_the_stream_with_its_payload():
    decoder = NativeStreamDecoder("m")
    error = orjson.dumps({"error": {"grpcCode": 8, "httpCode": 429, "message": "ai.textGenerationCompletionSessionsCount.count gauge quota",
                                    "httpStatus": "Too Many Requests", "details": []}})
    events = decoder.feed(native_stream(["Нача"]).replace(b"FINAL", b"PARTIAL") + error + b"\n" + native_stream(["Начало"]))
    assert len(events) == 1 and decoder.done and decoder.error == error
    failure = YandexGPTAdapter().in_band_error(decoder.error, [API_KEY])
    assert (failure.status, failure.code, failure.failover) == (429, "upstream_rate_limited", True)


def test_an_empty_stream_is_an_error_and_not_produced():
    decoder = YandexStreamDecoder("chat", "m")
    assert decoder.feed(b"\n") == [] and decoder.finish() == []
    assert decoder.done and decoder.error == TRUNCATED and not decoder.produced()


def test_an_sse_stream_goes_to_the_openai_decoder():
    decoder = YandexStreamDecoder("chat", "m")
    chunk = {"id": "u", "object": "chat.completion.chunk", "model": "gpt://f/yandexgpt/latest",
             "choices": [{"index": 0, "delta": {"content": "Да"}, "finish_reason": None}]}
    usage = {"id": "u", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
    stream = b"data: " + orjson.dumps(chunk) + b"\n\ndata: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n"
    events = decoder.feed(stream[:3]) + decoder.feed(stream[3:])
    assert events == [b"data: " + orjson.dumps(chunk)] and decoder.done and decoder.usage() == Usage(5, 1, 0)


# ------------------------------------------------------------------ errors

LEAK = f"Unknown api key {API_KEY} at https://llm.api.cloud.yandex.net/foundationModels/v1/completion"


def grpc(http: int, grpc_code: int, message: str) -> bytes:
    return orjson.dumps({"error": {"grpcCode": grpc_code, "httpCode": http, "message": message, "httpStatus": "x", "details": []}})


@pytest.mark.parametrize("status", [401, 403])
def test_credential_errors_fail_over_and_rest_the_key(status):
    failure = YandexGPTAdapter().map_error(status, grpc(status, 16, LEAK), {}, [API_KEY])
    assert (failure.status, failure.code, failure.failover, failure.cooldown) == (502, "upstream_auth_failed", True,
                                                                                   base.COOLDOWN_AUTH_FAILED)
    assert API_KEY not in failure.message


@pytest.mark.parametrize(("retry_after", "cooldown"), [("7", 7.0), ("99999", base.COOLDOWN_AUTH_FAILED), ("", base.COOLDOWN_RATE_LIMITED)])
def test_rate_limits_fail_over_honouring_retry_after(retry_after, cooldown):
    headers = {"retry-after": retry_after} if retry_after else {}
    failure = YandexGPTAdapter().map_error(429, grpc(429, 8, "quota"), headers, [API_KEY])
    assert (failure.status, failure.code, failure.failover, failure.cooldown) == (429, "upstream_rate_limited", True, cooldown)


@pytest.mark.parametrize("status", [500, 503, 504])
def test_server_errors_fail_over(status):
    failure = YandexGPTAdapter().map_error(status, grpc(status, 13, LEAK), {}, [API_KEY])
    assert (failure.status, failure.failover) == (502, True) and "llm.api" not in failure.message


def test_a_bad_request_is_rejected_with_its_message_scrubbed(caplog):
    with caplog.at_level(logging.INFO, logger="jetstream.providers"):
        failure = YandexGPTAdapter().map_error(400, grpc(400, 3, "invalid model_uri; " + LEAK), {}, [API_KEY])
    assert (failure.status, failure.type, failure.code, failure.failover) == (400, "invalid_request_error", "upstream_rejected", False)
    assert "invalid model_uri" in failure.message
    assert API_KEY not in failure.message and "llm.api.cloud.yandex.net" not in failure.message
    assert API_KEY not in caplog.text and "llm.api.cloud.yandex.net" not in caplog.text


def test_known_request_errors_keep_a_gateway_code():
    too_long = YandexGPTAdapter().map_error(400, grpc(400, 3, "number of input tokens must be no more than 8192, got 9000"), {}, [])
    assert too_long.code == "context_length_exceeded"
    missing = YandexGPTAdapter().map_error(404, grpc(404, 5, "model not found"), {}, [])
    assert (missing.status, missing.code) == (404, "model_not_found")


def test_a_200_error_body_is_a_failure():
    failure = YandexGPTAdapter().body_failure(grpc(503, 14, "unavailable"), [API_KEY])
    assert failure is not None and failure.status == 502 and failure.failover
    assert YandexGPTAdapter().body_failure(result("ok"), [API_KEY]) is None


def test_an_openai_shaped_error_from_the_compatible_endpoint_is_mapped_too():
    body = orjson.dumps({"error": {"message": f"bad key {API_KEY}", "type": "invalid_request_error", "code": "invalid_api_key"}})
    failure = YandexGPTAdapter().map_error(401, body, {}, [API_KEY])
    assert failure.code == "upstream_auth_failed" and failure.failover


# ------------------------------------------------------------------ IAM


def test_the_jwt_is_ps256_and_verifiable():
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    key = new_authorized_key()
    token = signed_jwt(key, audience="https://iam.example/iam/v1/tokens", now=1_800_000_000)
    header, claims, signature = token.split(".")
    pad = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))  # noqa: E731
    assert orjson.loads(pad(header)) == {"typ": "JWT", "alg": "PS256", "kid": key["id"]}
    assert orjson.loads(pad(claims)) == {"iss": key["service_account_id"], "aud": "https://iam.example/iam/v1/tokens",
                                         "iat": 1_800_000_000, "exp": 1_800_003_600}
    public = serialization.load_pem_public_key(key["public_key"].encode())
    public.verify(pad(signature), f"{header}.{claims}".encode(), padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                  hashes.SHA256())


def test_an_authorized_key_is_exchanged_once_and_cached(fake_yandex):
    key = new_authorized_key()
    fake_yandex.register_key(key)
    adapter = YandexGPTAdapter()
    options = adapter_options({"folder_id": FOLDER, "auth": "iam", "iam_url": fake_yandex.iam_url})
    credential = Credential(41, orjson.dumps(key).decode())

    async def run():
        async with aiohttp.ClientSession() as http:
            first = await asyncio.gather(*(adapter.auth_headers(options, credential, http) for _ in range(5)))
            again = await adapter.auth_headers(options, credential, http)
            return first, again

    first, again = asyncio.run(run())
    assert fake_yandex.issued == 1 and len({h["Authorization"] for h in first}) == 1 and again == first[0]
    assert first[0]["Authorization"].startswith("Bearer t1.") and first[0]["Authorization"].split()[1] in fake_yandex.iam_tokens


def test_a_refused_authorized_key_fails_over():
    key = new_authorized_key()  # never registered with the fake: the IAM service refuses its JWT
    adapter = YandexGPTAdapter()

    async def run(url):
        async with aiohttp.ClientSession() as http:
            options = adapter_options({"folder_id": FOLDER, "auth": "iam", "iam_url": url})
            return await adapter.auth_headers(options, Credential(42, orjson.dumps(key).decode()), http)

    from tests.fakes.yandex_upstream import FakeYandex

    with FakeYandex() as fake, pytest.raises(UpstreamFailure) as refused:
        asyncio.run(run(fake.iam_url))
    assert (refused.value.code, refused.value.failover, refused.value.cooldown) == ("upstream_auth_failed", True,
                                                                                   base.COOLDOWN_AUTH_FAILED)


def test_a_refused_iam_token_is_dropped_and_exchanged_anew(fake_yandex):
    key = new_authorized_key()
    fake_yandex.register_key(key)
    adapter = YandexGPTAdapter()
    target = Target(fake_yandex.native_url, "yandexgpt-lite/latest", {"folder_id": FOLDER, "auth": "iam", "iam_url": fake_yandex.iam_url})
    credential = Credential(43, orjson.dumps(key).decode())

    async def call(http):
        response = await adapter.open(http, chat(), target, credential, proxy=None)
        status = response.status
        await response.read()
        response.release()
        return status

    async def run():
        async with aiohttp.ClientSession() as http:
            first = await call(http)
            fake_yandex.iam_tokens.clear()  # the IAM token is revoked upstream
            return first, await call(http), await call(http)

    assert asyncio.run(run()) == (200, 401, 200)
    assert fake_yandex.issued == 2
