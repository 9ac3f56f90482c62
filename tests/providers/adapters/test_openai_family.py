"""The OpenAI wire family's differences (Azure, DeepSeek, Mistral, Qwen, local nodes) and the
protocol faults the OpenAI decoders repair (issue 8, item 3), adapter by adapter, without a server."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from apps.providers.adapters import adapter_for
from apps.providers.adapters.base import CanonicalRequest, Credential, Target, Usage
from apps.providers.adapters.mock.adapter import LocalResponse
from apps.providers.adapters.openai import (
    AzureOpenAIAdapter,
    DeepSeekAdapter,
    MistralAdapter,
    OpenAIAdapter,
    OpenAIStreamDecoder,
    QwenAdapter,
)
from apps.providers.adapters.openai.stream import EMPTY, FAILED_FINISH, TRUNCATED
from apps.providers.adapters.openai.variants import QWEN_BASE_URLS
from apps.providers.adapters.openai.wire import canonical_finish_reason, max_tokens_field

KEY = "sk-family-secret-0123456789abcdef"


def chat(body: dict | None = None, *, stream: bool = False) -> CanonicalRequest:
    body = {"model": "public", "messages": [{"role": "user", "content": "hi"}], **(body or {})}
    if stream:
        body["stream"] = True
    return CanonicalRequest("chat", "public", body, stream=stream, max_tokens=body.get("max_tokens"))


def event(choices: list | None = None, **extra) -> bytes:
    return b"data: " + orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "choices": choices or [], **extra})


def delta(content=None, finish=None, **fields) -> dict:
    return {"index": 0, "delta": {**({"content": content} if content is not None else {}), **fields}, "finish_reason": finish}


def sse(*events: bytes) -> bytes:
    return b"".join(e + b"\n\n" for e in events)


def decode(data: bytes, endpoint: str = "chat") -> tuple[OpenAIStreamDecoder, list[bytes]]:
    decoder = OpenAIStreamDecoder(endpoint)
    out = decoder.feed(data)
    if not decoder.done:
        out += decoder.finish()
    return decoder, out


USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


# ---------------------------------------------------------------- request maps


def test_azure_puts_the_deployment_in_the_path_the_version_in_the_query_and_the_key_in_api_key():
    adapter = adapter_for("azure_openai")
    assert isinstance(adapter, AzureOpenAIAdapter)
    headers = asyncio.run(adapter.auth.headers(Credential(1, KEY), None))
    assert headers == {"api-key": KEY}
    prepared = adapter.build_request(chat(stream=True), Target("https://res.openai.azure.com", "gpt4o-prod", {"api_version": "2025-01-01"}),
                                     headers)
    assert prepared.url == "https://res.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2025-01-01"
    assert prepared.headers["api-key"] == KEY and "Authorization" not in prepared.headers
    assert orjson.loads(prepared.body)["stream_options"] == {"include_usage": True}
    default = adapter.build_request(CanonicalRequest("embedding", "e", {"input": "x"}), Target("https://r", "emb", {"deployment": "d 1"}), {})
    assert default.url == "https://r/openai/deployments/d%201/embeddings?api-version=2024-10-21"


def test_mistral_gets_no_stream_options_and_max_tokens_whatever_the_client_sent():
    body = orjson.loads(MistralAdapter().build_request(
        chat({"max_completion_tokens": 50, "stream_options": {"include_usage": True}}, stream=True),
        Target("https://api.mistral.ai/v1", "mistral-small-latest"), {}).body)
    assert "stream_options" not in body and "max_completion_tokens" not in body and body["max_tokens"] == 50


@pytest.mark.parametrize(("model", "options", "expected"), [
    ("o3-mini", {}, "max_completion_tokens"), ("o1", {}, "max_completion_tokens"), ("gpt-5-mini", {}, "max_completion_tokens"),
    ("openai/o4-mini", {}, "max_completion_tokens"), ("gpt-4o-mini", {}, None), ("gpt-4o", {"max_tokens_param": "max_completion_tokens"},
                                                                               "max_completion_tokens"),
    ("o3", {"max_tokens_param": "max_tokens"}, "max_tokens"), ("omni-local", {}, None), ("o3", {"max_tokens_param": "bogus"}, "max_completion_tokens"),
])
def test_the_output_cap_is_named_by_the_model_id_pattern_unless_options_say_otherwise(model, options, expected):
    assert max_tokens_field(model, options) == expected


def test_a_reasoning_model_gets_max_completion_tokens_instead_of_max_tokens():
    prepared = OpenAIAdapter().build_request(chat({"max_tokens": 64}), Target("https://api.openai.com/v1", "o3-mini"), {})
    body = orjson.loads(prepared.body)
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body
    plain = orjson.loads(OpenAIAdapter().build_request(chat({"max_tokens": 64}), Target("https://x/v1", "gpt-4o-mini"), {}).body)
    assert plain["max_tokens"] == 64 and "max_completion_tokens" not in plain


def test_qwen_and_deepseek_are_the_openai_format_at_their_own_urls():
    assert QwenAdapter().build_request(chat(), Target(QWEN_BASE_URLS["intl"], "qwen-plus"), {}).url == (
        "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions")
    assert DeepSeekAdapter().build_request(chat(), Target("https://api.deepseek.com", "deepseek-chat"), {}).url == (
        "https://api.deepseek.com/chat/completions")


# ---------------------------------------------------------------- usage and reasoning


def test_deepseek_usage_cache_hits_are_the_cached_part_and_reasoning_passes_through():
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "42", "reasoning_content": "The user asks"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 60, "completion_tokens": 90, "total_tokens": 150, "prompt_cache_hit_tokens": 48,
                        "prompt_cache_miss_tokens": 12, "completion_tokens_details": {"reasoning_tokens": 81}}}
    raw = b"\n\n" + orjson.dumps(answer)  # DeepSeek's keep-alive blank lines before a JSON answer
    parsed = DeepSeekAdapter().parse_body(raw, chat())
    assert parsed.usage == Usage(60, 90, 48)
    assert orjson.loads(parsed.body)["choices"][0]["message"]["reasoning_content"] == "The user asks"
    # An OpenAI client finds the cache reads where OpenAI puts them (DeepSeek's own fields stay).
    usage = orjson.loads(parsed.body)["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 48} and usage["prompt_cache_hit_tokens"] == 48


def test_deepseek_stream_usage_gets_openai_s_cache_field_and_openai_s_own_is_kept():
    deepseek = {"choices": [], "usage": {**USAGE, "prompt_cache_hit_tokens": 5, "prompt_cache_miss_tokens": 4}}
    decoder, _ = decode(sse(event([delta("ok", "stop")]), b"data: " + orjson.dumps(deepseek), b"data: [DONE]"))
    assert decoder.usage_chunk["usage"]["prompt_tokens_details"] == {"cached_tokens": 5} and decoder.usage() == Usage(9, 3, 5)
    openai = {"choices": [], "usage": {**USAGE, "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 0}}}
    decoder, _ = decode(sse(event([delta("ok", "stop")]), b"data: " + orjson.dumps(openai), b"data: [DONE]"))
    assert decoder.usage_chunk["usage"]["prompt_tokens_details"] == {"cached_tokens": 2, "audio_tokens": 0}


def test_deepseek_keep_alive_comments_are_dropped_and_reasoning_deltas_relayed():
    reasoning = event([delta(None, reasoning_content="Hmm")])
    decoder, out = decode(b": keep-alive\n\n" + sse(reasoning, event([delta("ok", "stop")]), b"data: [DONE]"))
    assert out == [reasoning, event([delta("ok", "stop")])] and decoder.error is None
    assert decoder.generated_text() == "Hmmok"  # reasoning is output: counted when usage is missing


def test_zero_usage_with_text_hands_the_text_over_for_local_counting():
    answer = {"choices": [{"index": 0, "message": {"content": "hello there"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
    parsed = OpenAIAdapter().parse_body(orjson.dumps(answer), chat())
    assert parsed.usage == Usage(0, 0, 0) and parsed.text == "hello there"


# ---------------------------------------------------------------- stream framing


def test_done_without_the_space_ends_the_stream():
    decoder, out = decode(sse(event([delta("a", "stop")]), b"data:[DONE]", event([delta("late")])))
    assert decoder.done and decoder.error is None and out == [event([delta("a", "stop")])]


def test_usage_on_the_last_content_chunk_goes_out_once_as_text_and_once_as_usage():
    last = event([delta("b", "length")], usage=USAGE)  # Mistral's last chunk
    decoder, out = decode(sse(event([delta("a")]), last, b"data: [DONE]"))
    assert out == [event([delta("a")]), event([delta("b", "length")])]
    assert decoder.usage() == Usage(9, 3, 0) and decoder.usage_chunk["choices"] == []


def test_usage_on_every_chunk_keeps_the_last():
    decoder, out = decode(sse(event([delta("a")], usage={**USAGE, "completion_tokens": 1}),
                              event([delta("b", "stop")], usage={**USAGE, "completion_tokens": 2}), b"data: [DONE]"))
    assert [orjson.loads(e[6:]).get("usage") for e in out] == [None, None] and decoder.usage() == Usage(9, 2, 0)


@pytest.mark.parametrize(("word", "expected"), [
    ("tool_use", "tool_calls"), ("end_turn", "stop"), ("eos", "stop"), ("eos_token", "stop"), ("stop_sequence", "stop"),
    ("max_tokens", "length"), ("insufficient_system_resource", "length"), ("SAFETY", "content_filter"), ("whatever", "stop"),
    ("stop", "stop"), ("tool_calls", "tool_calls"), ("function_call", "function_call"), (None, None),
])
def test_provider_finish_reasons_become_openai_words(word, expected):
    assert canonical_finish_reason(word) == expected
    decoder, out = decode(sse(event([delta("x", word)]), b"data: [DONE]"))
    assert orjson.loads(out[0][6:])["choices"][0]["finish_reason"] == expected and decoder.error is None


def test_a_stream_finished_with_error_delivers_its_text_then_fails():
    decoder, out = decode(sse(event([delta("partial", "error")]), b"data: [DONE]"))
    assert orjson.loads(out[0][6:])["choices"][0] == {"index": 0, "delta": {"content": "partial"}, "finish_reason": "stop"}
    assert decoder.error == FAILED_FINISH
    failure = OpenAIAdapter().in_band_error(decoder.error, (KEY,))
    assert (failure.status, failure.code) == (502, "upstream_error")


def test_a_non_streamed_answer_finished_with_error_is_an_upstream_error():
    answer = {"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": "error"}]}
    with pytest.raises(Exception) as failed:
        OpenAIAdapter().parse_body(orjson.dumps(answer), chat())
    assert failed.value.code == "upstream_error"


def test_non_streamed_provider_finish_reasons_are_rewritten():
    answer = {"choices": [{"index": 0, "message": {"content": "x", "tool_calls": []}, "finish_reason": "tool_use"}], "usage": USAGE}
    parsed = OpenAIAdapter().parse_body(orjson.dumps(answer), chat())
    assert orjson.loads(parsed.body)["choices"][0]["finish_reason"] == "tool_calls" and parsed.text is None


def test_a_truncated_stream_is_marked_and_fails_as_upstream_truncated():
    decoder, out = decode(sse(event([delta("a")]), event([delta("b")])))
    assert len(out) == 2 and decoder.error == TRUNCATED and decoder.generated_text() == "ab"
    failure = OpenAIAdapter().in_band_error(decoder.error, (KEY,))
    assert (failure.status, failure.code, failure.failover) == (502, "upstream_truncated", True)


def test_a_stream_that_closes_after_its_finish_reason_without_done_is_complete():
    decoder, _ = decode(sse(event([delta("a", "stop")])))
    assert decoder.error is None and decoder.done


@pytest.mark.parametrize("stream", [
    b"data: [DONE]\n\n",
    sse(event([delta(None, role="assistant")]), event([delta(None, "stop")]), b"data: [DONE]"),
    sse(event([delta("", "stop")])),
])
def test_a_stream_with_no_text_and_no_usage_is_empty(stream):
    decoder, _ = decode(stream)
    assert decoder.error == EMPTY
    assert OpenAIAdapter().in_band_error(decoder.error, ()).code == "upstream_empty"


def test_a_json_answer_with_no_text_and_no_usage_is_empty():
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]}
    with pytest.raises(Exception) as failed:
        OpenAIAdapter().parse_body(orjson.dumps(answer), chat())
    assert (failed.value.status, failed.value.code) == (502, "upstream_empty")
    billed = OpenAIAdapter().parse_body(orjson.dumps({**answer, "usage": USAGE}), chat())
    assert billed.usage == Usage(9, 3, 0)


def test_a_stream_with_no_text_but_usage_is_a_billed_empty_answer():
    decoder, _ = decode(sse(event([delta("", "stop")]), event(usage=USAGE), b"data: [DONE]"))
    assert decoder.error is None and decoder.usage() == Usage(9, 3, 0)


# ---------------------------------------------------------------- wrong framing


COMPLETION = {"id": "cmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there",
                                                   "tool_calls": [{"id": "t1", "type": "function",
                                                                   "function": {"name": "f", "arguments": "{}"}}]},
                           "finish_reason": "tool_use"}],
              "usage": USAGE}


def test_one_json_completion_where_a_stream_belonged_becomes_a_stream():
    decoder, out = decode(orjson.dumps(COMPLETION))
    chunks = [orjson.loads(e[6:]) for e in out]
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * 2
    assert chunks[0]["choices"][0]["delta"]["content"] == "Hello there"
    assert chunks[0]["choices"][0]["delta"]["tool_calls"][0] == {"id": "t1", "type": "function", "index": 0,
                                                                 "function": {"name": "f", "arguments": "{}"}}
    assert chunks[1]["choices"][0]["finish_reason"] == "tool_calls"
    assert decoder.usage() == Usage(9, 3, 0) and decoder.error is None and decoder.done


def test_a_json_error_or_text_where_a_stream_belonged_is_still_an_error():
    decoder, out = decode(b'{"error": {"message": "boom"}}')
    assert out == [] and decoder.error == b'{"error": {"message": "boom"}}'
    decoder, out = decode(b"Internal Server Error")
    assert out == [] and decoder.error == b"Internal Server Error"


def test_an_sse_stream_where_json_belonged_is_assembled_into_one_completion():
    stream = sse(event([delta(None, role="assistant")], model="gpt-4o-mini"),
                 event([delta("Hel")]), event([delta("lo", tool_calls=[{"index": 0, "id": "t1", "type": "function",
                                                                         "function": {"name": "get", "arguments": "{\"a\""}}])]),
                 event([delta(None, tool_calls=[{"index": 0, "function": {"arguments": ": 1}"}}])]),
                 event([delta(None, "tool_use")]), event(usage=USAGE), b"data: [DONE]")
    parsed = OpenAIAdapter().parse_body(stream, chat())
    answer = orjson.loads(parsed.body)
    assert answer["object"] == "chat.completion" and answer["model"] == "gpt-4o-mini"
    message = answer["choices"][0]["message"]
    assert message["content"] == "Hello" and message["role"] == "assistant"
    assert message["tool_calls"] == [{"id": "t1", "type": "function", "function": {"name": "get", "arguments": "{\"a\": 1}"}}]
    assert answer["choices"][0]["finish_reason"] == "tool_calls" and parsed.usage == Usage(9, 3, 0)


def test_an_sse_stream_where_json_belonged_that_fails_is_an_upstream_error_without_its_text():
    with pytest.raises(Exception) as failed:
        OpenAIAdapter().parse_body(sse(event([delta("a")]), b'data: {"error": {"message": "key ' + KEY.encode() + b'"}}'), chat())
    assert failed.value.code == "upstream_error" and KEY not in failed.value.message


# ---------------------------------------------------------------- errors of the family


def test_vllm_errors_in_a_stream_are_mapped_by_their_status():
    decoder, _ = decode(sse(event([delta("a")]), b'data: {"error": {"object": "error", "message": "bad", "type": "BadRequestError", "code": 400}}'))
    failure = OpenAIAdapter().in_band_error(decoder.error, ())
    assert (failure.status, failure.failover) == (400, False)


def test_mistral_rate_limits_and_deepseek_insufficient_balance_fail_over():
    mistral = {"object": "error", "message": "Rate limit exceeded", "type": "rate_limited", "param": None, "code": "1300"}
    failure = MistralAdapter().map_error(429, orjson.dumps(mistral), {"retry-after": "7"}, ())
    assert (failure.status, failure.failover, failure.cooldown) == (429, True, 7.0)
    deepseek = {"error": {"message": "Insufficient Balance", "type": "unknown_error", "param": None, "code": "invalid_request_error"}}
    failure = DeepSeekAdapter().map_error(402, orjson.dumps(deepseek), {}, ())
    assert (failure.status, failure.code, failure.failover, failure.park) == (502, "upstream_quota_exhausted", True, True)


def test_a_mistral_422_for_an_extra_field_is_the_clients_error():
    body = {"object": "error", "message": {"detail": [{"type": "extra_forbidden", "loc": ["body", "foo"]}]},
            "type": "invalid_request_error", "param": None, "code": None}
    failure = MistralAdapter().map_error(422, orjson.dumps(body), {}, ())
    assert (failure.status, failure.code, failure.failover) == (422, "upstream_rejected", False)


# ---------------------------------------------------------------- the mock


def test_the_mock_is_asked_for_stream_usage_even_when_the_client_did_not():
    request = chat(stream=True)
    response = LocalResponse(request, Target("", "demo-chat"))

    async def collect() -> bytes:
        return b"".join([piece async for piece in response.chunks()])

    decoder, _ = decode(asyncio.run(collect()))
    assert decoder.usage() is not None and decoder.usage().output_tokens > 0
    assert "stream_options" not in request.body  # the client's body is not changed
