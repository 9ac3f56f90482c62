"""FakeOpenAI driven by the official openai SDK: proves the fake (and so the mock) speaks the real
wire format, and that its failure behaviours look like OpenAI's to a real client. DB-free."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import threading
import time

import httpx
import openai
import pytest

from apps.providers.adapters.mock import generator
from tests.fakes.openai_upstream import DEFAULT_KEY, FakeOpenAI

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a ledger?"}]


@pytest.fixture
def client(fake_openai):
    with openai.OpenAI(base_url=fake_openai.base_url, api_key=fake_openai.api_key, max_retries=0, timeout=10) as sdk:
        yield sdk


def run(coro):
    return asyncio.run(coro)


def expected_content(**body) -> str:
    payload = generator.chat_completion({"model": "gpt-4o-mini", "messages": MESSAGES, **body}, upstream_model="gpt-4o-mini")
    return json.loads(payload)["choices"][0]["message"]["content"]


class TestWireFormat:
    def test_it_serves_chat_completions_to_the_sdk(self, fake_openai, client):
        response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert response.object == "chat.completion"
        assert response.choices[0].message.content == expected_content()
        assert response.choices[0].finish_reason == "stop"
        assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens > 0
        [recorded] = fake_openai.requests
        assert recorded.method == "POST" and recorded.path == "/v1/chat/completions"
        assert recorded.headers["authorization"] == f"Bearer {fake_openai.api_key}"
        assert recorded.body == {"model": "gpt-4o-mini", "messages": MESSAGES}
        assert recorded.status == 200 and recorded.completed and not recorded.stream

    def test_it_streams_to_the_sdk_with_usage(self, fake_openai, client):
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == expected_content()
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
        recorded = fake_openai.last_request
        assert recorded.wait_finished() and recorded.completed and recorded.stream
        assert recorded.events_sent == len(chunks) + 1  # and [DONE]

    def test_it_serves_the_async_sdk(self, fake_openai):
        async def scenario():
            async with openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key=fake_openai.api_key, max_retries=0) as sdk:
                plain = await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=2)
                stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=2, stream=True)
                texts = ["", ""]
                async for chunk in stream:
                    for choice in chunk.choices:
                        texts[choice.index] += choice.delta.content or ""
                return plain, texts

        plain, texts = run(scenario())
        assert [c.message.content for c in plain.choices] == texts

    def test_it_serves_tool_calls_to_the_sdk(self, client):
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
        response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=tools, tool_choice="required")
        call = response.choices[0].message.tool_calls[0]
        assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=tools, tool_choice="required", stream=True)
        arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or "" for c in stream if c.choices and c.choices[0].delta.tool_calls)
        assert arguments == call.function.arguments

    def test_it_serves_completions(self, client):
        response = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon a time", max_tokens=30)
        assert response.object == "text_completion" and response.choices[0].text.startswith(" ")
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="Once upon a time", max_tokens=30, stream=True) if c.choices)
        assert streamed == response.choices[0].text

    def test_it_serves_embeddings_as_floats_and_base64(self, fake_openai, client):
        # The SDK asks for base64 by default and decodes it itself.
        default = client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
        assert fake_openai.last_request.body["encoding_format"] == "base64"
        floats = client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"], encoding_format="float")
        assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
        vector = floats.data[0].embedding
        assert len(vector) == 256 and math.isclose(sum(x * x for x in vector), 1.0, abs_tol=1e-5)
        assert default.usage.prompt_tokens == 2
        raw = base64.b64decode(json.loads(generator.embeddings(
            {"input": "hello", "encoding_format": "base64"}, upstream_model="text-embedding-3-small"))["data"][0]["embedding"])
        assert list(struct.unpack("<256f", raw)) == vector

    def test_it_lists_models(self, fake_openai, client):
        assert [m.id for m in client.models.list()] == list(fake_openai.models)
        assert client.models.retrieve("gpt-4o").id == "gpt-4o"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("no-such-model")

    def test_it_answers_unknown_paths_and_bad_bodies_in_openai_error_shape(self, fake_openai):
        headers = {"Authorization": f"Bearer {fake_openai.api_key}"}
        unknown = httpx.post(f"{fake_openai.base_url}/nothing-here", headers=headers, json={})
        assert unknown.status_code == 404 and set(unknown.json()["error"]) == {"message", "type", "param", "code"}
        broken = httpx.post(f"{fake_openai.base_url}/chat/completions", headers=headers, content=b"{not json")
        assert broken.status_code == 400 and fake_openai.last_request.body is None
        missing = httpx.post(f"{fake_openai.base_url}/chat/completions", headers=headers, json={"model": "gpt-4o-mini"})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"

    def test_it_records_concurrent_requests(self, fake_openai, client):
        threads = [threading.Thread(target=client.chat.completions.create, kwargs={"model": "gpt-4o-mini", "messages": MESSAGES})
                   for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(fake_openai.wait_for_requests(12)) == 12


class TestAuthentication:
    def test_it_rejects_a_wrong_key(self, fake_openai):
        with openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-wrong-key-0000000000000000", max_retries=0) as sdk:
            with pytest.raises(openai.AuthenticationError) as caught:
                sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        error = caught.value.body
        assert error["code"] == "invalid_api_key" and "sk-wrong-key-0000000000000000" not in error["message"]
        assert fake_openai.last_request.status == 401

    def test_it_rejects_a_missing_key(self, fake_openai):
        response = httpx.get(f"{fake_openai.base_url}/models")
        assert response.status_code == 401 and response.json()["error"]["type"] == "invalid_request_error"

    def test_it_accepts_any_configured_key(self):
        with FakeOpenAI(expected_keys={"sk-one-aaaaaaaaaaaaaaaa", "sk-two-bbbbbbbbbbbbbbbb"}) as fake:
            for key in ("sk-one-aaaaaaaaaaaaaaaa", "sk-two-bbbbbbbbbbbbbbbb"):
                with openai.OpenAI(base_url=fake.base_url, api_key=key, max_retries=0) as sdk:
                    assert sdk.models.list().data
            with openai.OpenAI(base_url=fake.base_url, api_key=DEFAULT_KEY, max_retries=0) as sdk:
                with pytest.raises(openai.AuthenticationError):
                    sdk.models.list()


class TestFailureBehaviours:
    @pytest.mark.parametrize(("status", "exception"), [
        (429, openai.RateLimitError), (500, openai.InternalServerError), (503, openai.InternalServerError),
        (400, openai.BadRequestError), (403, openai.PermissionDeniedError),
    ])
    def test_it_fails_with_the_status_the_sdk_maps(self, fake_openai, client, status, exception):
        fake_openai.behavior(status=status)
        with pytest.raises(exception) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert caught.value.status_code == status
        assert set(caught.value.body) == {"message", "type", "param", "code"}

    def test_it_sends_a_custom_error_body_verbatim(self, fake_openai, client):
        leaky = {"error": {"message": f"key {DEFAULT_KEY} at https://internal.example/v1 is over quota", "type": "insufficient_quota",
                           "param": None, "code": "insufficient_quota"}}
        fake_openai.behavior(status=429, error_body=leaky, error_headers={"Retry-After": "7"})
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert caught.value.body == leaky["error"]
        assert caught.value.response.headers["retry-after"] == "7"

    def test_it_fails_only_the_next_requests_with_fail_times(self, fake_openai):
        fake_openai.behavior(status=500, fail_times=1, error_headers={"retry-after-ms": "1"})
        with openai.OpenAI(base_url=fake_openai.base_url, api_key=fake_openai.api_key, max_retries=1) as sdk:
            response = sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # the SDK's retry succeeds
        assert response.choices[0].message.content
        assert [r.status for r in fake_openai.requests] == [500, 200]

    def test_it_omits_usage(self, fake_openai, client):
        fake_openai.behavior(omit_usage=True)
        assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).usage is None
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                     stream_options={"include_usage": True}))
        assert all(c.usage is None and c.choices for c in chunks)

    def test_it_reports_cached_tokens(self, fake_openai, client):
        fake_openai.behavior(cached_tokens=7)
        usage = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).usage
        assert usage.prompt_tokens_details.cached_tokens == 7

    def test_it_streams_usage_even_if_not_requested(self, fake_openai, client):
        fake_openai.behavior(stream_usage_even_if_not_requested=True)
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0

    def test_it_waits_latency_before_answering(self, fake_openai, client):
        fake_openai.behavior(latency_ms=150)
        started = time.perf_counter()
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert time.perf_counter() - started >= 0.15
        started = time.perf_counter()
        with client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True) as response:
            assert time.perf_counter() - started >= 0.15  # headers come after the latency too
            assert response.headers["content-type"].startswith("text/event-stream")

    def test_it_splits_streams_as_configured(self, fake_openai, client):
        fake_openai.behavior(chunks=3, chunk_delay_ms=20)
        started = time.perf_counter()
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
        assert len([c for c in chunks if c.choices[0].delta.content]) == 3
        assert time.perf_counter() - started >= 0.02 * (len(chunks) - 1)

    def test_it_drops_the_connection_mid_stream(self, fake_openai, client):
        fake_openai.behavior(drop_after_chunks=2)
        received = []
        with pytest.raises(openai.APIConnectionError):
            for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
                received.append(chunk)
        assert len(received) == 2
        recorded = fake_openai.last_request
        assert recorded.wait_finished() and recorded.dropped and recorded.events_sent == 2 and not recorded.completed

    def test_it_hangs_until_reset(self, fake_openai):
        fake_openai.behavior(hang=True)
        with openai.OpenAI(base_url=fake_openai.base_url, api_key=fake_openai.api_key, max_retries=0, timeout=0.3) as sdk:
            with pytest.raises(openai.APITimeoutError):
                sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        recorded = fake_openai.last_request
        assert not recorded.finished.is_set()
        fake_openai.reset()
        assert recorded.wait_finished() and recorded.dropped and recorded.status is None

    def test_it_stops_while_a_request_hangs(self):
        fake = FakeOpenAI().start()
        fake.behavior(hang=True)
        outcome: list[Exception] = []

        def call() -> None:
            try:
                httpx.get(f"{fake.base_url}/models", timeout=30, headers={"Authorization": f"Bearer {fake.api_key}"})
            except httpx.HTTPError as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call)
        try:
            caller.start()
            hung = fake.wait_for_requests(1)[0]
        finally:
            started = time.perf_counter()
            fake.stop()
        caller.join(5)
        assert hung.finished.is_set() and time.perf_counter() - started < 5
        assert isinstance(outcome[0], httpx.RemoteProtocolError)  # the connection closed without an answer

    def test_it_counts_events_sent_before_the_client_went_away(self, fake_openai):
        fake_openai.behavior(chunks=0, chunk_delay_ms=30, words=40)
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
        headers = {"Authorization": f"Bearer {fake_openai.api_key}"}
        with httpx.Client() as http, http.stream("POST", f"{fake_openai.base_url}/chat/completions", json=body, headers=headers) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
        recorded = fake_openai.last_request
        assert recorded.wait_finished()
        assert recorded.client_disconnected and not recorded.completed
        assert 1 <= recorded.events_sent < 40

    def test_it_refuses_unknown_behaviours(self, fake_openai):
        with pytest.raises(TypeError, match="no_such_knob"):
            fake_openai.behavior(no_such_knob=True)

    def test_it_resets_behaviour_and_requests(self, fake_openai, client):
        fake_openai.behavior(status=500)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        fake_openai.reset()
        assert fake_openai.requests == []
        assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
