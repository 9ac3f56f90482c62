"""The mock provider's generator: deterministic OpenAI-format answers with honest usage. DB-free."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time

import pytest

from apps.providers.adapters.mock import generator
from lib import tokenizer

MODEL = "gpt-4o-mini"
ENCODING = tokenizer.encoding_for_model(MODEL)


def chat(body: dict, **kwargs) -> dict:
    return json.loads(generator.chat_completion(body, upstream_model=MODEL, **kwargs))


def chat_events(body: dict, **kwargs) -> list[dict]:
    events = generator.chat_completion_chunks(dict(body, stream=True), upstream_model=MODEL, **kwargs)
    assert events[-1] == b"data: [DONE]\n\n"
    parsed = []
    for event in events[:-1]:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        parsed.append(json.loads(event[len(b"data: "):]))
    return parsed


def streamed_content(events: list[dict], index: int = 0) -> str:
    return "".join(c["delta"].get("content") or "" for e in events for c in e["choices"] if c["index"] == index)


def body(text: str = "Tell me about the weather today.", **extra) -> dict:
    return {"model": "anything", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}], **extra}


class TestChatCompletion:
    def test_it_answers_in_openai_shape(self):
        response = chat(body())
        assert response["object"] == "chat.completion"
        assert response["id"].startswith("chatcmpl-mock-")
        assert isinstance(response["created"], int) and abs(response["created"] - time.time()) < 5
        assert response["model"] == MODEL
        [choice] = response["choices"]
        assert choice["index"] == 0 and choice["finish_reason"] == "stop"
        assert choice["message"]["role"] == "assistant"
        assert isinstance(choice["message"]["content"], str) and len(choice["message"]["content"].split()) >= 12
        assert response["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}

    def test_it_is_deterministic_per_prompt(self):
        first, second = chat(body()), chat(body())
        assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
        assert first["id"] != second["id"]  # ids stay unique
        other = chat(body("Something else entirely."))
        assert other["choices"][0]["message"]["content"] != first["choices"][0]["message"]["content"]

    def test_it_answers_in_russian_to_cyrillic(self):
        content = chat(body("Привет! Как дела?"))["choices"][0]["message"]["content"]
        assert all(any("а" <= ch.lower() <= "я" or ch.lower() == "ё" for ch in word) for word in content.split())
        english = chat(body("Hello!"))["choices"][0]["message"]["content"]
        assert english.isascii()

    def test_its_usage_is_honest(self):
        request = body(tools=[{"type": "function", "function": {"name": "noop"}}])
        response = chat(request)
        content = response["choices"][0]["message"]["content"]
        usage = response["usage"]
        assert usage["completion_tokens"] == tokenizer.count_text(content, encoding=ENCODING)
        assert usage["prompt_tokens"] == tokenizer.count_chat_request(request, encoding=ENCODING)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    @pytest.mark.parametrize("limit_field", ["max_tokens", "max_completion_tokens"])
    def test_it_cuts_at_max_tokens_with_finish_reason_length(self, limit_field):
        full = chat(body())["choices"][0]["message"]["content"]
        response = chat(body(**{limit_field: 5}))
        choice = response["choices"][0]
        assert choice["finish_reason"] == "length"
        assert full.startswith(choice["message"]["content"])
        assert response["usage"]["completion_tokens"] == tokenizer.count_text(choice["message"]["content"], encoding=ENCODING) == 5

    def test_it_stops_normally_when_max_tokens_is_not_reached(self):
        full = chat(body())
        response = chat(body(max_tokens=full["usage"]["completion_tokens"]))
        assert response["choices"][0]["finish_reason"] == "stop"
        assert response["choices"][0]["message"]["content"] == full["choices"][0]["message"]["content"]

    def test_it_honours_n(self):
        response = chat(body(n=3))
        assert [c["index"] for c in response["choices"]] == [0, 1, 2]
        contents = [c["message"]["content"] for c in response["choices"]]
        assert len(set(contents)) == 3
        assert response["usage"]["completion_tokens"] == sum(tokenizer.count_text(c, encoding=ENCODING) for c in contents)

    def test_it_cuts_at_the_earliest_stop_sequence(self):
        full = chat(body())["choices"][0]["message"]["content"]
        first_word = full.split()[1]
        response = chat(body(stop=[".", first_word]))
        content = response["choices"][0]["message"]["content"]
        assert content == full[: min(full.find("."), full.find(first_word))]
        assert response["choices"][0]["finish_reason"] == "stop"
        assert response["usage"]["completion_tokens"] == tokenizer.count_text(content, encoding=ENCODING)
        assert chat(body(stop="no-such-sequence"))["choices"][0]["message"]["content"] == full

    def test_it_answers_json_for_json_object(self):
        content = chat(body(response_format={"type": "json_object"}))["choices"][0]["message"]["content"]
        assert isinstance(json.loads(content), dict)

    def test_it_fills_a_json_schema(self):
        schema = {"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "unit": {"enum": ["c", "f"]}, "tags": {"type": "array", "items": {"type": "string"}}, "ok": {"type": "boolean"},
            "score": {"type": ["number", "null"]}, "nested": {"type": "object", "properties": {"x": {"const": 1}}},
        }}
        content = chat(body(response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema, "strict": True}}))
        value = json.loads(content["choices"][0]["message"]["content"])
        assert set(value) == set(schema["properties"])
        assert isinstance(value["city"], str) and 1 <= value["days"] <= 7 and value["unit"] in ("c", "f")
        assert isinstance(value["tags"], list) and isinstance(value["ok"], bool) and isinstance(value["score"], float)
        assert value["nested"] == {"x": 1}

    WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}

    def test_it_calls_a_tool_when_required(self):
        response = chat(body(tools=[self.WEATHER_TOOL], tool_choice="required"))
        choice = response["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        [call] = choice["message"]["tool_calls"]
        assert call["id"].startswith("call_") and call["type"] == "function" and call["function"]["name"] == "get_weather"
        arguments = json.loads(call["function"]["arguments"])
        assert set(arguments) == {"city", "days"} and isinstance(arguments["days"], int)
        expected = tokenizer.count_text("get_weather", encoding=ENCODING) + tokenizer.count_text(call["function"]["arguments"], encoding=ENCODING)
        assert response["usage"]["completion_tokens"] == expected
        again = chat(body(tools=[self.WEATHER_TOOL], tool_choice="required"))["choices"][0]["message"]["tool_calls"][0]
        assert again == call

    def test_it_calls_the_named_tool_and_stops(self):
        other = {"type": "function", "function": {"name": "other", "parameters": {"type": "object", "properties": {}}}}
        response = chat(body(tools=[other, self.WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}}))
        choice = response["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"

    def test_it_answers_text_when_tools_are_optional(self):
        for choice in ("auto", "none", None):
            request = body(tools=[self.WEATHER_TOOL], tool_choice=choice) if choice else body(tools=[self.WEATHER_TOOL])
            message = chat(request)["choices"][0]["message"]
            assert "tool_calls" not in message and message["content"]

    def test_it_calls_a_legacy_function(self):
        functions = [self.WEATHER_TOOL["function"]]
        response = chat(body(functions=functions, function_call={"name": "get_weather"}))
        message = response["choices"][0]["message"]
        assert message["function_call"]["name"] == "get_weather"
        assert "city" in json.loads(message["function_call"]["arguments"])

    def test_it_cuts_tool_arguments_at_max_tokens(self):
        response = chat(body(tools=[self.WEATHER_TOOL], tool_choice="required", max_tokens=4))
        assert response["choices"][0]["finish_reason"] == "length"
        assert response["usage"]["completion_tokens"] <= 4

    def test_it_reads_options(self):
        response = chat(body(), options={"words": 5, "cached_tokens": 10**9, "language": "ru"})
        content = response["choices"][0]["message"]["content"]
        assert len(content.split()) == 5 and not content.isascii()
        usage = response["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"]  # never more than the prompt
        assert "usage" not in chat(body(), options={"omit_usage": True})

    @pytest.mark.parametrize("options", [None, {}, "junk", {"words": "many", "chunks": -3, "latency_ms": [1], "language": 7,
                                                             "cached_tokens": float("nan"), "dimensions": True}])
    def test_it_survives_odd_options(self, options):
        assert chat(body(), options=options)["choices"][0]["message"]["content"]

    @pytest.mark.parametrize("messages", [
        [], [{"role": "user", "content": ""}], [{"role": "user", "content": None}],
        [{"role": "user", "content": [{"type": "text", "text": "Привет"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}],
        [{"role": "user", "content": [{"type": "input_audio"}]}], [{"role": "assistant"}], None,
    ])
    def test_it_survives_odd_but_valid_messages(self, messages):
        response = chat({"model": "m", "messages": messages})
        assert response["usage"]["prompt_tokens"] >= 3
        assert chat_events({"model": "m", "messages": messages})


class TestChatStream:
    def test_it_streams_the_same_text_as_the_plain_answer(self):
        plain = chat(body())
        events = chat_events(body())
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
        assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events)
        assert streamed_content(events) == plain["choices"][0]["message"]["content"]
        assert events[-1]["choices"][0]["finish_reason"] == "stop" and events[-1]["choices"][0]["delta"] == {}
        assert all("usage" not in e for e in events)

    def test_it_splits_content_into_the_configured_pieces(self):
        content_events = lambda evs: [e for e in evs if e["choices"] and e["choices"][0]["delta"].get("content")]  # noqa: E731
        assert len(content_events(chat_events(body()))) == generator.DEFAULT_CHUNKS
        assert len(content_events(chat_events(body(), options={"chunks": 3}))) == 3
        text = chat(body())["choices"][0]["message"]["content"]
        assert len(content_events(chat_events(body(), options={"chunks": 0}))) == len(text.split())

    def test_it_adds_a_usage_chunk_when_asked(self):
        plain = chat(body())
        events = chat_events(body(stream_options={"include_usage": True}))
        assert events[-1]["choices"] == []
        assert events[-1]["usage"] == plain["usage"]
        assert all(e["usage"] is None for e in events[:-1])

    def test_it_omits_or_forces_the_usage_chunk_by_option(self):
        events = chat_events(body(stream_options={"include_usage": True}), options={"omit_usage": True})
        assert all("usage" not in e for e in events)
        forced = chat_events(body(), options={"always_stream_usage": True})
        assert forced[-1]["choices"] == [] and forced[-1]["usage"]["completion_tokens"] > 0

    def test_it_interleaves_n_choices(self):
        plain = chat(body(n=2))
        events = chat_events(body(n=2, stream_options={"include_usage": True}))
        for index in (0, 1):
            assert streamed_content(events, index) == plain["choices"][index]["message"]["content"]
        finishes = [c for e in events for c in e["choices"] if c["finish_reason"]]
        assert [c["index"] for c in finishes] == [0, 1]
        assert events[-1]["usage"] == plain["usage"]

    def test_it_streams_length_cuts(self):
        events = chat_events(body(max_tokens=3))
        assert tokenizer.count_text(streamed_content(events), encoding=ENCODING) == 3
        assert events[-1]["choices"][0]["finish_reason"] == "length"

    def test_it_streams_tool_calls(self):
        request = body(tools=[TestChatCompletion.WEATHER_TOOL], tool_choice="required")
        plain_call = chat(request)["choices"][0]["message"]["tool_calls"][0]
        events = chat_events(request, options={"chunks": 4})
        opening = events[0]["choices"][0]["delta"]["tool_calls"][0]
        assert opening["id"] == plain_call["id"] and opening["function"] == {"name": "get_weather", "arguments": ""}
        arguments = "".join(
            c["delta"]["tool_calls"][0]["function"]["arguments"] for e in events[1:] for c in e["choices"] if c["delta"].get("tool_calls")
        )
        assert arguments == plain_call["function"]["arguments"]
        assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"

    def test_it_streams_with_latency_and_delays(self):
        async def collect():
            started = time.perf_counter()
            stamps = []
            async for event in generator.stream(body(), upstream_model=MODEL, options={"latency_ms": 60, "chunk_delay_ms": 5, "chunks": 2}):
                stamps.append((time.perf_counter() - started, event))
            return stamps

        stamps = asyncio.run(collect())
        assert stamps[0][0] >= 0.06
        assert stamps[-1][1] == b"data: [DONE]\n\n"
        assert stamps[-1][0] - stamps[0][0] >= 0.005 * (len(stamps) - 1)
        content = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or "" for _, e in stamps[:-1])
        assert content == chat(body())["choices"][0]["message"]["content"]

    def test_it_refuses_to_stream_an_unknown_kind(self):
        async def consume():
            async for _ in generator.stream(body(), upstream_model=MODEL, kind="embedding"):
                pass

        with pytest.raises(ValueError, match="cannot stream"):
            asyncio.run(consume())

    def test_it_responds_after_latency(self):
        started = time.perf_counter()
        payload = asyncio.run(generator.respond(body(), upstream_model=MODEL, options={"latency_ms": 50}))
        assert time.perf_counter() - started >= 0.05
        assert json.loads(payload)["object"] == "chat.completion"


class TestCompletions:
    LEGACY = "gpt-3.5-turbo-instruct"

    def complete(self, request: dict, **kwargs) -> dict:
        return json.loads(generator.completion(request, upstream_model=self.LEGACY, **kwargs))

    def test_it_answers_text_completion_with_the_default_limit(self):
        response = self.complete({"model": "x", "prompt": "Once upon a time"})
        assert response["object"] == "text_completion" and response["id"].startswith("cmpl-mock-")
        [choice] = response["choices"]
        assert choice["text"].startswith(" ") and choice["finish_reason"] == "length"
        assert response["usage"]["completion_tokens"] == tokenizer.count_text(choice["text"], encoding="cl100k_base") <= 16
        assert response["usage"]["prompt_tokens"] == tokenizer.count_text("Once upon a time", encoding="cl100k_base")

    def test_it_answers_every_prompt_n_times(self):
        response = self.complete({"model": "x", "prompt": ["first", "second"], "n": 2, "max_tokens": 200})
        assert [c["index"] for c in response["choices"]] == [0, 1, 2, 3]
        assert all(c["finish_reason"] == "stop" for c in response["choices"])
        assert response["usage"]["completion_tokens"] == sum(tokenizer.count_text(c["text"], encoding="cl100k_base") for c in response["choices"])

    def test_it_echoes_and_accepts_token_arrays(self):
        echoed = self.complete({"model": "x", "prompt": "Say:", "echo": True})
        assert echoed["choices"][0]["text"].startswith("Say: ")
        assert echoed["usage"]["completion_tokens"] == tokenizer.count_text(echoed["choices"][0]["text"][4:], encoding="cl100k_base")
        arrays = self.complete({"model": "x", "prompt": [[1, 2, 3], [4, 5]]})
        assert len(arrays["choices"]) == 2 and arrays["usage"]["prompt_tokens"] == 5

    def test_it_streams_the_same_text(self):
        request = {"model": "x", "prompt": "Once upon a time", "max_tokens": 40, "stream_options": {"include_usage": True}}
        plain = self.complete(request)
        events = generator.completion_chunks(dict(request, stream=True), upstream_model=self.LEGACY)
        assert events[-1] == b"data: [DONE]\n\n"
        parsed = [json.loads(e[6:]) for e in events[:-1]]
        assert all(p["object"] == "text_completion" for p in parsed)
        assert "".join(c["text"] for p in parsed for c in p["choices"]) == plain["choices"][0]["text"]
        assert parsed[-1]["choices"] == [] and parsed[-1]["usage"] == plain["usage"]


class TestEmbeddings:
    EMBED = "text-embedding-3-small"

    def embed(self, request: dict, **kwargs) -> dict:
        return json.loads(generator.embeddings(request, upstream_model=self.EMBED, **kwargs))

    def test_it_returns_unit_vectors_of_the_default_size(self):
        response = self.embed({"model": "x", "input": ["hello", "world"]})
        assert response["object"] == "list" and response["model"] == self.EMBED
        assert [d["index"] for d in response["data"]] == [0, 1]
        for item in response["data"]:
            assert item["object"] == "embedding" and len(item["embedding"]) == generator.DEFAULT_DIMENSIONS
            assert math.isclose(math.sqrt(sum(x * x for x in item["embedding"])), 1.0, abs_tol=1e-5)
        assert response["data"][0]["embedding"] != response["data"][1]["embedding"]
        assert response["usage"] == {"prompt_tokens": 2, "total_tokens": 2}

    def test_it_is_deterministic_and_honours_dimensions(self):
        first = self.embed({"model": "x", "input": "hello", "dimensions": 64})
        second = self.embed({"model": "x", "input": "hello", "dimensions": 64})
        assert first == second and len(first["data"][0]["embedding"]) == 64

    def test_it_encodes_base64_as_little_endian_float32(self):
        floats = self.embed({"model": "x", "input": "hello"})["data"][0]["embedding"]
        encoded = self.embed({"model": "x", "input": "hello", "encoding_format": "base64"})["data"][0]["embedding"]
        raw = base64.b64decode(encoded)
        assert len(raw) == 4 * len(floats)
        assert list(struct.unpack(f"<{len(floats)}f", raw)) == floats

    def test_it_embeds_token_arrays(self):
        assert len(self.embed({"model": "x", "input": [1, 2, 3]})["data"]) == 1
        response = self.embed({"model": "x", "input": [[1, 2, 3], [4]]})
        assert len(response["data"]) == 2 and response["usage"]["prompt_tokens"] == 4
