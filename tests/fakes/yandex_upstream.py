"""FakeYandex: a real HTTP server on loopback that speaks Yandex AI Studio's wire formats, for tests.

Runs like ``FakeOpenAI`` (its lifecycle and request recording are reused): aiohttp in a background
thread on 127.0.0.1, ephemeral port. It answers

- ``POST /foundationModels/v1/completion`` — the native API: ``Authorization: Api-Key <key>`` or
  ``Bearer <IAM token>``, ``modelUri`` ``gpt://<folder>/<model>``, ``completionOptions.maxTokens`` as a
  string; the answer wrapped in ``{"result": …}``, token counts as strings; with ``stream: true`` a
  newline-delimited JSON stream sent as ``application/json`` (gRPC-gateway's way), each line
  carrying the whole text so far and the cumulative usage, the last one a final status;
  ``toolCallList`` / ``toolResultList`` tools (no call ids, matched by name);
- ``POST /foundationModels/v1/textEmbedding`` — ``emb://`` URI, one text; ``numTokens`` a string;
- ``POST /v1/chat/completions`` and ``/v1/embeddings`` — the OpenAI-compatible endpoint (``Bearer``,
  ``model`` a ``gpt://`` URI, the folder in ``OpenAI-Project``); a streamed tool call comes whole in
  one chunk with the function name as its id, as recorded from the real service;
- ``POST /iam/v1/tokens`` — the IAM exchange: a PS256 JWT signed by a registered authorized key →
  ``{"iamToken", "expiresAt"}``.

Errors have gRPC-gateway's shape ``{"error": {"grpcCode", "httpCode", "message", "httpStatus", "details"}}``;
"{key}" and "{url}" in an error body are replaced by the presented key and the request's URL (a
careless upstream). Sources: https://yandex.cloud/en/docs/ai-studio/text-generation/api-ref/TextGeneration/completion,
https://yandex.cloud/en/docs/ai-studio/troubleshooting/error-codes, https://yandex.cloud/en/docs/ai-studio/concepts/openai-compatibility.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from typing import Any

import orjson
import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakes.openai_upstream import FakeOpenAI, RecordedRequest

API_KEY = "AQVNyandexfakekey0123456789abcdefghijklmn"
IAM_TOKEN = "t1.9euelZqStaticIamToken0123456789abcdef"
FOLDER = "b1gexamplefolder"
ANSWER = "Привет! Я YandexGPT, готов помочь с вашим вопросом о погоде в Москве."
MODEL_VERSION = "23.10.2025"

_STATUS_TEXT = {400: ("Bad Request", 3), 401: ("Unauthorized", 16), 403: ("Forbidden", 7), 404: ("Not Found", 5),
                429: ("Too Many Requests", 8), 500: ("Internal Server Error", 13), 501: ("Not Implemented", 12),
                503: ("Service Unavailable", 14), 504: ("Gateway Timeout", 4)}


def grpc_error(http: int, message: str) -> dict:
    """An error body in gRPC-gateway's shape for HTTP status ``http``."""
    text, grpc = _STATUS_TEXT.get(http, ("Error", 2))
    return {"error": {"grpcCode": grpc, "httpCode": http, "message": message, "httpStatus": text, "details": []}}


LEAKY_ERROR = grpc_error(500, "upstream key {key} failed at {url} via pg-7.prod.internal (10.12.0.5); retry with Api-Key {key}")


def words_of(text: str) -> list[str]:
    """The pieces a stream reveals one per line: words with the space before them kept."""
    pieces, start = [], 0
    for index in range(1, len(text) + 1):
        if index == len(text) or text[index] == " ":
            pieces.append(text[start:index])
            start = index
    return pieces


def prompt_tokens(messages: list) -> int:
    """The fake's input token count for native ``messages``: 3 per message plus one per word."""
    total = 0
    for message in messages:
        text = message.get("text") or orjson.dumps(message.get("toolCallList") or message.get("toolResultList") or {}).decode()
        total += 3 + len(text.split())
    return total


def new_authorized_key() -> dict:
    """A service-account authorized key as ``yc iam key create`` writes it (RSA 2048, PEM with Yandex's warning line)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return {"id": "ajefakekeyid0001", "service_account_id": "ajefakeserviceacct", "created_at": "2026-11-01T10:00:00Z",
            "key_algorithm": "RSA_2048", "public_key": private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
            "private_key": "PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID <ajefakekeyid0001>\n" + pem}


@dataclasses.dataclass(frozen=True)
class YandexBehavior:
    """What the fake does with the next requests. ``FakeYandex.behavior(**changes)`` replaces fields."""

    status: int | None = None  # answer (after auth) with this HTTP status…
    error_body: Any = None  # …and this body (dict → JSON, str as is); None → gRPC-gateway's error for the status
    error_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    fail_times: int | None = None  # only the next N requests fail; None → all
    text: str = ANSWER  # the model's answer
    final_status: str = "ALTERNATIVE_STATUS_FINAL"
    tool_call: dict | None = None  # {"name", "arguments"}: called when the request has tools and no tool result yet
    reasoning_tokens: int = 0  # reported in completionTokensDetails (and counted in completionTokens)
    omit_usage: bool = False
    chunk_delay_ms: int = 0
    line_ending: str = "\n"
    write_bytes: int = 0  # write each stream line in pieces of this many bytes (0 = whole lines)
    drop_after_lines: int | None = None  # close the connection after K stream lines (no final status)
    stream_error_after: int | None = None  # after K stream lines send an error line and end
    stream_error_body: Any = None  # …this one (None → a 500 error)
    response_body: Any = None  # a 200 non-stream answer with exactly this body
    compat_usage_chunk: bool | None = None  # OpenAI-compatible stream: usage chunk (None → only if include_usage)


class FakeYandex(FakeOpenAI):
    """A Yandex AI Studio server on 127.0.0.1:<ephemeral port> (see the module docstring)."""

    def __init__(self, *, api_keys: tuple[str, ...] = (API_KEY,), iam_tokens: tuple[str, ...] = (IAM_TOKEN,),
                 folder: str = FOLDER) -> None:
        super().__init__(expected_keys=api_keys)
        self.iam_tokens = set(iam_tokens)
        self.folder = folder
        self.authorized_keys: dict[str, Any] = {}  # key id → public key, for the IAM exchange
        self.issued = 0  # IAM tokens issued by the exchange
        self._behavior = YandexBehavior()  # type: ignore[assignment]

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def native_url(self) -> str:
        """The native API's base URL (the provider's ``base_url`` for ``api: native``)."""
        return f"{self.root_url}/foundationModels/v1"

    @property
    def compat_url(self) -> str:
        """The OpenAI-compatible endpoint's base URL (``api: openai``)."""
        return f"{self.root_url}/v1"

    @property
    def iam_url(self) -> str:
        return f"{self.root_url}/iam/v1/tokens"

    def register_key(self, key: dict) -> None:
        """Accept JWTs signed by this authorized key at the IAM exchange."""
        self.authorized_keys[key["id"]] = serialization.load_pem_public_key(key["public_key"].encode())

    def behavior(self, **changes: Any) -> YandexBehavior:  # type: ignore[override]
        """Change how the next requests are answered (see ``YandexBehavior``)."""
        with self._lock:
            self._behavior = dataclasses.replace(self._behavior, **changes)  # type: ignore[assignment]
            return self._behavior  # type: ignore[return-value]

    def reset(self) -> None:
        """Default behaviour, no recorded requests, no issued tokens."""
        super().reset()
        with self._lock:
            self._behavior = YandexBehavior()  # type: ignore[assignment]
            self.issued = 0

    def _take(self) -> tuple[YandexBehavior, bool]:
        with self._lock:
            behavior: YandexBehavior = self._behavior  # type: ignore[assignment]
            fails = behavior.status is not None
            if fails and behavior.fail_times is not None:
                fails = behavior.fail_times > 0
                self._behavior = dataclasses.replace(behavior, fail_times=max(0, behavior.fail_times - 1))  # type: ignore[assignment]
            return behavior, fails

    # ----------------------------------------------------------------- serving

    def _reply(self, record: RecordedRequest, status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
        return self._json(record, status, payload, headers)

    @staticmethod
    def _leak(payload: Any, key: str, url: str) -> Any:
        if isinstance(payload, str):
            return payload.replace("{key}", key).replace("{url}", url)
        if isinstance(payload, dict):
            return {k: FakeYandex._leak(v, key, url) for k, v in payload.items()}
        if isinstance(payload, list):
            return [FakeYandex._leak(v, key, url) for v in payload]
        return payload

    def _authenticated(self, request: web.Request, *, native: bool) -> str | None:
        """The presented secret if it is accepted, else None."""
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        if scheme == "Api-Key" or (scheme == "Bearer" and not native):
            if secret in self.expected_keys:
                return secret
        if scheme == "Bearer" and secret in self.iam_tokens:
            return secret
        return None

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        path = request.path.rstrip("/")
        if path == "/iam/v1/tokens":
            return self._exchange(record)
        native = path.startswith("/foundationModels/v1/")
        secret = self._authenticated(request, native=native)
        if secret is None:
            return self._reply(record, 401, grpc_error(401, "Unknown api key"))
        behavior, fails = self._take()
        if fails:
            assert behavior.status is not None
            body = behavior.error_body if behavior.error_body is not None else grpc_error(behavior.status, f"HTTP {behavior.status}")
            return self._reply(record, behavior.status, self._leak(body, secret, str(request.url)), dict(behavior.error_headers))
        if not isinstance(record.body, dict):
            return self._reply(record, 400, grpc_error(400, "Failed to parse request body"))
        folder = request.headers.get("x-folder-id")
        if folder is not None and folder != self.folder:
            return self._reply(record, 400, grpc_error(
                400, f"Specified folder ID '{folder}' does not match with service account folder ID '{self.folder}'"))
        handlers = {"/foundationModels/v1/completion": self._completion, "/foundationModels/v1/textEmbedding": self._embedding,
                    "/v1/chat/completions": self._compat_chat, "/v1/embeddings": self._compat_embedding}
        handler = handlers.get(path)
        if handler is None or request.method != "POST":
            return self._reply(record, 404, grpc_error(404, f"Not found: {path}"))
        return await handler(request, record, behavior)

    def _model_error(self, uri: Any, scheme: str) -> str | None:
        if not isinstance(uri, str) or not uri.startswith(f"{scheme}://"):
            return f"Failed to parse model URI: {uri!r}"
        if not uri.startswith(f"{scheme}://{self.folder}/"):
            return "Permission denied: the model's folder is not this service account's"
        return None

    # ---- native

    def _answer_of(self, body: dict, behavior: YandexBehavior) -> tuple[str | None, list[dict] | None]:
        """(text, tool calls) for a native body: a tool call when tools are offered and not yet answered."""
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        if behavior.tool_call is not None and body.get("tools") and "toolResultList" not in last:
            return None, [{"functionCall": dict(behavior.tool_call)}]
        if "toolResultList" in last:
            results = last["toolResultList"]["toolResults"]
            return "Результат: " + "; ".join(f"{r['functionResult']['name']} = {r['functionResult']['content']}" for r in results), None
        return behavior.text, None

    def _result(self, message: dict, status: str, usage: dict | None) -> bytes:
        result: dict[str, Any] = {"alternatives": [{"message": message, "status": status}], "modelVersion": MODEL_VERSION}
        if usage is not None:
            result["usage"] = usage
        return orjson.dumps({"result": result})

    @staticmethod
    def _usage(prompt: int, completion: int, reasoning: int) -> dict:
        return {"inputTextTokens": str(prompt), "completionTokens": str(completion + reasoning),
                "totalTokens": str(prompt + completion + reasoning), "completionTokensDetails": {"reasoningTokens": str(reasoning)}}

    async def _completion(self, request: web.Request, record: RecordedRequest, behavior: YandexBehavior) -> web.StreamResponse:
        body = record.body
        problem = self._model_error(body.get("modelUri"), "gpt")
        options = body.get("completionOptions") or {}
        max_tokens = options.get("maxTokens")
        if problem is None and max_tokens is not None and not (isinstance(max_tokens, str) and max_tokens.isdigit()):
            problem = "completionOptions.maxTokens: invalid value"  # int64 is a string in protobuf JSON (a number passes too, but we send strings)
        if problem is not None:
            return self._reply(record, 400 if "parse" in problem or "invalid" in problem else 403, grpc_error(
                400 if "parse" in problem or "invalid" in problem else 403, problem))
        if behavior.response_body is not None and not options.get("stream"):
            return self._reply(record, 200, behavior.response_body)
        prompt = prompt_tokens(body.get("messages") or [])
        text, calls = self._answer_of(body, behavior)
        pieces = words_of(text or "")
        status = behavior.final_status
        if calls is not None:
            status = "ALTERNATIVE_STATUS_TOOL_CALLS"
        elif max_tokens is not None and len(pieces) > int(max_tokens):
            pieces, status = pieces[:int(max_tokens)], "ALTERNATIVE_STATUS_TRUNCATED_FINAL"
        if options.get("stream"):
            return await self._native_stream(request, record, behavior, pieces, calls, status, prompt)
        message: dict[str, Any] = {"role": "assistant"}
        if calls is not None:
            message["toolCallList"] = {"toolCalls": calls}
        else:
            message["text"] = "".join(pieces)
        usage = None if behavior.omit_usage else self._usage(prompt, len(pieces) or len(calls or ()), behavior.reasoning_tokens)
        record.status, record.completed = 200, True
        return web.Response(status=200, body=self._result(message, status, usage), content_type="application/json")

    async def _native_stream(self, request: web.Request, record: RecordedRequest, behavior: YandexBehavior, pieces: list[str],
                             calls: list[dict] | None, status: str, prompt: int) -> web.StreamResponse:
        record.stream = True
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        record.status = 200
        await response.prepare(request)
        lines: list[bytes] = []
        for index in range(1, len(pieces) + 1):
            final = index == len(pieces) and calls is None
            message = {"role": "assistant", "text": "".join(pieces[:index])}
            usage = None if behavior.omit_usage else self._usage(prompt, index, behavior.reasoning_tokens if final else 0)
            lines.append(self._result(message, status if final else "ALTERNATIVE_STATUS_PARTIAL", usage))
        if calls is not None:
            usage = None if behavior.omit_usage else self._usage(prompt, len(calls), 0)
            lines.append(self._result({"role": "assistant", "toolCallList": {"toolCalls": calls}}, status, usage))
        for number, line in enumerate(lines):
            if behavior.stream_error_after is not None and number >= behavior.stream_error_after:
                error = behavior.stream_error_body if behavior.stream_error_body is not None else grpc_error(500, "Internal error")
                line = orjson.dumps(self._leak(error, request.headers.get("Authorization", ""), str(request.url)))
                await response.write(line + behavior.line_ending.encode())
                break
            if behavior.drop_after_lines is not None and number >= behavior.drop_after_lines:
                record.dropped = True
                if request.transport is not None:
                    request.transport.close()
                raise asyncio.CancelledError
            if behavior.chunk_delay_ms and number:
                await asyncio.sleep(behavior.chunk_delay_ms / 1000)
            if not await self._write(response, record, line + behavior.line_ending.encode(), behavior.write_bytes):
                return response
            record.events_sent += 1
        await response.write_eof()
        record.completed = True
        return response

    @staticmethod
    async def _write(response: web.StreamResponse, record: RecordedRequest, data: bytes, size: int) -> bool:
        step = size or len(data)
        try:
            for start in range(0, len(data), step):
                await response.write(data[start:start + step])
                if size:
                    await asyncio.sleep(0.001)  # separate network reads, so multi-byte characters are cut
        except ConnectionResetError:
            record.client_disconnected = True
            return False
        return True

    async def _embedding(self, request: web.Request, record: RecordedRequest, behavior: YandexBehavior) -> web.StreamResponse:
        body = record.body
        problem = self._model_error(body.get("modelUri"), "emb")
        if problem is not None or not isinstance(body.get("text"), str):
            return self._reply(record, 400, grpc_error(400, problem or "text: required"))
        return self._reply(record, 200, {"embedding": embedding_of(body["text"]), "numTokens": str(len(body["text"].split()) + 1),
                                         "modelVersion": MODEL_VERSION})

    # ---- OpenAI-compatible

    async def _compat_chat(self, request: web.Request, record: RecordedRequest, behavior: YandexBehavior) -> web.StreamResponse:
        body = record.body
        problem = self._model_error(body.get("model"), "gpt")
        if problem is not None:
            return self._reply(record, 400, grpc_error(400, problem))
        native_messages = [{"text": str(m.get("content") or "")} for m in body.get("messages") or []]
        prompt = prompt_tokens(native_messages)
        last = (body.get("messages") or [{}])[-1]
        calls = None
        if behavior.tool_call is not None and body.get("tools") and last.get("role") != "tool":
            name = behavior.tool_call["name"]
            calls = [{"index": 0, "id": name, "type": "function",
                      "function": {"name": name, "arguments": orjson.dumps(behavior.tool_call["arguments"]).decode()}}]
        text = None if calls else behavior.text
        completion = len(words_of(text or "")) or 1
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        created, ident = int(time.time()), "3b6a1c2e-5f4d-4c2b-9a8e-1d2c3b4a5f6e"
        if body.get("stream"):
            return await self._compat_stream(request, record, behavior, body, text, calls, usage)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
        answer = {"id": ident, "object": "chat.completion", "created": created, "model": body["model"],
                  "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}], "usage": usage}
        return self._reply(record, 200, answer)

    async def _compat_stream(self, request: web.Request, record: RecordedRequest, behavior: YandexBehavior, body: dict,
                             text: str | None, calls: list[dict] | None, usage: dict) -> web.StreamResponse:
        record.stream, record.status = True, 200
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": "3b6a1c2e-5f4d-4c2b-9a8e-1d2c3b4a5f6e", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body["model"]}
        chunks = []
        if calls:
            chunks.append({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": calls}, "finish_reason": "tool_calls"}]})
        else:
            for number, piece in enumerate(words_of(text or "")):
                delta = {"role": "assistant", "content": piece} if number == 0 else {"content": piece}
                chunks.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        wants_usage = (body.get("stream_options") or {}).get("include_usage") is True
        if behavior.compat_usage_chunk if behavior.compat_usage_chunk is not None else wants_usage:
            chunks.append({**base, "choices": [], "usage": usage})
        for chunk in chunks:
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            record.events_sent += 1
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        record.completed = True
        return response

    async def _compat_embedding(self, request: web.Request, record: RecordedRequest, behavior: YandexBehavior) -> web.StreamResponse:
        body = record.body
        problem = self._model_error(body.get("model"), "emb")
        if problem is not None or not isinstance(body.get("input"), str):
            return self._reply(record, 400, grpc_error(400, problem or "input: a single string is required"))
        tokens = len(body["input"].split()) + 1
        return self._reply(record, 200, {"object": "list", "model": body["model"],
                                         "data": [{"object": "embedding", "index": 0, "embedding": embedding_of(body["input"])}],
                                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    # ---- IAM

    def _exchange(self, record: RecordedRequest) -> web.Response:
        jwt = record.body.get("jwt") if isinstance(record.body, dict) else None
        if not isinstance(jwt, str) or jwt.count(".") != 2:
            return self._reply(record, 400, {"code": 3, "message": "jwt: required", "details": []})
        header_b64, claims_b64, signature_b64 = jwt.split(".")
        header, claims = orjson.loads(_unb64(header_b64)), orjson.loads(_unb64(claims_b64))
        public = self.authorized_keys.get(header.get("kid"))
        if header.get("alg") != "PS256" or public is None or claims.get("aud") != self.iam_url or claims.get("exp", 0) < time.time():
            return self._reply(record, 401, {"code": 16, "message": "The token is invalid", "details": []})
        try:
            public.verify(_unb64(signature_b64), f"{header_b64}.{claims_b64}".encode(),
                          padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
        except InvalidSignature:
            return self._reply(record, 401, {"code": 16, "message": "The token signature is invalid", "details": []})
        with self._lock:
            self.issued += 1
            token = f"t1.9euelZexchanged{self.issued:04d}{claims['iss']}"
            self.iam_tokens.add(token)
        expires = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 12 * 3600)) + ".123456789Z"
        return self._reply(record, 200, {"iamToken": token, "expiresAt": expires})


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def embedding_of(text: str) -> list[float]:
    """A deterministic 8-dimensional vector for ``text`` (exactly representable in float32)."""
    seed = sum(text.encode())
    return [((seed * (i + 3)) % 64) / 64 - 0.5 for i in range(8)]


# --------------------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="session")
def fake_yandex_server():
    """One FakeYandex for the whole session (import into a test module or conftest to use)."""
    with FakeYandex() as fake:
        yield fake


@pytest.fixture
def fake_yandex(fake_yandex_server: FakeYandex):
    """The session's FakeYandex with default behaviour and no recorded requests, reset after the test."""
    fake_yandex_server.reset()
    yield fake_yandex_server
    fake_yandex_server.reset()
