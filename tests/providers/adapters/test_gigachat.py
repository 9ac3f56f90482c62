"""The GigaChat adapter against FakeGigaChat (a real loopback server speaking the OAuth and v1
formats): the token exchange and its cache, 401 recovery, TLS with a CA bundle, request and
answer maps, the stream, functions, embeddings, and errors."""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest

from apps.providers.adapters import adapter_for, base
from apps.providers.adapters.base import CanonicalRequest, Credential, Target, UpstreamFailure, Usage
from apps.providers.adapters.gigachat import GigaChatAdapter, GigaChatStreamDecoder
from apps.providers.adapters.gigachat.auth import tls_context
from tests.fakes.gigachat_upstream import DEFAULT_AUTH_KEY, FakeGigaChat, gigachat_error, leaky_gigachat_error, make_tls
from tests.fakes.openai_upstream import DSN, INTERNAL_HOST, INTERNAL_IP

KEY = Credential(1, DEFAULT_AUTH_KEY)
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def server():
    with FakeGigaChat() as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.reset()
    yield server
    server.reset()


def target(fake: FakeGigaChat, **options: Any) -> Target:
    return Target(fake.base_url, "GigaChat-2-Max", {"auth_url": fake.auth_url, "scope": "GIGACHAT_API_PERS", **options})


def chat(content: str = "Привет", *, stream: bool = False, **fields: Any) -> CanonicalRequest:
    body = {"model": "giga", "messages": [{"role": "user", "content": content}], **fields}
    if stream:
        body["stream"] = True
    return CanonicalRequest("chat", "giga", body, stream=stream)


class Outcome:
    """What a call through the adapter ended in, read the way the proxy reads it."""

    def __init__(self, status: int, body: bytes, events: list[bytes], decoder: GigaChatStreamDecoder | None,
                 failure: UpstreamFailure | None) -> None:
        self.status, self.body, self.events, self.decoder, self.failure = status, body, events, decoder, failure

    def json(self) -> dict:
        return orjson.loads(self.body)

    def chunks(self) -> list[dict]:
        return [orjson.loads(event[5:]) for event in self.events]


async def call(adapter: GigaChatAdapter, fake: FakeGigaChat, request: CanonicalRequest, *, credential: Credential = KEY,
               tgt: Target | None = None, session: aiohttp.ClientSession | None = None) -> Outcome:
    own = session is None
    http = session or aiohttp.ClientSession()
    try:
        try:
            response = await adapter.open(http, request, tgt or target(fake), credential, proxy=None)
        except UpstreamFailure as failure:
            return Outcome(0, b"", [], None, failure)
        try:
            if response.status >= 300:
                body = await response.read()
                return Outcome(response.status, body, [], None,
                               adapter.map_error(response.status, body, response.headers, (credential.secret,)))
            if not request.stream:
                return Outcome(response.status, await response.read(), [], None, None)
            decoder = adapter.stream_decoder(request)
            events = []
            async for data in response.chunks():
                events += decoder.feed(data)
                if decoder.done:
                    break
            if not decoder.done:
                events += decoder.finish()
            return Outcome(response.status, b"", events, decoder, None)
        finally:
            response.release()
    finally:
        if own:
            await http.close()


def run(adapter: GigaChatAdapter, fake: FakeGigaChat, request: CanonicalRequest, **kwargs: Any) -> Outcome:
    return asyncio.run(call(adapter, fake, request, **kwargs))


def text_of(chunks: list[dict]) -> str:
    return "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"])


# --------------------------------------------------------------------------- registry and request map


def test_it_is_the_adapter_registered_for_the_gigachat_kind():
    assert isinstance(adapter_for("gigachat"), GigaChatAdapter)


def test_it_maps_tools_messages_and_fields_into_gigachat_s_request():
    state = str(uuid.uuid4())
    body = {"model": "giga", "temperature": 0.2, "top_p": 0.9, "max_completion_tokens": 99, "repetition_penalty": 1.1,
            "stop": ["x"], "seed": 1, "presence_penalty": 0.5, "logprobs": True, "user": "u", "stream_options": {"include_usage": True},
            "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in Russian."}]},
                {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Kazan?"}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": state, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Kazan"}'}}]},
                {"role": "tool", "tool_call_id": state, "content": '{"temperature": -5}'},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Perm"}'}}]},
                {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"},
            ]}
    prepared = GigaChatAdapter().build_request(CanonicalRequest("chat", "giga", body), Target("https://g.example/api/v1", "GigaChat-2-Max"),
                                               {"Authorization": "Bearer t"})
    assert prepared.url == "https://g.example/api/v1/chat/completions" and prepared.headers["Accept"] == "application/json"
    sent = orjson.loads(prepared.body)
    assert sent == {
        "model": "GigaChat-2-Max", "stream": False, "temperature": 0.2, "top_p": 0.9, "max_tokens": 99, "repetition_penalty": 1.1,
        "functions": [{"name": "get_weather", "description": "Weather by city",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "function_call": {"name": "get_weather"},
        "messages": [
            {"role": "system", "content": "Be brief.\n\nAnswer in Russian."},
            {"role": "user", "content": "Weather in Kazan?"},
            {"role": "assistant", "content": "", "function_call": {"name": "get_weather", "arguments": {"city": "Kazan"}},
             "functions_state_id": state},
            {"role": "function", "name": "get_weather", "content": '{"temperature": -5}'},
            {"role": "assistant", "content": "", "function_call": {"name": "get_weather", "arguments": {"city": "Perm"}}},
            {"role": "function", "name": "get_weather", "content": '{"result":"sunny"}'},
        ]}
    assert body["model"] == "giga" and body["messages"][0] == {"role": "system", "content": "Be brief."}  # the client's body is untouched


@pytest.mark.parametrize(("choice", "expected"), [("auto", "auto"), ("none", "none"), ("required", {"name": "get_weather"})])
def test_it_maps_tool_choice(choice, expected):
    body = orjson.loads(GigaChatAdapter().build_request(chat(tools=[WEATHER], tool_choice=choice),
                                                        Target("https://g/api/v1", "GigaChat"), {}).body)
    assert body["function_call"] == expected


@pytest.mark.parametrize(("request_", "says"), [
    (chat(content=[{"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]), "has image content"),  # type: ignore[arg-type]
    (chat(content=[{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]), "has audio content"),  # type: ignore[arg-type]
    (CanonicalRequest("chat", "g", {"messages": [{"role": "assistant", "tool_calls": [
        {"id": "a", "function": {"name": "f", "arguments": "{}"}}, {"id": "b", "function": {"name": "f", "arguments": "{}"}}]}]}),
     "one tool call"),
    (CanonicalRequest("chat", "g", {"messages": [{"role": "tool", "tool_call_id": "nowhere", "content": "{}"}]}), "tool call made earlier"),
    (CanonicalRequest("completion", "g", {"prompt": "x"}), "/v1/chat/completions"),
    (CanonicalRequest("embedding", "g", {"input": [[1, 2, 3]]}), "text input"),
])
def test_it_refuses_what_gigachat_cannot_take_as_the_client_s_error(request_, says):
    with pytest.raises(UpstreamFailure) as refused:
        GigaChatAdapter().build_request(request_, Target("https://g/api/v1", "GigaChat"), {})
    assert refused.value.status == 400 and refused.value.type == "invalid_request_error" and not refused.value.failover
    assert says in refused.value.message


# --------------------------------------------------------------------------- the token exchange


def test_it_exchanges_the_key_as_documented_and_answers_a_chat(fake):
    fake.behavior(prompt_tokens=17, completion_tokens=6, precached_tokens=2)
    outcome = run(GigaChatAdapter(), fake, chat("Привет"))
    exchange = fake.exchanges[0]
    assert exchange.headers["Authorization"] == f"Basic {DEFAULT_AUTH_KEY}"
    assert uuid.UUID(exchange.headers["RqUID"]).version == 4
    assert exchange.headers["Accept"] == "application/json" and exchange.body == {"scope": "GIGACHAT_API_PERS"}
    api = fake.last_request
    assert api.headers["Authorization"].startswith("Bearer eyJ.fake.") and api.body["model"] == "GigaChat-2-Max"
    parsed = GigaChatAdapter().parse_body(outcome.body, chat())
    assert parsed.usage == Usage(17, 6, 2) and parsed.text is None
    completion = orjson.loads(parsed.body)
    assert completion["id"].startswith("chatcmpl-") and completion["object"] == "chat.completion" and completion["model"] == "giga"
    assert completion["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Привет! Это ответ от GigaChat."},
                                      "finish_reason": "stop", "logprobs": None}]
    assert completion["usage"] == {"prompt_tokens": 17, "completion_tokens": 6, "total_tokens": 23,
                                   "prompt_tokens_details": {"cached_tokens": 2}}


def test_twenty_concurrent_requests_share_one_token_exchange(fake):
    fake.behavior(oauth_latency_ms=200)  # the exchange is still running when the others arrive
    adapter = GigaChatAdapter()

    async def many():
        async with aiohttp.ClientSession() as http:
            return await asyncio.gather(*(call(adapter, fake, chat(f"q{i}"), session=http) for i in range(20)))

    outcomes = asyncio.run(many())
    assert [o.status for o in outcomes] == [200] * 20
    assert len(fake.exchanges) == 1 and len(fake.requests) == 20
    assert len({r.headers["Authorization"] for r in fake.requests}) == 1


def test_the_token_is_renewed_refresh_margin_before_it_expires(fake):
    fake.behavior(token_ttl_s=2.0)
    adapter = GigaChatAdapter()
    adapter.auth.refresh_margin = 1.0  # type: ignore[misc]

    async def twice(pause: float):
        async with aiohttp.ClientSession() as http:
            await call(adapter, fake, chat(), session=http)
            await asyncio.sleep(pause)
            return await call(adapter, fake, chat(), session=http)

    assert asyncio.run(twice(0.1)).status == 200
    assert len(fake.exchanges) == 1  # 1.9 s left: still good
    assert asyncio.run(twice(1.2)).status == 200
    assert len(fake.exchanges) == 2  # 0.8 s left, within the margin: renewed before it could expire
    tokens = [r.headers["Authorization"] for r in fake.requests]
    assert tokens[0] == tokens[1] == tokens[2] != tokens[3]


def test_it_reads_the_seconds_shaped_token_answer(fake):
    fake.behavior(token_shape="seconds", token_ttl_s=1000)
    adapter = GigaChatAdapter()
    assert run(adapter, fake, chat()).status == 200
    (token, expires), = adapter.auth._tokens.values()
    assert token.startswith("eyJ.fake.") and 990 < expires - time.time() <= 1000


def test_a_401_with_a_stale_token_is_retried_once_with_a_fresh_one(fake):
    adapter = GigaChatAdapter()
    assert run(adapter, fake, chat()).status == 200
    fake.revoke_tokens()  # the server forgot the token the gateway still holds
    outcome = run(adapter, fake, chat())
    assert outcome.status == 200 and outcome.failure is None
    assert len(fake.exchanges) == 2
    assert [r.status for r in fake.requests] == [200, 401, 200]


def test_a_second_401_fails_over_without_a_third_try(fake):
    fake.behavior(status=401)
    outcome = run(GigaChatAdapter(), fake, chat())
    assert outcome.failure is not None and outcome.failure.code == "upstream_auth_failed"
    assert outcome.failure.failover and outcome.failure.cooldown == base.COOLDOWN_AUTH_FAILED
    assert len(fake.exchanges) == 2 and len(fake.requests) == 2


@pytest.mark.parametrize(("credential", "options", "behavior"), [
    (Credential(1, "bm90LWEta2V5OnJlYWxseQ=="), {}, {}),  # a key the token service does not know
    (KEY, {"scope": "GIGACHAT_API_CORP"}, {}),  # a key without that scope (code 7)
    (KEY, {}, {"oauth_status": 403}),
])
def test_a_refused_exchange_fails_over_and_rests_the_key(fake, credential, options, behavior, caplog):
    fake.behavior(**behavior)
    with caplog.at_level(logging.WARNING, logger="jetstream.providers"):
        outcome = run(GigaChatAdapter(), fake, chat(), credential=credential, tgt=target(fake, **options))
    failure = outcome.failure
    assert failure is not None and (failure.status, failure.code, failure.failover) == (502, "upstream_auth_failed", True)
    assert failure.cooldown == base.COOLDOWN_AUTH_FAILED
    assert fake.requests == []  # the API never saw the request
    assert credential.secret not in caplog.text


@pytest.mark.parametrize(("behavior", "code", "status", "cooldown"), [
    ({"oauth_status": 500}, "upstream_error", 502, base.COOLDOWN_SERVER_ERROR),
    ({"oauth_status": 429, "error_headers": {"Retry-After": "9"}}, "upstream_rate_limited", 429, 9.0),
])
def test_a_failing_token_service_fails_over(fake, behavior, code, status, cooldown):
    fake.behavior(**behavior)
    failure = run(GigaChatAdapter(), fake, chat()).failure
    assert failure is not None and (failure.code, failure.status, failure.failover, failure.cooldown) == (code, status, True, cooldown)


def test_a_failed_exchange_is_not_cached(fake):
    fake.behavior(oauth_status=500, oauth_fail_times=1)
    adapter = GigaChatAdapter()
    assert run(adapter, fake, chat()).failure is not None
    assert run(adapter, fake, chat()).status == 200
    assert len(fake.exchanges) == 2


def test_the_token_log_and_errors_never_carry_the_secret_or_the_token(fake, caplog):
    fake.behavior(oauth_status=400, oauth_error_body={"code": 7, "message": "bad key {authkey} at {url}"})
    with caplog.at_level(logging.DEBUG):
        failure = run(GigaChatAdapter(), fake, chat()).failure
    assert failure is not None and DEFAULT_AUTH_KEY not in failure.message
    assert DEFAULT_AUTH_KEY not in caplog.text and fake.auth_url not in caplog.text and "bad key" in caplog.text


@pytest.mark.parametrize("options", [{"scope": "GIGACHAT_API_EVERYTHING"}, {"auth_url": "ftp://x/oauth"},
                                     {"ca_bundle": "/nonexistent/russian_trusted_root_ca.pem"}])
def test_misconfigured_options_fail_without_failover(fake, options):
    failure = run(GigaChatAdapter(), fake, chat(), tgt=target(fake, **options)).failure
    assert failure is not None and failure.code == "upstream_misconfigured" and not failure.failover


def test_it_trusts_the_ca_bundle_for_the_token_service_and_the_api(tmp_path):
    ca_bundle, server_context = make_tls(tmp_path)
    with FakeGigaChat(tls=server_context) as tls_fake:
        assert tls_fake.root.startswith("https://")
        # Without the bundle the chain is unknown: no connection (and no key sent anywhere).
        failure = run(GigaChatAdapter(), tls_fake, chat()).failure
        assert failure is not None and failure.code == "upstream_unreachable"
        assert tls_fake.exchanges == []
        outcome = run(GigaChatAdapter(), tls_fake, chat(), tgt=target(tls_fake, ca_bundle=str(ca_bundle)))
        assert outcome.status == 200 and len(tls_fake.exchanges) == 1 and len(tls_fake.requests) == 1
    options = {"ca_bundle": str(ca_bundle)}
    assert tls_context(options) is tls_context(options)  # one context per file
    assert tls_context({}) is None


# --------------------------------------------------------------------------- the stream


@pytest.mark.parametrize("empty_last", [False, True])
def test_the_stream_relays_each_piece_once_and_keeps_the_usage_apart(fake, empty_last):
    fake.behavior(chunks=3, prompt_tokens=20, completion_tokens=7, precached_tokens=4, usage_on_empty_chunk=empty_last)
    outcome = run(GigaChatAdapter(), fake, chat(stream=True))
    assert fake.last_request.body["stream"] is True and fake.last_request.headers["Accept"] == "text/event-stream"
    chunks = outcome.chunks()
    assert text_of(chunks) == "Привет! Это ответ от GigaChat."  # no piece twice
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "giga" and "usage" not in c for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    decoder = outcome.decoder
    assert decoder is not None and decoder.done and decoder.error is None
    assert decoder.usage() == Usage(20, 7, 4)
    assert decoder.usage_chunk is not None and decoder.usage_chunk["choices"] == []
    assert decoder.usage_chunk["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}


def test_the_decoder_handles_split_reads_crlf_comments_and_done_without_a_space():
    decoder = GigaChatStreamDecoder("giga")
    first = orjson.dumps({"choices": [{"delta": {"content": "Раз", "role": "assistant"}, "index": 0}], "object": "chat.completion"})
    last = orjson.dumps({"choices": [{"delta": {"content": " два"}, "index": 0, "finish_reason": "length"}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    stream = b"data: " + first + b"\r\n\r\n: comment\r\n\r\ndata:" + last + b"\r\n\r\ndata:[DONE]\r\n\r\ndata: " + first + b"\r\n\r\n"
    events: list[bytes] = []
    for i in range(0, len(stream), 5):
        events += decoder.feed(stream[i:i + 5])
    chunks = [orjson.loads(e[5:]) for e in events]
    assert text_of(chunks) == "Раз два" and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert decoder.done and decoder.usage() == Usage(3, 2, 0) and decoder.generated_text() == "Раз два"


def test_a_stream_error_ends_it_without_being_relayed_and_fails_over(fake):
    fake.behavior(chunks=4, stream_error_after=2, stream_error_body=leaky_gigachat_error(500))
    adapter = GigaChatAdapter()
    outcome = run(adapter, fake, chat(stream=True))
    decoder = outcome.decoder
    assert decoder is not None and len(outcome.events) == 2 and decoder.error is not None and decoder.done
    failure = adapter.in_band_error(decoder.error, (DEFAULT_AUTH_KEY,))
    assert failure.failover and failure.code == "upstream_error" and "{key}" not in failure.message


@pytest.mark.parametrize(("reason", "expected"), [("blacklist", "content_filter"), ("length", "length")])
def test_finish_reasons_are_openai_s(fake, reason, expected):
    fake.behavior(finish_reason=reason)
    body = orjson.loads(GigaChatAdapter().parse_body(run(GigaChatAdapter(), fake, chat()).body, chat()).body)
    assert body["choices"][0]["finish_reason"] == expected
    chunks = run(GigaChatAdapter(), fake, chat(stream=True)).chunks()
    assert chunks[-1]["choices"][0]["finish_reason"] == expected


def test_a_choice_that_finished_with_error_is_a_failure(fake):
    fake.behavior(finish_reason="error")
    adapter = GigaChatAdapter()
    failure = adapter.body_failure(run(adapter, fake, chat()).body, (DEFAULT_AUTH_KEY,))
    assert failure is not None and failure.failover and failure.status == 502
    decoder = run(adapter, fake, chat(stream=True)).decoder
    assert decoder is not None and decoder.error is not None
    assert adapter.body_failure(orjson.dumps({"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}), ()) is None


def test_an_empty_stream_is_an_error():
    decoder = GigaChatStreamDecoder("giga")
    assert decoder.feed(b"") == [] and decoder.finish() == []
    assert decoder.done and decoder.error is not None and not decoder.produced()


# --------------------------------------------------------------------------- functions


def test_functions_round_trip_through_openai_tool_calls(fake):
    adapter = GigaChatAdapter()
    first = chat("Погода в Казани?", tools=[WEATHER])
    outcome = run(adapter, fake, first)
    assert fake.last_request.body["functions"][0]["name"] == "get_weather" and "tools" not in fake.last_request.body
    completion = orjson.loads(adapter.parse_body(outcome.body, first).body)
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (tool_call,) = choice["message"]["tool_calls"]
    assert tool_call["type"] == "function" and tool_call["function"]["name"] == "get_weather"
    assert orjson.loads(tool_call["function"]["arguments"]) == {"city": "Казань"}  # an object upstream, a JSON string here
    follow_up = CanonicalRequest("chat", "giga", {"model": "giga", "tools": [WEATHER], "messages": [
        {"role": "user", "content": "Погода в Казани?"}, choice["message"],
        {"role": "tool", "tool_call_id": tool_call["id"], "content": '{"temperature": -5}'}]})
    answer = run(adapter, fake, follow_up)
    assert answer.status == 200, answer.body  # the fake refuses (422) what the real API refuses
    sent = fake.last_request.body["messages"]
    assert sent[1]["function_call"] == {"name": "get_weather", "arguments": {"city": "Казань"}}
    assert sent[1]["functions_state_id"] == tool_call["id"]
    assert sent[2] == {"role": "function", "name": "get_weather", "content": '{"temperature": -5}'}
    assert orjson.loads(adapter.parse_body(answer.body, follow_up).body)["choices"][0]["message"]["content"]


@pytest.mark.parametrize("split", [False, True])
def test_a_streamed_function_call_is_one_openai_tool_call(fake, split):
    fake.behavior(split_call=split, call_arguments={"city": "Казань", "unit": "C"})
    outcome = run(GigaChatAdapter(), fake, chat("Погода?", stream=True, tools=[WEATHER]))
    calls = [call for c in outcome.chunks() for choice in c["choices"] for call in choice["delta"].get("tool_calls") or []]
    assert len(calls) == 1 and calls[0]["index"] == 0 and calls[0]["id"] and calls[0]["function"]["name"] == "get_weather"
    assert orjson.loads(calls[0]["function"]["arguments"]) == {"city": "Казань", "unit": "C"}
    assert outcome.chunks()[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert outcome.decoder is not None and outcome.decoder.usage() is not None


# --------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_sum_the_per_item_usage(fake, encoding):
    request = CanonicalRequest("embedding", "giga-embed", {"model": "giga-embed", "input": ["one two", "three"],
                                                           "encoding_format": encoding})
    outcome = run(GigaChatAdapter(), fake, request, tgt=Target(fake.base_url, "Embeddings", {"auth_url": fake.auth_url}))
    assert fake.last_request.body == {"model": "Embeddings", "input": ["one two", "three"]}
    parsed = GigaChatAdapter().parse_body(outcome.body, request)
    assert parsed.usage == Usage(2 + 1, 0, 0)
    body = orjson.loads(parsed.body)
    assert body["object"] == "list" and body["model"] == "giga-embed" and body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    upstream = orjson.loads(outcome.body)["data"]
    for mine, theirs in zip(body["data"], upstream, strict=True):
        vector = mine["embedding"]
        if encoding == "base64":
            raw = base64.b64decode(vector)
            vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        assert vector == pytest.approx(theirs["embedding"], abs=1e-6) and mine["index"] == theirs["index"]


# --------------------------------------------------------------------------- errors


def failure_for(fake: FakeGigaChat, **behavior: Any) -> UpstreamFailure:
    fake.behavior(**behavior)
    failure = run(GigaChatAdapter(), fake, chat()).failure
    assert failure is not None
    return failure


@pytest.mark.parametrize(("behavior", "expected"), [
    ({"status": 429, "error_headers": {"Retry-After": "7"}}, (429, "upstream_rate_limited", True, 7.0)),
    ({"status": 429, "error_headers": {"Retry-After": "99999"}}, (429, "upstream_rate_limited", True, base.COOLDOWN_AUTH_FAILED)),
    ({"status": 429}, (429, "upstream_rate_limited", True, base.COOLDOWN_RATE_LIMITED)),
    ({"status": 402}, (502, "upstream_auth_failed", True, base.COOLDOWN_AUTH_FAILED)),
    ({"status": 403}, (502, "upstream_auth_failed", True, base.COOLDOWN_AUTH_FAILED)),
    ({"status": 503}, (502, "upstream_error", True, base.COOLDOWN_SERVER_ERROR)),
    ({"status": 404}, (404, "model_not_found", False, None)),
    ({"status": 413}, (413, "upstream_rejected", False, None)),
    ({"status": 418}, (400, "upstream_rejected", False, None)),
])
def test_errors_map_into_the_gateway_s_vocabulary(fake, behavior, expected):
    failure = failure_for(fake, **behavior)
    assert (failure.status, failure.code, failure.failover, failure.cooldown) == expected


def test_a_rejected_request_keeps_its_message_scrubbed_of_keys_tokens_urls_and_hosts(fake):
    failure = failure_for(fake, status=422, error_body=leaky_gigachat_error(422))
    assert failure.status == 422 and failure.type == "invalid_request_error" and "failed at" in failure.message
    token = fake.last_request.headers["Authorization"].removeprefix("Bearer ")
    for secret in (token, DEFAULT_AUTH_KEY, fake.base_url, "127.0.0.1", INTERNAL_HOST, INTERNAL_IP, DSN):
        assert secret not in failure.message


def test_a_server_error_says_nothing_of_the_upstream_s_text_and_logs_it_scrubbed(fake, caplog):
    with caplog.at_level(logging.WARNING, logger="jetstream.providers"):
        failure = failure_for(fake, status=500, error_body=leaky_gigachat_error(500))
    assert failure.message == "The upstream provider failed (HTTP 500)."
    token = fake.last_request.headers["Authorization"].removeprefix("Bearer ")
    assert "failed at" in caplog.text and token not in caplog.text and DEFAULT_AUTH_KEY not in caplog.text


def test_a_200_error_object_is_a_failure():
    adapter = GigaChatAdapter()
    failure = adapter.body_failure(orjson.dumps(gigachat_error(429, "Too many requests")), ())
    assert failure is not None and failure.status == 429 and failure.failover
    with pytest.raises(UpstreamFailure) as malformed:
        adapter.parse_body(b'{"object": "list"}', chat())
    assert malformed.value.code == "upstream_malformed"



def test_a_request_that_times_out_during_the_exchange_does_not_fail_the_others_waiting_for_it(fake):
    fake.behavior(oauth_latency_ms=400)
    adapter = GigaChatAdapter()

    async def both():
        async with aiohttp.ClientSession() as http:
            async def impatient():
                async with asyncio.timeout(0.1):
                    return await call(adapter, fake, chat("a"), session=http)

            async def patient():
                await asyncio.sleep(0.05)  # joins the exchange the impatient one started
                async with asyncio.timeout(5):
                    return await call(adapter, fake, chat("b"), session=http)

            return await asyncio.gather(impatient(), patient(), return_exceptions=True)

    first, second = asyncio.run(both())
    assert isinstance(first, TimeoutError)
    assert isinstance(second, Outcome) and second.status == 200
    assert len(fake.exchanges) == 1 and len(fake.requests) == 1


def test_the_exchange_goes_through_the_session_it_is_given_so_the_ssrf_guard_applies(fake):
    from apps.proxy.pipeline.upstream import Timeouts, UpstreamClient

    async def guarded():
        client = UpstreamClient(timeouts=Timeouts(connect=2, first_byte=5, idle=5, total=5))
        await client.start()
        try:
            return await call(GigaChatAdapter(), fake, chat(), session=client.session)  # the guarded (non-internal) session
        finally:
            await client.stop()

    outcome = asyncio.run(guarded())
    assert outcome.failure is not None and outcome.failure.code == "upstream_unreachable"
    assert fake.exchanges == [] and fake.requests == []  # the key never left for a loopback address


def test_a_token_service_that_never_answers_times_out_and_the_next_request_exchanges_anew(fake):
    fake.behavior(oauth_latency_ms=1500)
    adapter = GigaChatAdapter()
    adapter.auth.exchange_timeout = 0.2
    failure = run(adapter, fake, chat()).failure
    assert failure is not None and (failure.code, failure.failover, failure.cooldown) == ("upstream_timeout", True, base.COOLDOWN_TIMED_OUT)
    assert "token exchange" in failure.message
    fake.behavior(oauth_latency_ms=0)
    assert run(adapter, fake, chat()).status == 200
    assert len(fake.exchanges) == 2
