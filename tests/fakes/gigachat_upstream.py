"""FakeGigaChat: a real HTTP(S) server on loopback that speaks GigaChat's OAuth and v1 REST formats.

One aiohttp server in a background thread on 127.0.0.1 (ephemeral port) serves both hosts' paths:

- ``POST /api/v2/oauth`` — the token service: ``Authorization: Basic <authorization key>`` checked
  against ``expected_keys``, ``RqUID`` must be a uuid4, a form body with a ``scope`` the key holds;
  answers ``{"access_token", "expires_at": <ms>}`` (tokens live ``Behavior.token_ttl_s``) or
  ``{"code", "message"}`` errors as Sber documents them;
- ``POST /api/v1/chat/completions`` — ``Authorization: Bearer <token>`` (unknown, revoked or expired:
  401 ``Token has expired``); the body is validated as strictly as the real API (unknown fields,
  content parts, a system message not first, ``function`` messages without a name or JSON content
  → 422 ``Invalid params``; an unknown model → 404 ``No such model``); answers with
  ``Behavior.reply`` and usage incl. ``precached_prompt_tokens``; with ``functions`` (and the last
  message from the user) it calls the first function; streams put usage on the LAST CONTENT chunk;
- ``POST /api/v1/embeddings`` — per-item usage, no total.

Sources: see ``apps/providers/adapters/gigachat/`` (docs and the SDK's recorded exchanges).

    with FakeGigaChat() as fake:
        fake.behavior(status=429, error_headers={"Retry-After": "7"})
        fake.behavior(oauth_status=500)                 # the token service fails
        fake.behavior(status=500, error_body=leaky_gigachat_error(500))  # echoes token, key, URL
        fake.revoke_tokens()                             # every issued token is now refused (401)
        fake.reset()

``FakeGigaChat(tls=server_context)`` serves HTTPS (see ``make_tls``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import ipaddress
import ssl
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
from aiohttp import web
from multidict import CIMultiDict

from tests.fakes.openai_upstream import LEAKY_TEXT

DEFAULT_AUTH_KEY = "MDE5YWRmZjMtZmFrZS1jbGllbnQ6c2VjcmV0LWdpZ2FjaGF0LWtleS0wMTIz"  # base64("019adff3-fake-client:secret-…")
DEFAULT_MODELS = ("GigaChat", "GigaChat-2-Max", "Embeddings")
DEFAULT_SCOPE = "GIGACHAT_API_PERS"
VERSION = "2.0.28.2"
ALLOWED_FIELDS = frozenset({"model", "messages", "temperature", "top_p", "n", "stream", "max_tokens", "repetition_penalty",
                            "update_interval", "profanity_check", "functions", "function_call", "flags", "reasoning_effort"})
ROLES = frozenset({"system", "user", "assistant", "function", "search_result", "function_in_progress"})


def gigachat_error(status: int, message: str) -> dict:
    """An API error in GigaChat's shape."""
    return {"status": status, "message": message}


def leaky_gigachat_error(status: int) -> dict:
    """An API error whose message echoes the Bearer token ("{key}"), the authorization key
    ("{authkey}"), the URL and internal hosts, addresses and a DSN."""
    return gigachat_error(status, LEAKY_TEXT + " (authorization key {authkey})")


_DEFAULT_MESSAGES = {400: "Bad request", 401: "Token has expired", 402: "Payment Required", 403: "Permission denied",
                     404: "No such model", 413: "Payload too large", 422: "Invalid params", 429: "Too many requests",
                     500: "Internal Server Error", 503: "Service Unavailable"}


@dataclasses.dataclass(frozen=True)
class Behavior:
    """What the fake does with the next requests; ``FakeGigaChat.behavior(**changes)`` replaces fields."""

    status: int | None = None  # API answers (after auth) with this status…
    error_body: Any = None  # …and this body (dict → JSON, str as is; None → GigaChat's error for the status)
    error_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    fail_times: int | None = None  # only the next N API requests fail; None → all
    oauth_status: int | None = None  # the token service answers with this status…
    oauth_error_body: Any = None  # …and this body (None → {"code", "message"})
    oauth_fail_times: int | None = None
    oauth_latency_ms: int = 0  # before the token service answers
    token_ttl_s: float = 1800.0  # lifetime of issued tokens
    token_shape: str = "ms"  # "ms": {"access_token", "expires_at" ms}; "seconds": {"tok", "exp" s}
    reply: str = "Привет! Это ответ от GigaChat."
    reasoning: str | None = None  # reasoning_content before the reply
    prompt_tokens: int | None = None  # None → 5 + words of the messages
    completion_tokens: int | None = None  # None → words of the reply (+ reasoning)
    precached_tokens: int = 0
    omit_usage: bool = False
    usage_on_empty_chunk: bool = False  # the usage-carrying last chunk has empty content (as recorded), else the last words
    chunks: int = 3  # content chunks in a stream
    chunk_delay_ms: int = 0
    finish_reason: str | None = None  # override ("blacklist", "error", "length")
    call_arguments: dict = dataclasses.field(default_factory=lambda: {"city": "Казань"})
    split_call: bool = False  # a streamed function call's arguments over two chunks
    drop_after_chunks: int | None = None  # close the connection after K stream events
    stream_error_after: int | None = None  # after K stream events, an error payload and the end
    stream_error_body: Any = None
    response_body: Any = None  # a 200 answer with exactly this body (non-stream)
    response_headers: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Recorded:
    method: str
    path: str
    headers: CIMultiDict
    body: Any  # parsed JSON, a dict of form fields for the token service, or None
    raw_body: bytes
    status: int | None = None


class FakeGigaChat:
    """GigaChat's token service and API on 127.0.0.1:<ephemeral port>, in a background thread."""

    def __init__(self, *, expected_keys: Iterable[str] = (DEFAULT_AUTH_KEY,), models: Iterable[str] = DEFAULT_MODELS,
                 scopes: Iterable[str] = (DEFAULT_SCOPE,), tls: ssl.SSLContext | None = None) -> None:
        self.expected_keys = set(expected_keys)
        self.models = tuple(models)
        self.scopes = set(scopes)
        self.tls = tls
        self.port: int | None = None
        self._behavior = Behavior()
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._tokens: dict[str, tuple[str, float]] = {}  # token → (authorization key, expiry, Unix seconds)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def root(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeGigaChat is not started")
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/api/v1"

    @property
    def auth_url(self) -> str:
        return f"{self.root}/api/v2/oauth"

    @property
    def auth_key(self) -> str:
        return sorted(self.expected_keys)[0]

    def start(self) -> FakeGigaChat:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fake-gigachat", daemon=True)
        self._thread.start()
        if not ready.wait(10) or self.port is None:
            raise RuntimeError("FakeGigaChat did not start")
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        self.port = None

    def __enter__(self) -> FakeGigaChat:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        loop.run_until_complete(self._serve())
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        """Cancel handlers still running (a slow token answer the client gave up on), then close."""
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        assert self._runner is not None
        await self._runner.cleanup()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = self._runner.addresses[0][1]

    # ----------------------------------------------------------------- test controls

    def behavior(self, **changes: Any) -> Behavior:
        """Change how the next requests are answered (see ``Behavior``)."""
        with self._lock:
            self._behavior = dataclasses.replace(self._behavior, **changes)
            return self._behavior

    def reset(self) -> None:
        """Default behaviour, no recorded requests, no issued tokens."""
        with self._lock:
            self._behavior = Behavior()
            self._requests.clear()
            self._tokens.clear()

    def revoke_tokens(self) -> None:
        """Refuse every token issued so far (the API answers 401 ``Token has expired``)."""
        with self._lock:
            self._tokens.clear()

    @property
    def requests(self) -> list[Recorded]:
        """API requests (chat, embeddings), oldest first."""
        with self._lock:
            return [r for r in self._requests if not r.path.endswith("/oauth")]

    @property
    def exchanges(self) -> list[Recorded]:
        """Token-service requests, oldest first."""
        with self._lock:
            return [r for r in self._requests if r.path.endswith("/oauth")]

    @property
    def last_request(self) -> Recorded:
        requests = self.requests
        if not requests:
            raise AssertionError("FakeGigaChat has received no API request")
        return requests[-1]

    # ----------------------------------------------------------------- serving

    def _take(self, *, oauth: bool) -> tuple[Behavior, bool]:
        """The behaviour for one request and whether it fails (counting down the fail_times)."""
        status_field, times_field = ("oauth_status", "oauth_fail_times") if oauth else ("status", "fail_times")
        with self._lock:
            behavior = self._behavior
            fails = getattr(behavior, status_field) is not None
            remaining = getattr(behavior, times_field)
            if fails and remaining is not None:
                fails = remaining > 0
                self._behavior = dataclasses.replace(behavior, **{times_field: max(0, remaining - 1)})
            return behavior, fails

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        oauth = request.path.rstrip("/") == "/api/v2/oauth"
        if oauth:
            body: Any = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        else:
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = None
        record = Recorded(request.method, request.path, CIMultiDict(request.headers), body, raw)
        with self._lock:
            self._requests.append(record)
        response = await (self._oauth(request, record) if oauth else self._api(request, record))
        record.status = response.status
        return response

    @staticmethod
    def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
        body = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)

    async def _oauth(self, request: web.Request, record: Recorded) -> web.Response:
        behavior, fails = self._take(oauth=True)
        if behavior.oauth_latency_ms:
            await asyncio.sleep(behavior.oauth_latency_ms / 1000)
        key = request.headers.get("Authorization", "").removeprefix("Basic ").strip()
        refusal = self._refuse_exchange(request, record, key)
        if refusal is not None:
            return refusal
        if fails:
            assert behavior.oauth_status is not None
            payload = behavior.oauth_error_body or {"code": 0, "message": _DEFAULT_MESSAGES.get(behavior.oauth_status, "error")}
            return self._json(behavior.oauth_status, _echo(payload, key, key, str(request.url)), dict(behavior.error_headers))
        token = f"eyJ.fake.{uuid.uuid4().hex}"
        expires = time.time() + behavior.token_ttl_s
        with self._lock:
            self._tokens[token] = (key, expires)
        if behavior.token_shape == "seconds":
            return self._json(200, {"tok": token, "exp": int(expires)})
        return self._json(200, {"access_token": token, "expires_at": int(expires * 1000)})

    def _refuse_exchange(self, request: web.Request, record: Recorded, key: str) -> web.Response | None:
        if request.method != "POST":
            return self._json(405, {"code": 0, "message": "method not allowed"})
        try:
            valid_rquid = uuid.UUID(request.headers.get("RqUID", "")).version == 4
        except ValueError:
            valid_rquid = False
        if not valid_rquid:
            return self._json(400, {"code": 3, "message": "RqUID header is invalid: it must be a uuid4"})
        if not request.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return self._json(400, {"code": 1, "message": "scope data format invalid"})
        if key not in self.expected_keys:
            return self._json(401, {"code": 6, "message": "credentials doesn't match db data"})
        scope = record.body.get("scope") if isinstance(record.body, dict) else None
        if not scope:
            return self._json(400, {"code": 5, "message": "scope is empty"})
        if scope not in self.scopes:
            return self._json(400, {"code": 7, "message": "scope from db not fully includes consumed scope"})
        return None

    def _bearer(self, request: web.Request) -> tuple[str, str] | None:
        """(token, its authorization key) for a valid Bearer token, else None."""
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        with self._lock:
            issued = self._tokens.get(token)
        if issued is None or issued[1] <= time.time():
            return None
        return token, issued[0]

    async def _api(self, request: web.Request, record: Recorded) -> web.StreamResponse:
        bearer = self._bearer(request)
        if bearer is None:
            return self._json(401, gigachat_error(401, "Token has expired"))
        token, key = bearer
        behavior, fails = self._take(oauth=False)
        if fails:
            assert behavior.status is not None
            payload = behavior.error_body if behavior.error_body is not None else gigachat_error(
                behavior.status, _DEFAULT_MESSAGES.get(behavior.status, f"HTTP {behavior.status}"))
            return self._json(behavior.status, _echo(payload, token, key, str(request.url)),
                              _echo(dict(behavior.error_headers), token, key, str(request.url)))
        path = request.path.rstrip("/")
        if request.method == "POST" and path == "/api/v1/chat/completions":
            return await self._chat(request, record.body, behavior)
        if request.method == "POST" and path == "/api/v1/embeddings":
            return self._embeddings(record.body)
        return self._json(404, gigachat_error(404, "Not found"))

    # ----------------------------------------------------------------- chat

    def _invalid_chat(self, body: Any) -> web.Response | None:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return self._json(422, gigachat_error(422, "Invalid params: messages are required"))
        unknown = sorted(set(body) - ALLOWED_FIELDS)
        if unknown:
            return self._json(422, gigachat_error(422, f"Invalid params: unknown fields {', '.join(unknown)}"))
        if body.get("model") not in self.models:
            return self._json(404, gigachat_error(404, "No such model"))
        for position, message in enumerate(body["messages"]):
            problem = _message_problem(message, position)
            if problem:
                return self._json(422, gigachat_error(422, f"Invalid params: {problem}"))
        for function in body.get("functions") or []:
            if not isinstance(function, dict) or not function.get("name") or not isinstance(function.get("parameters", {}), dict):
                return self._json(422, gigachat_error(422, "Invalid params: functions"))
        return None

    async def _chat(self, request: web.Request, body: Any, behavior: Behavior) -> web.StreamResponse:
        invalid = self._invalid_chat(body)
        if invalid is not None:
            return invalid
        if behavior.response_body is not None and not body.get("stream"):
            return self._json(200, behavior.response_body, dict(behavior.response_headers))
        answer = _Answer(body, behavior)
        if body.get("stream"):
            return await self._stream(request, answer, behavior)
        message: dict[str, Any] = {"role": "assistant", "content": "" if answer.call else behavior.reply}
        if behavior.reasoning:
            message["reasoning_content"] = behavior.reasoning
        if answer.call:
            message["function_call"] = answer.call
            message["functions_state_id"] = answer.state_id
        payload: dict[str, Any] = {"choices": [{"message": message, "index": 0, "finish_reason": answer.finish_reason}],
                                   "created": int(time.time()), "model": f"{body['model']}:{VERSION}", "object": "chat.completion"}
        if not behavior.omit_usage:
            payload["usage"] = answer.usage
        return self._json(200, payload, {"X-Request-Id": str(uuid.uuid4()), **behavior.response_headers})

    async def _stream(self, request: web.Request, answer: _Answer, behavior: Behavior) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", **behavior.response_headers})
        await response.prepare(request)
        for sent, event in enumerate(answer.events()):
            if behavior.drop_after_chunks is not None and sent >= behavior.drop_after_chunks:
                if request.transport is not None:
                    request.transport.close()
                return response
            if behavior.stream_error_after is not None and sent >= behavior.stream_error_after:
                error = behavior.stream_error_body if behavior.stream_error_body is not None else gigachat_error(500, "Internal Server Error")
                await response.write(b"data: " + (error.encode() if isinstance(error, str) else orjson.dumps(error)) + b"\n\n")
                await response.write_eof()
                return response
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
            if behavior.chunk_delay_ms:
                await asyncio.sleep(behavior.chunk_delay_ms / 1000)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # ----------------------------------------------------------------- embeddings

    def _embeddings(self, body: Any) -> web.Response:
        texts = body.get("input") if isinstance(body, dict) else None
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts) or set(body) - {"model", "input"}:
            return self._json(422, gigachat_error(422, "Invalid params: input must be a list of strings"))
        if body.get("model") not in self.models:
            return self._json(404, gigachat_error(404, "No such model"))
        data = [{"object": "embedding", "index": i, "embedding": _vector(text), "usage": {"prompt_tokens": len(text.split())}}
                for i, text in enumerate(texts)]
        return self._json(200, {"object": "list", "model": body["model"], "data": data})


class _Answer:
    """What the fake generates for one chat request: text or a function call, finish reason, usage."""

    def __init__(self, body: dict, behavior: Behavior) -> None:
        self.body = body
        self.behavior = behavior
        functions = body.get("functions") or []
        last = body["messages"][-1]
        wants_call = functions and body.get("function_call") != "none" and last.get("role") == "user"
        forced = body.get("function_call") if isinstance(body.get("function_call"), dict) else None
        name = forced["name"] if forced else (functions[0]["name"] if functions else "")
        self.call = {"name": name, "arguments": behavior.call_arguments} if wants_call else None
        self.state_id = str(uuid.uuid4())
        self.finish_reason = behavior.finish_reason or ("function_call" if self.call else "stop")
        words = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
        generated = len(behavior.reply.split()) + len((behavior.reasoning or "").split())
        prompt = behavior.prompt_tokens if behavior.prompt_tokens is not None else 5 + words
        completion = behavior.completion_tokens if behavior.completion_tokens is not None else (12 if self.call else generated)
        self.usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "precached_prompt_tokens": behavior.precached_tokens}

    def _chunk(self, delta: dict, *, finish: bool = False) -> dict:
        choice: dict[str, Any] = {"delta": delta, "index": 0}
        chunk: dict[str, Any] = {"choices": [choice], "created": int(time.time()), "model": f"{self.body['model']}:{VERSION}",
                                 "object": "chat.completion"}
        if finish:
            choice["finish_reason"] = self.finish_reason
            if not self.behavior.omit_usage:
                chunk["usage"] = self.usage
        return chunk

    def events(self) -> list[dict]:
        """The stream's chunks: the role in the first delta only; usage on the last content chunk."""
        if self.call:
            return self._call_events()
        pieces = _split(self.behavior.reply, self.behavior.chunks)
        out = [self._chunk({"reasoning_content": self.behavior.reasoning, "role": "assistant"})] if self.behavior.reasoning else []
        for position, piece in enumerate(pieces):
            delta: dict[str, Any] = {"content": piece}
            if not out:
                delta["role"] = "assistant"
            last = position == len(pieces) - 1 and not self.behavior.usage_on_empty_chunk
            out.append(self._chunk(delta, finish=last))
        if self.behavior.usage_on_empty_chunk:
            out.append(self._chunk({"content": ""}, finish=True))
        return out

    def _call_events(self) -> list[dict]:
        assert self.call is not None
        arguments = self.call["arguments"]
        if not self.behavior.split_call or len(arguments) < 2:
            delta = {"content": "", "role": "assistant", "function_call": self.call, "functions_state_id": self.state_id}
            return [self._chunk(delta, finish=True)]
        items = list(arguments.items())
        first = {"name": self.call["name"], "arguments": dict(items[:1])}
        return [self._chunk({"content": "", "role": "assistant", "function_call": first, "functions_state_id": self.state_id}),
                self._chunk({"content": "", "function_call": {"arguments": dict(items[1:])}}, finish=True)]


def _message_problem(message: Any, position: int) -> str | None:
    """What the real API refuses in one message, or None."""
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        return f"messages[{position}].role"
    if not isinstance(message.get("content", ""), str):
        return f"messages[{position}].content must be a string"
    if message["role"] == "system" and position != 0:
        return "system message must be the first one"
    if message["role"] == "function":
        try:
            valid = isinstance(orjson.loads(message.get("content") or ""), dict)
        except orjson.JSONDecodeError:
            valid = False
        if not message.get("name") or not valid:
            return f"messages[{position}]: a function message needs a name and a valid JSON object as content"
    call = message.get("function_call")
    if call is not None and (not isinstance(call, dict) or not isinstance(call.get("arguments"), dict)):
        return f"messages[{position}].function_call.arguments must be an object"
    unknown = set(message) - {"role", "content", "name", "function_call", "functions_state_id", "attachments", "reasoning_content"}
    return f"messages[{position}] unknown fields {sorted(unknown)}" if unknown else None


def _split(text: str, parts: int) -> list[str]:
    words = text.split(" ")
    size = max(1, -(-len(words) // max(1, parts)))
    groups = [" ".join(words[i:i + size]) for i in range(0, len(words), size)]
    return [group if i == 0 else " " + group for i, group in enumerate(groups)]


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((byte - 128) / 128, 4) for byte in digest[:8]]


def _echo(payload: Any, token: str, key: str, url: str) -> Any:
    """``payload`` with "{key}" → the Bearer token, "{authkey}" → the authorization key, "{url}" → the URL."""
    if isinstance(payload, str):
        return payload.replace("{key}", token).replace("{authkey}", key).replace("{url}", url)
    if isinstance(payload, dict):
        return {k: _echo(v, token, key, url) for k, v in payload.items()}
    if isinstance(payload, list):
        return [_echo(v, token, key, url) for v in payload]
    return payload


# --------------------------------------------------------------------------- TLS


def make_tls(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A test CA (its PEM written to ``directory/ca.pem``) and a server context for 127.0.0.1
    signed by it: (CA bundle path, server SSL context)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Russian Trusted Root CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gigachat.test")]))
              .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                          x509.DNSName("localhost")]), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = directory / "server.pem"
    chain.write_bytes(server.public_bytes(serialization.Encoding.PEM) + server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain)
    return ca_path, context
