"""FakeAnthropic: a real HTTP server on loopback that speaks Anthropic's Messages API, for tests.

aiohttp in a background thread on 127.0.0.1 with an ephemeral port, like ``FakeOpenAI``. It answers
``POST /v1/messages`` (non-streamed and the named-event SSE stream) and checks what the real API
checks (https://docs.anthropic.com/en/api/messages, /en/api/errors): ``x-api-key`` (or
``Authorization: Bearer``, which SDKs for API version 2026-10-21 send) against ``expected_keys``
(401 ``authentication_error``), the ``anthropic-version`` header, ``model``,
``max_tokens`` and ``messages`` present (and, for ``2026-10-21``, no ``temperature``/``top_p``/``top_k``),
roles alternating, no empty text blocks, every ``tool_use``
answered by a ``tool_result`` at the start of the next user turn, image sources well formed.

What it answers, deterministically:
- ``You said: <the last user turn's text>`` (cut at the first stop sequence → ``stop_sequence``;
  at ``max_tokens`` words → ``max_tokens``), plus `` [N image(s)]`` when the last turn held images;
- when ``tools`` are offered (and ``tool_choice`` is not ``none``) and the last user turn is not a
  tool result: ``Let me check.`` and a ``tool_use`` of the named tool (or the first) with
  ``Behavior.tool_input`` (default: ``"Oslo"`` for every required property) → ``tool_use``;
- after a tool result: ``The tool said: <its text>``.
Usage: ``input_tokens`` = words in the system prompt and messages' text (+ ``cache_read`` /
``cache_creation`` reported apart, as Anthropic does: they are NOT in ``input_tokens``),
``output_tokens`` = words generated (+ ``thinking_tokens``, with a thinking block).

Failures are set per test (``fake.behavior(...)``), as with ``FakeOpenAI``; "{key}" and "{url}" in
error bodies and headers are replaced by the presented key and the request URL (a careless upstream).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import threading
import time
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.fakes.openai_upstream import LEAKY_TEXT, RecordedRequest

DEFAULT_KEY = "sk-ant-api03-fake-0123456789abcdef0123456789"
SECOND_KEY = "sk-ant-api03-fake-second-key-0123456789ab"
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                504: "timeout_error", 529: "overloaded_error"}


def anthropic_error(kind: str, message: str) -> dict:
    """An error body in Anthropic's shape."""
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CFakeRequest"}


def leaky_error(kind: str = "invalid_request_error") -> dict:
    """An Anthropic error whose message echoes the key, the URL, hosts, addresses and a DSN."""
    return anthropic_error(kind, LEAKY_TEXT)


def _default_error(status: int) -> dict:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return anthropic_error(kind, {529: "Overloaded", 429: "Number of request tokens has exceeded your per-minute rate limit"}
                           .get(status, f"HTTP {status}."))


class Invalid(Exception):
    """A request the real API refuses with 400 ``invalid_request_error``."""


@dataclasses.dataclass(frozen=True)
class Behavior:
    """What the fake does with the next requests. ``FakeAnthropic.behavior(**changes)`` replaces fields."""

    status: int | None = None  # answer every request (after auth) with this status (200 too, given an error_body)…
    error_body: Any = None  # …and this body (a dict as JSON, a str as is); None → Anthropic's error for the status
    error_headers: dict[str, str] = dataclasses.field(default_factory=dict)  # e.g. {"retry-after": "7"}
    fail_times: int | None = None  # only the next N requests get ``status``; None → all of them
    response_body: Any = None  # a 200 answer with exactly this JSON body
    response_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    cache_read: int = 0  # usage.cache_read_input_tokens
    cache_creation: int = 0  # usage.cache_creation_input_tokens
    thinking_tokens: int = 0  # a thinking block first; its tokens are part of output_tokens
    tool_input: dict | None = None  # the input of a tool_use answer
    omit_usage: bool = False  # a message_delta without usage (not what Anthropic does: for decoder tests)
    full_delta_usage: bool = False  # message_delta's usage repeats the input side too (newer API versions do)
    chunk_delay_ms: int = 0  # between stream events
    drop_after_events: int | None = None  # close the connection after K stream events (no message_stop)
    stream_error_after: int | None = None  # after K stream events, an ``event: error`` and the end
    stream_error_body: Any = None  # …this one; None → overloaded_error


@dataclasses.dataclass
class Answer:
    """What the fake model generates for one request."""

    blocks: list[dict]  # the message's content blocks
    stop_reason: str
    stop_sequence: str | None
    usage: dict


class FakeAnthropic:
    """A real Anthropic-compatible HTTP server on 127.0.0.1:<ephemeral port>, in a background thread."""

    def __init__(self, *, expected_keys: Iterable[str] = (DEFAULT_KEY,)) -> None:
        self.expected_keys = set(expected_keys)
        self.port: int | None = None
        self._behavior = Behavior()
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeAnthropic is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def api_key(self) -> str:
        return next(iter(sorted(self.expected_keys)))

    def start(self) -> FakeAnthropic:
        if self._thread is not None:
            return self
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fake-anthropic", daemon=True)
        self._thread.start()
        if not ready.wait(10) or self.port is None:
            raise RuntimeError("FakeAnthropic did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        self.port = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        finally:
            ready.set()
        try:
            loop.run_forever()
        finally:
            assert self._runner is not None
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    # ----------------------------------------------------------------- test controls

    def behavior(self, **changes: Any) -> Behavior:
        """Change how the next requests are answered (see ``Behavior``)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(Behavior)}
        if unknown:
            raise TypeError(f"unknown behaviour: {', '.join(sorted(unknown))}")
        with self._lock:
            self._behavior = dataclasses.replace(self._behavior, **changes)
            return self._behavior

    def reset(self) -> None:
        """Default behaviour and no recorded requests."""
        with self._lock:
            self._behavior = Behavior()
            self._requests.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            if not self._requests:
                raise AssertionError("FakeAnthropic has received no request")
            return self._requests[-1]

    # ----------------------------------------------------------------- serving

    def _take_behavior(self) -> tuple[Behavior, bool]:
        with self._lock:
            behavior = self._behavior
            fails = behavior.status is not None and (behavior.status >= 400 or behavior.error_body is not None)
            if fails and behavior.fail_times is not None:
                if behavior.fail_times <= 0:
                    fails = False
                else:
                    self._behavior = dataclasses.replace(behavior, fail_times=behavior.fail_times - 1)
            return behavior, fails

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        record = RecordedRequest(method=request.method, path=request.path, headers=CIMultiDict(request.headers), body=body,
                                 raw_body=raw, received_at=time.time())
        with self._lock:
            self._requests.append(record)
        try:
            return await self._answer(request, record)
        finally:
            record.finished.set()

    def _json(self, record: RecordedRequest, status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
        record.status = status
        record.completed = True
        if isinstance(payload, str):
            return web.Response(status=status, text=payload, content_type="text/plain", headers=headers)
        return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers)

    @staticmethod
    def _echo(payload: Any, request: web.Request) -> Any:
        if isinstance(payload, str):
            key = request.headers.get("x-api-key") or request.headers.get("Authorization", "").removeprefix("Bearer ")
            return payload.replace("{key}", key).replace("{url}", str(request.url))
        if isinstance(payload, dict):
            return {FakeAnthropic._echo(k, request): FakeAnthropic._echo(v, request) for k, v in payload.items()}
        if isinstance(payload, list):
            return [FakeAnthropic._echo(v, request) for v in payload]
        return payload

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        # x-api-key, or (what the SDKs from API version 2026-10-21 send) Authorization: Bearer; x-api-key wins.
        key = request.headers.get("x-api-key") or request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not key:
            return self._json(record, 401, anthropic_error("authentication_error", "x-api-key header is required"))
        if key not in self.expected_keys:
            return self._json(record, 401, anthropic_error("authentication_error", "invalid x-api-key"))
        if not request.headers.get("anthropic-version"):
            return self._json(record, 400, anthropic_error("invalid_request_error", "anthropic-version: header is required"))
        behavior, fails = self._take_behavior()
        if fails:
            payload = behavior.error_body if behavior.error_body is not None else _default_error(behavior.status or 500)
            return self._json(record, behavior.status or 500, self._echo(payload, request),
                              {**behavior.response_headers, **self._echo(dict(behavior.error_headers), request)})
        if (request.method, request.path.rstrip("/")) != ("POST", "/v1/messages"):
            return self._json(record, 404, anthropic_error("not_found_error", f"Not found: {request.method} {request.path}"))
        body = record.body
        try:
            if request.headers["anthropic-version"] >= "2026-10-21":
                _check_2026(body)
            answer = _generate(body, behavior)
        except Invalid as exc:
            return self._json(record, 400, anthropic_error("invalid_request_error", str(exc)))
        if body.get("stream") is True:
            return await self._stream(request, record, behavior, body, answer)
        if behavior.response_body is not None:
            return self._json(record, 200, self._echo(behavior.response_body, request), behavior.response_headers)
        return self._json(record, 200, _message(body, answer, full=True), behavior.response_headers)

    async def _stream(self, request: web.Request, record: RecordedRequest, behavior: Behavior, body: dict,
                      answer: Answer) -> web.StreamResponse:
        record.stream = True
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream; charset=utf-8",
                                                           "Cache-Control": "no-cache", **behavior.response_headers})
        record.status = 200
        await response.prepare(request)
        for name, data in _events(body, answer, behavior):
            if behavior.stream_error_after is not None and record.events_sent >= behavior.stream_error_after:
                error = behavior.stream_error_body if behavior.stream_error_body is not None else _default_error(529)
                error = self._echo(error, request)
                await response.write(b"event: error\ndata: " + (error.encode() if isinstance(error, str) else orjson.dumps(error))
                                     + b"\n\n")
                break
            if behavior.drop_after_events is not None and record.events_sent >= behavior.drop_after_events:
                record.dropped = True
                if request.transport is not None:
                    request.transport.close()
                raise asyncio.CancelledError
            if behavior.chunk_delay_ms:
                await asyncio.sleep(behavior.chunk_delay_ms / 1000)
            try:
                await response.write(f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n")
            except ConnectionResetError:
                record.client_disconnected = True
                return response
            record.events_sent += 1
        await response.write_eof()
        record.completed = True
        return response


# --------------------------------------------------------------------------- the fake model


def _check_2026(body: Any) -> None:
    """What API version 2026-10-21 refuses on top (https://platform.claude.com/docs/en/api/migration-2026-10-21)."""
    for name in ("temperature", "top_p", "top_k"):
        if isinstance(body, dict) and name in body:
            raise Invalid(f"{name}: Extra inputs are not permitted")


def _words(text: str) -> int:
    return len(text.split())


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if block.get("type") == "text":
            parts.append(block["text"])
        elif block.get("type") == "tool_result":
            parts.append(_text_of(block.get("content")))
    return " ".join(parts)


def _check_block(block: Any, place: str) -> None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text" and not (isinstance(block.get("text"), str) and block["text"]):
        raise Invalid(f"{place}: text content blocks must be non-empty")
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            if source.get("media_type") not in IMAGE_TYPES:
                raise Invalid(f"{place}.source.media_type: Input should be one of {', '.join(IMAGE_TYPES)}")
            try:
                base64.b64decode(source.get("data") or "", validate=True)
            except (binascii.Error, ValueError):
                raise Invalid(f"{place}.source.data: invalid base64 data") from None
        elif source.get("type") != "url" or not source.get("url"):
            raise Invalid(f"{place}.source: expected a base64 or url source")
    elif kind not in ("text", "image", "document", "tool_use", "tool_result", "thinking"):
        raise Invalid(f"{place}.type: unknown content block type {kind!r}")


def _check_tools(previous: dict | None, turn: dict, index: int) -> None:
    """Every tool_use of the assistant turn before answered by tool_results that open this turn."""
    blocks = turn["content"] if isinstance(turn["content"], list) else []
    results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
    if any(b.get("type") == "tool_result" for b in blocks[len(results):]):
        raise Invalid(f"messages.{index}: tool_result blocks must come first in the user message content")
    uses = [b["id"] for b in previous["content"] if isinstance(b, dict) and b.get("type") == "tool_use"] \
        if previous is not None and isinstance(previous["content"], list) else []
    if set(uses) != set(results):
        raise Invalid(f"messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately after, "
                      "or tool_result blocks without a matching tool_use")


def _check(body: Any) -> list[dict]:
    if not isinstance(body, dict):
        raise Invalid("The request body is not valid JSON.")
    for field in ("model", "max_tokens", "messages"):
        if field not in body:
            raise Invalid(f"{field}: Field required")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        raise Invalid("max_tokens: Input should be a valid integer greater than or equal to 1")
    messages = body["messages"]
    if not messages:
        raise Invalid("messages: at least one message is required")
    for index, turn in enumerate(messages):
        if turn.get("role") not in ("user", "assistant"):
            raise Invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
        if index and messages[index - 1]["role"] == turn["role"]:
            raise Invalid("messages: roles must alternate between \"user\" and \"assistant\"")
        if not turn.get("content"):
            raise Invalid(f"messages.{index}.content: Field required")
        for position, block in enumerate(turn["content"] if isinstance(turn["content"], list) else []):
            _check_block(block, f"messages.{index}.content.{position}")
        if turn["role"] == "user":
            _check_tools(messages[index - 1] if index else None, turn, index)
    return messages


def _tool_input(tool: dict, behavior: Behavior) -> dict:
    if behavior.tool_input is not None:
        return behavior.tool_input
    return {name: "Oslo" for name in (tool.get("input_schema") or {}).get("required") or []}


def _pick_tool(body: dict) -> dict | None:
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    if not tools or choice.get("type") == "none":
        return None
    if choice.get("type") == "tool":
        return next((tool for tool in tools if tool["name"] == choice.get("name")), None)
    return tools[0]


def _reply(body: dict, last: dict) -> tuple[str, str, str | None]:
    """(text, stop reason, stop sequence) of a plain answer to ``last``."""
    content = last["content"]
    results = [b for b in content if b.get("type") == "tool_result"] if isinstance(content, list) else []
    images = [b for b in content if b.get("type") == "image"] if isinstance(content, list) else []
    text = f"The tool said: {_text_of(results[0].get('content'))}" if results else f"You said: {_text_of(content)}"
    if images:
        text += f" [{len(images)} image(s)]"
    for stop in body.get("stop_sequences") or []:
        if stop in text:
            return text[:text.index(stop)], "stop_sequence", stop
    words = text.split(" ")
    if len(words) > body["max_tokens"]:
        return " ".join(words[:body["max_tokens"]]), "max_tokens", None
    return text, "end_turn", None


def _generate(body: Any, behavior: Behavior) -> Answer:
    messages = _check(body)
    last = messages[-1]
    tool = _pick_tool(body)
    is_result = isinstance(last["content"], list) and any(b.get("type") == "tool_result" for b in last["content"])
    blocks: list[dict] = []
    if behavior.thinking_tokens:
        blocks.append({"type": "thinking", "thinking": "Considering the question.", "signature": "c2lnbmF0dXJl"})
    if tool is not None and not is_result:
        blocks += [{"type": "text", "text": "Let me check."},
                   {"type": "tool_use", "id": "toolu_01FakeCall", "name": tool["name"], "input": _tool_input(tool, behavior)}]
        stop_reason, stop_sequence = "tool_use", None
        output = 3 + _words(orjson.dumps(blocks[-1]["input"]).decode())
    else:
        text, stop_reason, stop_sequence = _reply(body, last)
        blocks.append({"type": "text", "text": text})
        output = _words(text)
    system = body.get("system") or ""
    prompt = _words(_text_of(system)) + sum(_words(_text_of(m["content"])) for m in messages)
    usage = {"input_tokens": prompt, "cache_creation_input_tokens": behavior.cache_creation,
             "cache_read_input_tokens": behavior.cache_read, "output_tokens": output + behavior.thinking_tokens,
             "service_tier": "standard"}
    if behavior.thinking_tokens:
        usage["output_tokens_details"] = {"thinking_tokens": behavior.thinking_tokens}
    return Answer(blocks, stop_reason, stop_sequence, usage)


def _message(body: dict, answer: Answer, *, full: bool) -> dict:
    return {"id": "msg_01FakeMessage", "type": "message", "role": "assistant", "model": body["model"],
            "content": answer.blocks if full else [], "stop_reason": answer.stop_reason if full else None,
            "stop_sequence": answer.stop_sequence if full else None,
            "usage": answer.usage if full else {**answer.usage, "output_tokens": 1}}


def _block_events(index: int, block: dict) -> list[tuple[str, dict]]:
    if block["type"] == "text":
        start: dict = {"type": "text", "text": ""}
        words = block["text"].split(" ")
        pieces = [" ".join(words[i:i + 2]) + (" " if i + 2 < len(words) else "") for i in range(0, len(words), 2)]
        deltas = [{"type": "text_delta", "text": piece} for piece in pieces]
    elif block["type"] == "tool_use":
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        arguments = orjson.dumps(block["input"]).decode()
        middle = len(arguments) // 2
        deltas = [{"type": "input_json_delta", "partial_json": part} for part in ("", arguments[:middle], arguments[middle:])]
    else:
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": block["thinking"]},
                  {"type": "signature_delta", "signature": block["signature"]}]
    return [("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}),
            *[("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}) for delta in deltas],
            ("content_block_stop", {"type": "content_block_stop", "index": index})]


def _events(body: dict, answer: Answer, behavior: Behavior) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = [("message_start", {"type": "message_start", "message": _message(body, answer, full=False)})]
    for index, block in enumerate(answer.blocks):
        events += _block_events(index, block)
        if index == 0:
            events.append(("ping", {"type": "ping"}))
    delta: dict = {"type": "message_delta", "delta": {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence}}
    if not behavior.omit_usage:
        usage = {"output_tokens": answer.usage["output_tokens"]}
        if behavior.full_delta_usage:
            usage = {**{k: v for k, v in answer.usage.items() if k.endswith("tokens")}, **usage}
        delta["usage"] = usage
    return [*events, ("message_delta", delta), ("message_stop", {"type": "message_stop"})]


# --------------------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="session")
def fake_anthropic_server():
    """One FakeAnthropic for the whole session (import into a conftest or test module to use)."""
    with FakeAnthropic(expected_keys=(DEFAULT_KEY, SECOND_KEY)) as fake:
        yield fake


@pytest.fixture
def fake_anthropic(fake_anthropic_server: FakeAnthropic):
    """The session's FakeAnthropic with default behaviour and no recorded requests, reset after the test."""
    fake_anthropic_server.reset()
    yield fake_anthropic_server
    fake_anthropic_server.reset()

