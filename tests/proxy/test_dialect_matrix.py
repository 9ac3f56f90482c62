"""Every client dialect × a representative set of upstream adapters, through the real gateway.

Dialects: OpenAI chat (``openai`` SDK), Anthropic Messages (``anthropic`` SDK), OpenAI Responses
(``openai`` SDK ``client.responses``). Adapters: openai, anthropic, gemini, gigachat, yandexgpt (native),
each at its fake on loopback (``tests/proxy/matrix_fixtures.py``). For every pair, unstreamed and
streamed, the same question is asked through the dialect and through OpenAI chat (the reference,
checked as strictly, so chat × every adapter is covered by every case); the case asserts
the answer in the dialect's own shape, the public model name, the usage in the dialect's own terms
(Anthropic: input *excludes* cache reads) — and that both requests left identical usage records whose
tokens and sell/buy costs are the exact price of the upstream's usage. A tool round trip (call, result,
final answer) runs for every pair too, against the same round trip through OpenAI chat, and a
streamed tool call; then answers cut at the length limit, reasoning tokens, an upstream's careless
400 (each dialect's error, scrubbed, free) and a stream the upstream breaks off (each dialect's
error ending, what came billed) — every one identical to OpenAI chat.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anthropic
import openai
import pytest

from apps.billing.models import UsageRecord
from tests.fakes import anthropic_upstream, gemini_upstream, openai_upstream, yandex_upstream
from tests.fakes.gigachat_upstream import leaky_gigachat_error
from tests.fakes.openai_upstream import DSN, INTERNAL_HOST, INTERNAL_IP, LEAKY_TEXT
from tests.proxy import matrix_fixtures
from tests.proxy.conftest import RUB
from tests.proxy.matrix_fixtures import ADAPTERS, KEYS, TOOL_NAME, Upstream

# The fixtures, by assignment (an import would be shadowed by every test's argument).
fake_gigachat_module = matrix_fixtures.fake_gigachat_module
fakes = matrix_fixtures.fakes
upstreams = matrix_fixtures.upstreams
fake_anthropic_server = anthropic_upstream.fake_anthropic_server
fake_anthropic = anthropic_upstream.fake_anthropic
fake_gemini_server = gemini_upstream.fake_gemini_server
fake_gemini = gemini_upstream.fake_gemini
fake_yandex_server = yandex_upstream.fake_yandex_server
fake_yandex = yandex_upstream.fake_yandex

SYSTEM = "Be brief."
QUESTION = "What is the weather in Oslo today"
# The dialects under test. OpenAI chat is the reference every case asks the same question through
# (and checks as strictly: public model name, its own usage terms, the exact price, its cost), so
# every case covers chat × the adapter too.
DIALECTS = ("anthropic", "responses")
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CHAT_TOOL = {"type": "function", "function": {"name": TOOL_NAME, "description": "Weather now", "parameters": PARAMETERS}}
ANTHROPIC_TOOL = {"name": TOOL_NAME, "description": "Weather now", "input_schema": PARAMETERS}
RESPONSES_TOOL = {"type": "function", "name": TOOL_NAME, "description": "Weather now", "parameters": PARAMETERS}
TOOL_RESULT = "4 degrees and rain"
RAW_EVENTS = {"message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
              "message_stop"}


@dataclass
class Answer:
    """What a dialect answered, normalised: text, tool calls [(id, name, arguments dict)], the model it
    named, the canonical usage (input incl. cached, output, cached) and the cost it showed (micro-rubles)."""

    text: str
    calls: list[tuple[str, str, dict]]
    model: str
    usage: tuple[int, int, int]
    cost: int | None
    finish: str  # the dialect's own end word
    raw_arguments: tuple[str, ...] = ()  # OpenAI chat: the tool calls' arguments exactly as sent, to replay
    reasoning: int | None = None  # reasoning tokens shown (part of the output); None: the dialect does not show them


def micro(rub: Any) -> int:
    """A cost shown in RUB (a header string or a JSON number) as micro-rubles."""
    whole, _, frac = str(rub).partition(".")
    return int(whole) * RUB + int((frac + "000000")[:6])


def claude(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.world.secret, max_retries=0)


# --------------------------------------------------------------------------- OpenAI chat


def chat_usage(usage) -> tuple[int, int, int]:
    details = usage.prompt_tokens_details
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    return usage.prompt_tokens, usage.completion_tokens, (details.cached_tokens or 0) if details else 0


def chat_reasoning(usage) -> int:
    details = usage.completion_tokens_details
    return (details.reasoning_tokens or 0) if details else 0


def ask_chat(gateway, model: str, messages: list[dict], *, stream: bool = False, limit: int = 200, **extra) -> Answer:
    client = gateway.client()
    if not stream:
        raw = client.chat.completions.with_raw_response.create(model=model, max_tokens=limit, messages=messages, **extra)
        done = raw.parse()
        message = done.choices[0].message
        calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
        return Answer(message.content or "", calls, done.model, chat_usage(done.usage), micro(raw.headers["x-jetstream-cost"]),
                      done.choices[0].finish_reason, tuple(c.function.arguments for c in message.tool_calls or []),
                      chat_reasoning(done.usage))
    chunks = list(client.chat.completions.create(model=model, max_tokens=limit, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}, **extra))
    assert len({c.model for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1, finishes
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls, raw_arguments = streamed_calls(chunks)
    return Answer(text, calls, chunks[0].model, chat_usage(final.usage), micro(final.usage.model_extra["cost"]), finishes[0],
                  raw_arguments, chat_reasoning(final.usage))


def streamed_calls(chunks: list) -> tuple[list[tuple[str, str, dict]], tuple[str, ...]]:
    """Tool calls put together from chat stream deltas (id and name once, arguments in pieces), by index."""
    parts: dict[int, dict] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = parts.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            if delta.id:
                assert call["id"] is None, "a call's id arrives once"
                call["id"] = delta.id
            if delta.function and delta.function.name:
                assert call["name"] is None, "a call's name arrives once"
                call["name"] = delta.function.name
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    ordered = [parts[i] for i in sorted(parts)]
    return [(c["id"], c["name"], json.loads(c["arguments"])) for c in ordered], tuple(c["arguments"] for c in ordered)


# --------------------------------------------------------------------------- Anthropic Messages


def anthropic_usage(usage) -> tuple[int, int, int]:
    """Anthropic's input_tokens exclude cache reads (and writes, always 0 here): add them back."""
    assert usage.cache_creation_input_tokens in (0, None)
    cached = usage.cache_read_input_tokens or 0
    return usage.input_tokens + cached, usage.output_tokens, cached


def anthropic_answer(message, cost: int | None) -> Answer:
    text = "".join(b.text for b in message.content if b.type == "text")
    calls = [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]
    assert message.type == "message" and message.role == "assistant"
    return Answer(text, calls, message.model, anthropic_usage(message.usage), cost, message.stop_reason)


def ask_anthropic(gateway, model: str, messages: list[dict], *, stream: bool = False, limit: int = 200, **extra) -> Answer:
    client = claude(gateway)
    if not stream:
        raw = client.messages.with_raw_response.create(model=model, max_tokens=limit, system=SYSTEM, messages=messages, **extra)
        return anthropic_answer(raw.parse(), micro(raw.headers["x-jetstream-cost"]))
    with client.messages.stream(model=model, max_tokens=limit, system=SYSTEM, messages=messages, **extra) as helper:
        events = [e for e in helper if e.type in RAW_EVENTS]  # the wire events (the helper adds its own too)
        final = helper.get_final_message()  # the SDK's own accumulation of the same stream
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    delta = events[-2]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert anthropic_usage(final.usage) == anthropic_usage(delta.usage)
    answer = anthropic_answer(final, micro(delta.usage.model_extra["cost"]))
    assert (answer.text, answer.finish) == (text, delta.delta.stop_reason)
    started = [e.content_block for e in events if e.type == "content_block_start" and e.content_block.type == "tool_use"]
    assert [(b.id, b.name) for b in started] == [(c[0], c[1]) for c in answer.calls]
    return answer


# --------------------------------------------------------------------------- OpenAI Responses


def responses_usage(usage) -> tuple[int, int, int]:
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    return usage.input_tokens, usage.output_tokens, usage.input_tokens_details.cached_tokens


def responses_answer(response, cost: int | None) -> Answer:
    assert response.object == "response"
    calls = [(item.call_id, item.name, json.loads(item.arguments)) for item in response.output if item.type == "function_call"]
    finish = response.status + (f"/{response.incomplete_details.reason}" if response.incomplete_details else "")
    return Answer(response.output_text, calls, response.model, responses_usage(response.usage), cost, finish,
                  reasoning=response.usage.output_tokens_details.reasoning_tokens)


def ask_responses(gateway, model: str, items: list[dict], *, stream: bool = False, limit: int = 200, **extra) -> Answer:
    client = gateway.client()
    if not stream:
        raw = client.responses.with_raw_response.create(model=model, instructions=SYSTEM, input=items, max_output_tokens=limit,
                                                        store=False, **extra)
        return responses_answer(raw.parse(), micro(raw.headers["x-jetstream-cost"]))
    events = list(client.responses.create(model=model, instructions=SYSTEM, input=items, max_output_tokens=limit, store=False,
                                          stream=True, **extra))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type in ("response.completed", "response.incomplete")
    completed = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == completed.output_text
    answer = responses_answer(completed, micro(completed.usage.model_extra["cost"]))
    pieces = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [json.loads(e.arguments) for e in events if e.type == "response.function_call_arguments.done"]
    assert done == [c[2] for c in answer.calls] and (not done or json.loads(pieces) == done[0])
    return answer


# --------------------------------------------------------------------------- the matrix


CHAT_QUESTION = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
END_WORDS = {"chat": "stop", "anthropic": "end_turn", "responses": "completed"}


def ask(dialect: str, gateway, model: str, *, stream: bool, tools: bool = False, limit: int = 200) -> Answer:
    """The same question (system prompt + one user turn) in the dialect's own request shape; with
    ``tools``, the weather tool offered and a call required."""
    if dialect == "chat":
        extra = {"tools": [CHAT_TOOL], "tool_choice": "required"} if tools else {}
        return ask_chat(gateway, model, CHAT_QUESTION, stream=stream, limit=limit, **extra)
    if dialect == "anthropic":
        extra = {"tools": [ANTHROPIC_TOOL], "tool_choice": {"type": "any"}} if tools else {}
        return ask_anthropic(gateway, model, [{"role": "user", "content": QUESTION}], stream=stream, limit=limit, **extra)
    extra = {"tools": [RESPONSES_TOOL], "tool_choice": "required"} if tools else {}
    return ask_responses(gateway, model, [{"role": "user", "content": QUESTION}], stream=stream, limit=limit, **extra)


def assert_records_agree(gateway, up: Upstream, usage: tuple[int, int, int], *, count: int, stream: bool,
                         drained: int | None = None) -> int:
    """The ``count`` records of this streaming mode all ok, with these tokens and the exact price (after
    ``drained`` records in all, default ``count``); returns the sell cost of one."""
    gateway.drain(expect=drained or count)
    records = list(UsageRecord.objects.filter(stream=stream))
    assert len(records) == count
    prompt, completion, cached = usage
    sell, buy = up.cost(prompt, completion, cached), up.cost(prompt, completion, cached, coefficient="1.10")
    assert {(r.status, r.stream, r.input_tokens, r.output_tokens, r.cached_tokens, r.usage_counted_locally, r.sell_cost, r.buy_cost)
            for r in records} == {("ok", stream, prompt, completion, cached, False, sell, buy)}
    assert sell > 0
    return sell


@pytest.fixture
def gw(upstreams, gateway):
    """The gateway, started after every matrix provider exists."""
    return gateway


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_an_answer_is_the_same_in_every_dialect(gw, upstreams, adapter, dialect, stream):
    up = ADAPTERS[adapter]
    upstreams[adapter].behavior(**up.behavior)
    reference = ask_chat(gw, up.model, CHAT_QUESTION, stream=stream)
    answer = ask(dialect, gw, up.model, stream=stream)

    assert answer.text and answer.text == reference.text
    assert answer.calls == reference.calls == []
    assert answer.model == reference.model == up.model
    assert answer.finish == END_WORDS[dialect] and reference.finish == "stop"
    assert answer.usage == reference.usage
    cached = up.behavior.get("cached_tokens") or up.behavior.get("cache_read") or up.behavior.get("precached_tokens") or 0
    assert answer.usage[2] == cached  # the upstream's cache reads came through as such
    sell = assert_records_agree(gw, up, answer.usage, count=2, stream=stream)
    assert answer.cost == reference.cost == sell


# --------------------------------------------------------------------------- tools


def tools_chat(gateway, model: str) -> tuple[Answer, Answer]:
    messages = [{"role": "user", "content": QUESTION}]
    first = ask_chat(gateway, model, messages, tools=[CHAT_TOOL], tool_choice="required")
    (call_id, name, _), = first.calls
    messages += [{"role": "assistant", "content": first.text or None, "tool_calls": [
                     {"id": call_id, "type": "function", "function": {"name": name, "arguments": first.raw_arguments[0]}}]},
                 {"role": "tool", "tool_call_id": call_id, "content": TOOL_RESULT}]
    return first, ask_chat(gateway, model, messages, tools=[CHAT_TOOL])


def tools_anthropic(gateway, model: str) -> tuple[Answer, Answer]:
    messages: list[dict] = [{"role": "user", "content": QUESTION}]
    raw = claude(gateway).messages.with_raw_response.create(model=model, max_tokens=200, messages=messages, tools=[ANTHROPIC_TOOL],
                                                            tool_choice={"type": "any"})
    message = raw.parse()
    first = anthropic_answer(message, micro(raw.headers["x-jetstream-cost"]))
    (call_id, _, _), = first.calls
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": TOOL_RESULT}]}]
    raw = claude(gateway).messages.with_raw_response.create(model=model, max_tokens=200, messages=messages, tools=[ANTHROPIC_TOOL])
    return first, anthropic_answer(raw.parse(), micro(raw.headers["x-jetstream-cost"]))


def tools_responses(gateway, model: str) -> tuple[Answer, Answer]:
    items: list[Any] = [{"role": "user", "content": QUESTION}]
    client = gateway.client()
    raw = client.responses.with_raw_response.create(model=model, input=items, tools=[RESPONSES_TOOL], tool_choice="required",
                                                    store=False)
    response = raw.parse()
    first = responses_answer(response, micro(raw.headers["x-jetstream-cost"]))
    (call_id, _, _), = first.calls
    items += [item.model_dump(exclude_none=True) for item in response.output]
    items.append({"type": "function_call_output", "call_id": call_id, "output": TOOL_RESULT})
    raw = client.responses.with_raw_response.create(model=model, input=items, tools=[RESPONSES_TOOL], store=False)
    return first, responses_answer(raw.parse(), micro(raw.headers["x-jetstream-cost"]))


TOOL_ROUND_TRIPS = {"chat": tools_chat, "anthropic": tools_anthropic, "responses": tools_responses}
TOOL_END_WORDS = {"chat": "tool_calls", "anthropic": "tool_use", "responses": "completed"}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_a_tool_round_trip_in_every_dialect(gw, upstreams, adapter, dialect):
    up = ADAPTERS[adapter]
    upstreams[adapter].behavior(**up.behavior, **up.tool_behavior)
    ref_call, ref_final = tools_chat(gw, up.model)
    call, final = TOOL_ROUND_TRIPS[dialect](gw, up.model)

    [(_, name, arguments)] = call.calls
    assert (name, arguments) == (TOOL_NAME, ref_call.calls[0][2]) and arguments.get("city")
    assert call.text == ref_call.text
    assert (call.finish, ref_call.finish) == (TOOL_END_WORDS[dialect], "tool_calls")
    assert final.calls == [] and final.text and final.text == ref_final.text
    assert (final.finish, ref_final.finish) == (END_WORDS[dialect], "stop")
    assert call.model == final.model == ref_call.model == ref_final.model == up.model
    assert (call.usage, final.usage) == (ref_call.usage, ref_final.usage)
    gw.drain(expect=4)
    records = sorted((r.input_tokens, r.output_tokens, r.cached_tokens, r.sell_cost, r.buy_cost) for r in UsageRecord.objects.all())
    expected = sorted((*u, up.cost(*u), up.cost(*u, coefficient="1.10")) for u in (call.usage, final.usage) for _ in "ab")
    assert records == expected and all(r[3] > 0 for r in records)
    assert (call.cost, final.cost) == (ref_call.cost, ref_final.cost) == (up.cost(*call.usage), up.cost(*final.usage))


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_a_streamed_tool_call_in_every_dialect(gw, upstreams, adapter, dialect):
    up = ADAPTERS[adapter]
    upstreams[adapter].behavior(**up.behavior, **up.tool_behavior)
    reference = ask(dialect="chat", gateway=gw, model=up.model, stream=True, tools=True)
    answer = ask(dialect, gw, up.model, stream=True, tools=True)

    [(call_id, name, arguments)] = answer.calls
    assert call_id and (name, arguments) == (TOOL_NAME, reference.calls[0][2]) and arguments.get("city")
    assert answer.text == reference.text
    assert (answer.finish, reference.finish) == (TOOL_END_WORDS[dialect], "tool_calls")
    assert answer.model == reference.model == up.model
    assert answer.usage == reference.usage
    sell = assert_records_agree(gw, up, answer.usage, count=2, stream=True)
    assert answer.cost == reference.cost == sell


# --------------------------------------------------------------------------- length and reasoning

# What makes each fake stop at the length limit (the others cut at max_tokens themselves; FakeGemini
# would write past maxOutputTokens, and the company is never charged past its reservation).
CUT = {"gemini": {"finish_reason": "MAX_TOKENS", "reply": "Rain in Oslo"}, "gigachat": {"finish_reason": "length"}}
LENGTH_WORDS = {"chat": "length", "anthropic": "max_tokens", "responses": "incomplete/max_output_tokens"}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_a_cut_answer_ends_with_the_dialect_s_length_word(gw, upstreams, adapter, dialect):
    up = ADAPTERS[adapter]
    # Without the cache behaviour: FakeAnthropic's cache tokens are on top of the prompt it was sent,
    # and 3 output tokens leave no room for them in the reservation (which the company never exceeds).
    upstreams[adapter].behavior(**CUT.get(adapter, {}))
    for done, stream in enumerate((False, True), start=1):  # both modes in one test: one gateway start
        reference = ask("chat", gw, up.model, stream=stream, limit=3)
        answer = ask(dialect, gw, up.model, stream=stream, limit=3)
        assert (reference.finish, answer.finish) == ("length", LENGTH_WORDS[dialect]), stream
        assert answer.text == reference.text and answer.text
        assert answer.usage == reference.usage
        sell = assert_records_agree(gw, up, answer.usage, count=2, stream=stream, drained=2 * done)
        assert answer.cost == reference.cost == sell


# Each fake's way of reporting reasoning ("thinking") tokens, and how many it reports.
THINKING = {"openai": ({"variant": "deepseek", "reasoning_tokens": 7}, 7), "anthropic": ({"thinking_tokens": 9}, None),
            "gemini": ({"thoughts": "Let me think about the weather first"}, 7),
            "gigachat": ({"reasoning": "Пользователь спрашивает о погоде"}, None), "yandexgpt": ({"reasoning_tokens": 5}, 5)}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_reasoning_tokens_are_output_in_every_dialect(gw, upstreams, adapter, dialect):
    up = ADAPTERS[adapter]
    behavior, shown = THINKING[adapter]
    upstreams[adapter].behavior(**up.behavior, **behavior)
    for done, stream in enumerate((False, True), start=1):  # both modes in one test: one gateway start
        reference = ask("chat", gw, up.model, stream=stream)
        answer = ask(dialect, gw, up.model, stream=stream)
        assert answer.text == reference.text and answer.usage == reference.usage, stream
        if shown is not None:  # the upstream reports them apart: shown in chat and Responses, inside the output everywhere
            assert reference.reasoning == shown and answer.usage[1] > shown
        if dialect == "responses":
            assert answer.reasoning == reference.reasoning
        sell = assert_records_agree(gw, up, answer.usage, count=2, stream=stream, drained=2 * done)
        assert answer.cost == reference.cost == sell


# --------------------------------------------------------------------------- an upstream's refusal

# A careless upstream's 400 in its own shape, echoing the key it was shown and the URL it was called at.
LEAKY_400 = {
    "openai": lambda: openai_upstream.leaky_error(code="invalid_value"),
    "anthropic": lambda: anthropic_upstream.leaky_error(),
    "gemini": lambda: gemini_upstream.leaky_error(400, "INVALID_ARGUMENT"),
    "gigachat": lambda: leaky_gigachat_error(400),
    "yandexgpt": lambda: yandex_upstream.grpc_error(400, LEAKY_TEXT),
}
SECRETS = {"openai": openai_upstream.DEFAULT_KEY, **KEYS}


def refusal(dialect: str, gateway, model: str) -> tuple[int, str, dict]:
    """(HTTP status, error message, body) of the dialect's error answer to the matrix question."""
    errors: tuple[type[Exception], ...] = (openai.APIStatusError, anthropic.APIStatusError)
    with pytest.raises(errors) as refused:
        ask(dialect, gateway, model, stream=False)
    body = refused.value.response.json()
    if dialect == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    else:
        assert set(body["error"]) >= {"message", "type", "code"}
    return refused.value.status_code, body["error"]["message"], body


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_an_upstream_refusal_is_the_dialect_s_error_scrubbed_and_free(gw, upstreams, adapter, dialect):
    up = ADAPTERS[adapter]
    fake = upstreams[adapter]
    fake.behavior(status=400, error_body=LEAKY_400[adapter]())
    status, message, body = refusal(dialect, gw, up.model)
    ref_status, ref_message, _ = refusal("chat", gw, up.model)
    assert status == ref_status == 400 and message == ref_message
    assert "failed at" in message  # the upstream's words reach the client…
    text = json.dumps(body, ensure_ascii=False)
    leaked = [s for s in (SECRETS[adapter], up.base_url(fake), urlsplit(up.base_url(fake)).netloc, INTERNAL_HOST, INTERNAL_IP, DSN) if s in text]
    assert leaked == []  # …without the key, the URL, internal hosts or a DSN
    gw.drain(expect=2)
    assert {(r.status, r.http_status, r.sell_cost, r.buy_cost) for r in UsageRecord.objects.all()} == {("upstream_error", 400, 0, 0)}


# --------------------------------------------------------------------------- a failure mid-stream

# After how many stream events each fake breaks off with an error (some text has gone out by then).
BREAK = {"openai": 3, "anthropic": 4, "gemini": 1, "gigachat": 1, "yandexgpt": 1}


def broken_stream(dialect: str, gateway, model: str) -> tuple[str, str]:
    """(the text the client received, how the dialect told it the stream failed)."""
    pieces: list[str] = []
    if dialect == "chat":
        with pytest.raises(openai.APIError) as failed:
            for chunk in gateway.client().chat.completions.create(model=model, max_tokens=200, messages=CHAT_QUESTION, stream=True):
                pieces += [chunk.choices[0].delta.content or ""] if chunk.choices else []
        return "".join(pieces), str(failed.value.code or failed.value.type)
    if dialect == "anthropic":
        with pytest.raises(anthropic.APIStatusError) as caught:
            with claude(gateway).messages.stream(model=model, max_tokens=200, system=SYSTEM,
                                                 messages=[{"role": "user", "content": QUESTION}]) as stream:
                for event in stream:
                    if event.type == "content_block_delta" and event.delta.type == "text_delta":
                        pieces.append(event.delta.text)
        body = caught.value.body
        assert isinstance(body, dict) and body["type"] == "error"
        return "".join(pieces), body["error"]["type"]
    events = list(gateway.client().responses.create(model=model, instructions=SYSTEM, input=QUESTION, stream=True))
    assert [e.type for e in events][-2:] == ["error", "response.failed"] and events[-1].response.status == "failed"
    return "".join(e.delta for e in events if e.type == "response.output_text.delta"), events[-2].code


FAILED_WORDS = {"chat": "upstream_error", "anthropic": "api_error", "responses": "upstream_error"}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_a_stream_broken_upstream_ends_in_the_dialect_s_error_and_bills_what_came(gw, upstreams, adapter, dialect):
    up = ADAPTERS[adapter]
    upstreams[adapter].behavior(**up.behavior, stream_error_after=BREAK[adapter])
    ref_text, ref_failure = broken_stream("chat", gw, up.model)
    text, failure = broken_stream(dialect, gw, up.model)
    assert (ref_failure, failure) == (FAILED_WORDS["chat"], FAILED_WORDS[dialect])
    assert text and text == ref_text  # what reached the client before the failure, the same in every dialect
    gw.drain(expect=2)
    records = {(r.status, r.stream, r.input_tokens, r.output_tokens, r.cached_tokens, r.sell_cost, r.buy_cost)
               for r in UsageRecord.objects.all()}
    [(status, stream, _, output, _, sell, _)] = records  # both records alike
    assert (status, stream) == ("upstream_error", True) and output > 0 and sell > 0


# --------------------------------------------------------------------------- images

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
TEXT_ONLY = {"gigachat", "yandexgpt"}  # adapters that refuse images (a 400 before any upstream call)


def with_image(dialect: str, gateway, model: str) -> Answer:
    """The question with a 1×1 PNG as base64, in the dialect's own content parts."""
    if dialect == "chat":
        return ask_chat(gateway, model, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": [
            {"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}])
    if dialect == "anthropic":
        return ask_anthropic(gateway, model, [{"role": "user", "content": [
            {"type": "text", "text": QUESTION}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}])
    return ask_responses(gateway, model, [{"role": "user", "content": [
        {"type": "input_text", "text": QUESTION}, {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"}]}])


# Where the image is in each upstream's request, and what it should be there.
IMAGE_SENT = {"openai": lambda body: body["messages"][-1]["content"][1],
              "anthropic": lambda body: body["messages"][-1]["content"][1],
              "gemini": lambda body: body["contents"][-1]["parts"][1]}
IMAGE_SEEN = {"openai": {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
              "anthropic": {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
              "gemini": {"inlineData": {"mimeType": "image/png", "data": PNG}}}


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_an_image_reaches_the_upstream_from_every_dialect_or_is_refused_alike(gw, upstreams, adapter):
    up = ADAPTERS[adapter]
    fake = upstreams[adapter]
    if adapter in TEXT_ONLY:
        refusals = []
        for dialect in ("chat", *DIALECTS):
            with pytest.raises((openai.BadRequestError, anthropic.BadRequestError)) as refused:
                with_image(dialect, gw, up.model)
            refusals.append(refused.value.response.json()["error"]["message"])
        assert len(set(refusals)) == 1 and "text" in refusals[0]
        assert fake.requests == [] and UsageRecord.objects.filter(sell_cost__gt=0).count() == 0
        return
    answers, sent = [], []
    for dialect in ("chat", *DIALECTS):
        answers.append(with_image(dialect, gw, up.model))
        sent.append(IMAGE_SENT[adapter](fake.last_request.body))
    assert len({(a.text, a.usage, a.cost) for a in answers}) == 1 and answers[0].text
    assert sent == [IMAGE_SEEN[adapter]] * 3  # the picture itself reached the upstream from every dialect
    gw.drain(expect=3)
    assert len({(r.input_tokens, r.output_tokens, r.sell_cost) for r in UsageRecord.objects.all()}) == 1
