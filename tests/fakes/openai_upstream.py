"""FakeOpenAI: a real HTTP server on loopback that speaks OpenAI's wire format, for tests.

It runs aiohttp in a background thread on 127.0.0.1 with an ephemeral port, answers
POST /v1/chat/completions, /v1/completions, /v1/embeddings and GET /v1/models with content from the
mock provider's generator (one piece of logic for both), checks ``Authorization: Bearer <key>``
against ``expected_keys`` and records every request. Failure behaviours are set per test::

    with FakeOpenAI() as fake:
        fake.behavior(status=429, error_body={"error": {...}})
        fake.behavior(drop_after_chunks=3)
        fake.behavior(status=500, error_body=LEAKY_ERROR)  # echoes its key and URL: "{key}", "{url}"
        fake.behavior(stream_error_after=2, stream_error_body=LEAKY_ERROR)
        ...
        fake.reset()  # default behaviour, no recorded requests, hung requests released

or with the ``fake_openai`` fixture (one server per session, reset around every test).

The OpenAI wire family's members and their faults are behaviours too::

    fake.behavior(variant="azure")     # api-key header, /openai/deployments/{d}/…?api-version= (see root_url)
    fake.behavior(variant="deepseek")  # reasoning_content, cache hit/miss usage, ": keep-alive" comments
    fake.behavior(variant="mistral")   # 422 for stream_options / max_completion_tokens; usage on the last content chunk
    fake.behavior(json_for_stream=True)       # a stream request answered with one JSON completion
    fake.behavior(sse_for_non_stream=True)    # a non-stream request answered with an SSE stream
    fake.behavior(usage_override={"prompt_tokens": 0, "completion_tokens": 0})
    fake.behavior(finish_reason="tool_use")   # every finish_reason sent is this word
    fake.behavior(truncate_after_chunks=3)    # a clean close after K events: no finish_reason, no [DONE]
    fake.behavior(empty_stream=True)          # "data: [DONE]" and nothing else
    fake.behavior(done_without_space=True)    # "data:[DONE]"
    fake.behavior(echo=True, chunk_chars=3)   # answers repeat the last user message, streamed 3 characters a piece
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from apps.providers.adapters.mock import generator

DEFAULT_KEY = "sk-fake-upstream-0123456789abcdef0123"
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-3.5-turbo-instruct", "text-embedding-3-small")
AZURE_AUTH_ERROR = {"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint. "
                              "Make sure to provide a valid key for an active subscription and use a correct regional API "
                              "endpoint for your resource."}}
AZURE_NOT_FOUND = {"error": {"code": "404", "message": "Resource not found"}}
REASONING_TEXT = "The user wants an answer; think briefly first."

_DEFAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("invalid_request_error", "Invalid request.", None),
    401: ("invalid_request_error", "Invalid authentication.", "invalid_api_key"),
    403: ("invalid_request_error", "You are not allowed to sample from this model.", None),
    404: ("invalid_request_error", "The model does not exist or you do not have access to it.", "model_not_found"),
    409: ("invalid_request_error", "The request conflicted with another request.", None),
    422: ("invalid_request_error", "Unprocessable entity.", None),
    429: ("requests", "Rate limit reached for requests. Please try again in 1s.", "rate_limit_exceeded"),
    500: ("server_error", "The server had an error while processing your request. Sorry about that!", None),
    502: ("server_error", "Bad gateway.", None),
    503: ("server_error", "The engine is currently overloaded, please try again later.", None),
    504: ("server_error", "Gateway timeout.", None),
}


# What a careless upstream tells the world about itself. "{key}" and "{url}" in an error body,
# stream error or header are replaced by the key the request presented and the URL it was sent to.
INTERNAL_HOST = "pg-7.prod.internal"
BARE_HOST = "pgmain"
INTERNAL_IP = "10.12.0.5"
INTERNAL_IPV6 = "fd00::17"
DSN = "postgres://jet:hunter2@pg-main.svc:5432/billing"
LEAKY_TEXT = (f"key {{key}} failed at {{url}} via host {BARE_HOST} and {INTERNAL_HOST} ({INTERNAL_IP}, [{INTERNAL_IPV6}]:8443); "
              f"dsn {DSN}; retry with Authorization: Bearer {{key}}")


def leaky_error(*, code: object = LEAKY_TEXT) -> dict:
    """An OpenAI-shaped error whose every field echoes the key, the URL, hosts, addresses and a DSN."""
    return {"error": {"message": LEAKY_TEXT, "type": LEAKY_TEXT, "param": LEAKY_TEXT, "code": code}}


LEAKY_ERROR = leaky_error()


def openai_error(message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:  # noqa: A002
    """An error body in OpenAI's shape."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _default_error(status: int) -> dict:
    kind, message, code = _DEFAULT_ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", f"HTTP {status}.", None))
    return openai_error(message, type=kind, code=code)


def _masked(key: str) -> str:
    # OpenAI echoes a wrong key with its middle starred out.
    return key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 8 else "*" * len(key)


@dataclasses.dataclass(frozen=True)
class Behavior:
    """What the fake does with the next requests. ``FakeOpenAI.behavior(**changes)`` replaces fields."""

    status: int | None = None  # answer every request (after auth) with this HTTP status (200 too, given an error_body)…
    error_body: Any = None  # …and this body: a dict is sent as JSON, a str as is; None → OpenAI's error for the status
    error_headers: dict[str, str] = dataclasses.field(default_factory=dict)  # e.g. {"Retry-After": "1"}
    fail_times: int | None = None  # only the next N requests get ``status``; None → all of them
    omit_usage: bool = False  # no usage in JSON answers and no usage chunk in streams
    cached_tokens: int = 0  # reported as usage.prompt_tokens_details.cached_tokens
    latency_ms: int = 0  # before the response starts (status line and headers included)
    chunk_delay_ms: int = 0  # between stream events
    chunks: int = generator.DEFAULT_CHUNKS  # content pieces per stream (0 = one per word)
    words: int | None = None  # answer length in words (default: derived from the prompt)
    drop_after_chunks: int | None = None  # close the connection abruptly after K stream events (no [DONE])
    hang: bool = False  # accept the request and never answer until reset() or stop()
    first_event_delay_ms: int = 0  # a stream's headers at once, then this much silence before its first event
    stall_after_chunks: int | None = None  # after K stream events, send nothing more (connection open) until reset()
    slow_times: int | None = None  # only the next N requests get hang / first_event_delay_ms / stall_after_chunks; None → all
    stream_usage_even_if_not_requested: bool = False  # a usage chunk without stream_options.include_usage
    response_body: Any = None  # a 200 answer with exactly this JSON body (an upstream that misreports, overshoots…)
    response_headers: dict[str, str] = dataclasses.field(default_factory=dict)  # sent with every answer, 2xx included
    stream_error_after: int | None = None  # in a stream, after K events send an error event and end (no [DONE])
    stream_error_body: Any = None  # …this one: a dict as JSON, a str as is; None → OpenAI's error for 500
    stream_error_times: int | None = None  # only the next N streams get stream_error_after; None → all of them
    # The OpenAI wire family's members (see the module docstring) and their faults.
    variant: str = "openai"  # "openai", "azure", "deepseek" or "mistral"
    reasoning_tokens: int = 0  # deepseek: reasoning_content sent and counted as completion_tokens_details.reasoning_tokens
    json_for_stream: bool = False  # answer a stream request with the whole JSON completion (application/json)
    sse_for_non_stream: bool = False  # answer a non-stream request with the SSE stream (usage chunk included)
    usage_override: dict | None = None  # merged into every usage object sent
    finish_reason: str | None = None  # replaces every finish_reason sent
    truncate_after_chunks: int | None = None  # end the stream cleanly after K events (no finish_reason, no [DONE])
    empty_stream: bool = False  # a stream that is only "data: [DONE]"
    done_without_space: bool = False  # "data:[DONE]" instead of "data: [DONE]"
    echo: bool = False  # a chat answer repeats the last user message it received (a forced tool call: {"echo": it})
    chunk_chars: int = 0  # stream content in pieces of this many characters (0: by words, ``chunks``)

    def generator_options(self) -> dict:
        options: dict[str, Any] = {
            "chunk_delay_ms": self.chunk_delay_ms,
            "chunks": self.chunks,
            "cached_tokens": self.cached_tokens,
            "omit_usage": self.omit_usage,
            "always_stream_usage": self.stream_usage_even_if_not_requested,
            "echo": self.echo,
            "chunk_chars": self.chunk_chars,
        }
        if self.words:
            options["words"] = self.words
        return options


@dataclasses.dataclass
class RecordedRequest:
    method: str
    path: str
    headers: CIMultiDict  # case-insensitive: headers["authorization"]
    body: Any  # the parsed JSON body, or None when it was not JSON
    raw_body: bytes
    received_at: float
    status: int | None = None  # what the fake answered (None while it has not)
    stream: bool = False
    events_sent: int = 0  # stream events written to the socket before the end or a disconnect
    completed: bool = False  # the whole answer (for a stream: through [DONE]) was written
    client_disconnected: bool = False  # the client went away while a stream was being written
    dropped: bool = False  # the fake cut the connection on purpose (drop_after_chunks / released hang)
    finished: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False)

    def wait_finished(self, timeout: float = 5.0) -> bool:
        """Wait until the fake is done with this request (answered, dropped or disconnected)."""
        return self.finished.wait(timeout)


class FakeOpenAI:
    """A real OpenAI-compatible HTTP server on 127.0.0.1:<ephemeral port>, run in a background thread."""

    def __init__(self, *, expected_keys: Iterable[str] = (DEFAULT_KEY,), models: Iterable[str] = DEFAULT_MODELS) -> None:
        self.expected_keys = set(expected_keys)
        self.models = tuple(models)
        self.port: int | None = None
        self._behavior = Behavior()
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None  # set to let hung handlers go

    # ----------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeOpenAI is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """The server's root (an Azure resource's endpoint is this, without ``/v1``)."""
        return self.base_url.removesuffix("/v1")

    @property
    def api_key(self) -> str:
        """A key the fake accepts."""
        return next(iter(sorted(self.expected_keys)))

    def start(self) -> FakeOpenAI:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failure), name="fake-openai", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("FakeOpenAI did not start within 10 s")
        if failure:
            self._thread.join()
            self._thread = None
            raise RuntimeError("FakeOpenAI could not start") from failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        loop = self._loop
        try:
            asyncio.run_coroutine_threadsafe(self._release_hung(), loop).result(5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
            self._thread = None
            self.port = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() in the calling thread
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._release = asyncio.Event()
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _release_hung(self) -> None:
        old, self._release = self._release, asyncio.Event()
        if old is not None:
            old.set()

    # ----------------------------------------------------------------- test controls

    def behavior(self, **changes: Any) -> Behavior:
        """Change how the next requests are answered (see ``Behavior`` for the fields)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(Behavior)}
        if unknown:
            raise TypeError(f"unknown behaviour: {', '.join(sorted(unknown))}")
        with self._lock:
            self._behavior = dataclasses.replace(self._behavior, **changes)
            return self._behavior

    @property
    def current_behavior(self) -> Behavior:
        return self._behavior

    def reset(self) -> None:
        """Default behaviour, no recorded requests, and any hung request let go."""
        with self._lock:
            self._behavior = Behavior()
            self._requests.clear()
        if self._loop is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._release_hung(), self._loop).result(5)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the recorded requests, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            if not self._requests:
                raise AssertionError("FakeOpenAI has received no request")
            return self._requests[-1]

    def wait_for_requests(self, count: int, *, timeout: float = 5.0) -> list[RecordedRequest]:
        """Wait until at least ``count`` requests arrived; the recorded requests."""
        deadline = time.monotonic() + timeout
        while True:
            snapshot = self.requests
            if len(snapshot) >= count:
                return snapshot
            if time.monotonic() > deadline:
                raise AssertionError(f"FakeOpenAI got {len(snapshot)} requests, expected {count}")
            time.sleep(0.005)

    # ----------------------------------------------------------------- serving

    def _take_behavior(self) -> tuple[Behavior, bool]:
        """The behaviour for one request and whether it fails (counting down ``fail_times`` and ``slow_times``)."""
        with self._lock:
            behavior = self._behavior
            if behavior.slow_times is not None:
                self._behavior = dataclasses.replace(behavior, slow_times=max(0, behavior.slow_times - 1))
                if behavior.slow_times <= 0:
                    behavior = dataclasses.replace(behavior, hang=False, first_event_delay_ms=0, stall_after_chunks=None)
            if behavior.stream_error_times is not None:
                self._behavior = dataclasses.replace(self._behavior, stream_error_times=max(0, behavior.stream_error_times - 1))
                if behavior.stream_error_times <= 0:
                    behavior = dataclasses.replace(behavior, stream_error_after=None)
            # status=200 with an error_body is an upstream that reports failure in a 200's body.
            fails = behavior.status is not None and (behavior.status >= 400 or behavior.error_body is not None)
            if fails and behavior.fail_times is not None:
                if behavior.fail_times <= 0:
                    fails = False
                else:
                    self._behavior = dataclasses.replace(self._behavior, fail_times=behavior.fail_times - 1)
            return behavior, fails

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        record = RecordedRequest(
            method=request.method, path=request.path, headers=CIMultiDict(request.headers), body=body,
            raw_body=raw, received_at=time.time(),
        )
        with self._lock:
            self._requests.append(record)
        try:
            return await self._answer(request, record)
        finally:
            record.finished.set()

    def _json(self, record: RecordedRequest, status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
        record.status = status
        record.completed = True
        text = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
        content_type = "application/json" if not isinstance(payload, str) else "text/plain"
        return web.Response(status=status, text=text, content_type=content_type, headers=headers)

    @staticmethod
    def _echo(payload: Any, request: web.Request) -> Any:
        """``payload`` with "{key}" and "{url}" replaced by the presented key and the request's URL."""
        if isinstance(payload, str):
            key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() or request.headers.get("api-key", "")
            return payload.replace("{key}", key).replace("{url}", str(request.url))
        if isinstance(payload, dict):
            return {FakeOpenAI._echo(k, request): FakeOpenAI._echo(v, request) for k, v in payload.items()}
        if isinstance(payload, list):
            return [FakeOpenAI._echo(v, request) for v in payload]
        return payload

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        if self._behavior.variant == "azure":
            return await self._azure(request, record)
        return await self._answer_openai(request, record, request.path)

    async def _azure(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        """Azure OpenAI: ``api-key``, ``/openai/deployments/{deployment}/{endpoint}?api-version=…``."""
        if request.headers.get("api-key", "") not in self.expected_keys:
            return self._json(record, 401, AZURE_AUTH_ERROR)
        prefix = "/openai/deployments/"
        deployment, _, endpoint = request.path.removeprefix(prefix).partition("/")
        if not request.path.startswith(prefix) or not deployment or not request.query.get("api-version"):
            return self._json(record, 404, AZURE_NOT_FOUND)
        if isinstance(record.body, dict):
            record.body.setdefault("model", deployment)
        return await self._answer_openai(request, record, "/v1/" + endpoint, authenticated=True)

    def _mistral_refusal(self, record: RecordedRequest) -> web.Response | None:
        # Mistral's pydantic model forbids extra fields: its 422 for the fields OpenAI clients add.
        body = record.body if isinstance(record.body, dict) else {}
        for field in ("stream_options", "max_completion_tokens"):
            if field in body:
                return self._json(record, 422, {"object": "error", "message": {"detail": [
                    {"type": "extra_forbidden", "loc": ["body", field], "msg": "Extra inputs are not permitted", "input": body[field]}]},
                    "type": "invalid_request_error", "param": None, "code": None})
        return None

    async def _answer_openai(self, request: web.Request, record: RecordedRequest, path: str, *,
                             authenticated: bool = False) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        if authenticated:
            pass
        elif not auth.startswith("Bearer "):
            return self._json(record, 401, openai_error(
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth "
                "(i.e. Authorization: Bearer YOUR_KEY).", code=None))
        elif auth[len("Bearer "):].strip() not in self.expected_keys:
            key = auth[len("Bearer "):].strip()
            return self._json(record, 401, openai_error(
                f"Incorrect API key provided: {_masked(key)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.", code="invalid_api_key"))

        behavior, fails = self._take_behavior()
        if behavior.hang:
            release = self._release
            assert release is not None
            await release.wait()
            record.dropped = True
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError  # nothing is sent: the connection is gone
        body = record.body
        if behavior.variant == "mistral" and (refusal := self._mistral_refusal(record)) is not None:
            return refusal
        is_stream = isinstance(body, dict) and body.get("stream") is True and request.method == "POST"
        if behavior.latency_ms and not (is_stream and not fails):
            await asyncio.sleep(behavior.latency_ms / 1000)
        headers = self._echo(dict(behavior.response_headers), request)
        if fails:
            payload = behavior.error_body if behavior.error_body is not None else _default_error(behavior.status)
            return self._json(record, behavior.status, self._echo(payload, request),
                              {**headers, **self._echo(dict(behavior.error_headers), request)})
        if behavior.response_body is not None and not is_stream:
            return self._json(record, 200, self._echo(behavior.response_body, request), headers)

        route = (request.method, path.rstrip("/"))
        if route == ("GET", "/v1/models"):
            return self._json(record, 200, {"object": "list", "data": [self._model_entry(m) for m in self.models]})
        if request.method == "GET" and path.startswith("/v1/models/"):
            model = path[len("/v1/models/"):]
            if model in self.models:
                return self._json(record, 200, self._model_entry(model))
            return self._json(record, 404, openai_error(f"The model '{model}' does not exist", param="model", code="model_not_found"))
        endpoints = {
            "/v1/chat/completions": ("chat", "messages"),
            "/v1/completions": ("completion", "prompt"),
            "/v1/embeddings": ("embedding", "input"),
        }
        if request.method != "POST" or route[1] not in endpoints:
            return self._json(record, 404, openai_error(f"Invalid URL ({request.method} {request.path})"))
        kind, required = endpoints[route[1]]
        if not isinstance(body, dict):
            return self._json(record, 400, openai_error("We could not parse the JSON body of your request."))
        for field in ("model", required):
            if field not in body:
                return self._json(record, 400, openai_error(f"Missing required parameter: '{field}'.", param=field, code="missing_required_parameter"))
        model = body["model"] if isinstance(body["model"], str) else str(body["model"])
        options = behavior.generator_options()
        if is_stream and kind != "embedding" and not behavior.json_for_stream:
            return await self._stream(request, record, behavior, body, model, kind, options)
        if behavior.sse_for_non_stream and kind != "embedding":
            streamed = dict(body, stream=True, stream_options={"include_usage": True})
            return await self._stream(request, record, behavior, streamed, model, kind, options)
        payload = self._rewrite_answer(await generator.respond(body, upstream_model=model, options=options, kind=kind), behavior)
        record.status = 200
        record.completed = True
        return web.Response(status=200, body=payload, content_type="application/json", headers=headers)

    # ----------------------------------------------------------------- the family's differences

    @staticmethod
    def _rewrite_usage(usage: Any, behavior: Behavior) -> None:
        if not isinstance(usage, dict):
            return
        if behavior.variant == "deepseek":
            cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
            usage.pop("prompt_tokens_details", None)  # the adapter must read DeepSeek's own fields
            usage["prompt_cache_hit_tokens"] = cached
            usage["prompt_cache_miss_tokens"] = usage["prompt_tokens"] - cached
            usage["completion_tokens"] += behavior.reasoning_tokens
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            usage["completion_tokens_details"] = {"reasoning_tokens": behavior.reasoning_tokens}
        if behavior.usage_override:
            usage.update(behavior.usage_override)

    def _rewrite_object(self, obj: dict, behavior: Behavior, *, first: bool = False) -> dict:
        self._rewrite_usage(obj.get("usage"), behavior)
        for choice in obj.get("choices") or []:
            if behavior.finish_reason and choice.get("finish_reason") is not None:
                choice["finish_reason"] = behavior.finish_reason
            if behavior.variant == "deepseek" and behavior.reasoning_tokens:
                if "message" in choice:
                    choice["message"]["reasoning_content"] = REASONING_TEXT
                elif first and "delta" in choice:
                    choice["delta"]["reasoning_content"] = REASONING_TEXT
        return obj

    def _rewrite_answer(self, payload: bytes, behavior: Behavior) -> bytes:
        """A JSON answer as the variant would write it."""
        if behavior.variant == "openai" and not behavior.usage_override and not behavior.finish_reason:
            return payload
        obj = self._rewrite_object(orjson.loads(payload), behavior)
        prefix = b"\n\n" if behavior.variant == "deepseek" else b""  # DeepSeek's keep-alive blank lines
        return prefix + orjson.dumps(obj)

    def _rewrite_events(self, events: list[bytes], behavior: Behavior) -> list[bytes]:
        """The generator's stream events as the variant (and the configured faults) would send them."""
        if behavior.empty_stream:
            return [b"data: [DONE]\n\n"]
        out: list[bytes] = []
        first = True
        for event in events:
            if event.startswith(b"data: [DONE]"):
                out.append(b"data:[DONE]\n\n" if behavior.done_without_space else event)
                continue
            obj = self._rewrite_object(orjson.loads(event[6:]), behavior, first=first)
            first = False
            if behavior.variant == "mistral" and obj.get("usage") and not obj.get("choices") and out:
                # Mistral: the usage rides on the last content chunk; no usage-only chunk.
                last = orjson.loads(out[-1][6:])
                last["usage"] = obj["usage"]
                out[-1] = b"data: " + orjson.dumps(last) + b"\n\n"
                continue
            out.append(b"data: " + orjson.dumps(obj) + b"\n\n")
        if behavior.variant == "deepseek":
            out.insert(0, b": keep-alive\n\n")
        return out

    def _model_entry(self, model: str) -> dict:
        return {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "fake-openai"}

    async def _stream(self, request: web.Request, record: RecordedRequest, behavior: Behavior, body: dict, model: str, kind: str,
                      options: dict) -> web.StreamResponse:
        record.stream = True
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                                                           **self._echo(dict(behavior.response_headers), request)})
        stream_options = dict(options, latency_ms=behavior.latency_ms)
        if behavior.first_event_delay_ms:
            record.status = 200
            await response.prepare(request)
            if not await self._silence(request, record, behavior.first_event_delay_ms / 1000):
                return response
        if behavior.variant == "mistral":  # Mistral sends usage unasked
            body = dict(body, stream_options={"include_usage": True})
        async for event in self._events(body, model, stream_options, kind, behavior):
            if behavior.truncate_after_chunks is not None and record.events_sent >= behavior.truncate_after_chunks:
                break  # a clean end of the body: no finish_reason, no [DONE]
            if not response.prepared:  # headers go out with the first event, after latency_ms
                record.status = 200
                await response.prepare(request)
            if behavior.stall_after_chunks is not None and record.events_sent >= behavior.stall_after_chunks:
                await self._silence(request, record, None)
                return response
            if behavior.stream_error_after is not None and record.events_sent >= behavior.stream_error_after:
                error = behavior.stream_error_body if behavior.stream_error_body is not None else _default_error(500)
                error = self._echo(error, request)
                await response.write(b"data: " + (error.encode() if isinstance(error, str) else orjson.dumps(error)) + b"\n\n")
                break
            if behavior.drop_after_chunks is not None and record.events_sent >= behavior.drop_after_chunks:
                record.dropped = True
                if request.transport is not None:
                    request.transport.close()  # no terminating chunk: the client sees a truncated body
                raise asyncio.CancelledError
            try:
                await response.write(event)
            except ConnectionResetError:  # aiohttp's ClientConnectionResetError too
                record.client_disconnected = True
                return response
            record.events_sent += 1
        try:
            await response.write_eof()
        except ConnectionResetError:
            record.client_disconnected = True
            return response
        record.completed = True
        return response


    async def _events(self, body: dict, model: str, options: dict, kind: str, behavior: Behavior):
        """The generator's events, rewritten for the variant and faults when there are any to apply."""
        plain = (behavior.variant == "openai" and not behavior.usage_override and not behavior.finish_reason
                 and not behavior.empty_stream and not behavior.done_without_space)
        if plain:
            async for event in generator.stream(body, upstream_model=model, options=options, kind=kind):
                yield event
            return
        events = [event async for event in generator.stream(body, upstream_model=model, options=options, kind=kind)]
        for event in self._rewrite_events(events, behavior):
            yield event

    async def _silence(self, request: web.Request, record: RecordedRequest, seconds: float | None) -> bool:
        """Send nothing for ``seconds`` (None: until reset() or stop()); False if the client left meanwhile."""
        release = self._release
        assert release is not None
        deadline = None if seconds is None else time.monotonic() + seconds
        while deadline is None or time.monotonic() < deadline:
            if request.transport is None or request.transport.is_closing():
                record.client_disconnected = True
                return False
            if release.is_set():
                break
            await asyncio.sleep(0.02)
        return True


# --------------------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="session")
def fake_openai_server():
    """One FakeOpenAI for the whole session (import into a conftest to use)."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake_openai(fake_openai_server: FakeOpenAI):
    """The session's FakeOpenAI with default behaviour and no recorded requests, reset after the test."""
    fake_openai_server.reset()
    yield fake_openai_server
    fake_openai_server.reset()
