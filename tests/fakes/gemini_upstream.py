"""FakeGemini: a real HTTP server on loopback that speaks Google's Gemini API (generativelanguage v1beta), for tests.

aiohttp in a background thread on 127.0.0.1 with an ephemeral port, like ``FakeOpenAI``. It answers

- ``POST /v1beta/models/{model}:generateContent`` — a ``GenerateContentResponse``;
- ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` — ``data: {GenerateContentResponse}`` events,
  no terminator (without ``alt=sse``: one JSON array, as Google does);
- ``POST /v1beta/models/{model}:batchEmbedContents`` and ``:embedContent``.

Like Google it authenticates ``x-goog-api-key`` (or ``?key=``, which it also accepts — and records, so a
test can prove the gateway never uses it): no key → 403 ``PERMISSION_DENIED``, a wrong key → **400**
``INVALID_ARGUMENT`` with ``ErrorInfo.reason`` ``API_KEY_INVALID``. It parses request JSON as strictly as
Google's proto parser: an unknown field anywhere (``max_tokens`` in ``generationConfig``,
``additionalProperties`` in a function's parameters…) is a 400 "Unknown name …". Roles must be
``user``/``model``, a turn answering function calls must answer each of them, and on Gemini 3 models
a replayed ``functionCall`` without ``thoughtSignature`` is refused, as Google documents.

Answers: text ("Gemini heard: <the last user text>"), a ``functionCall`` of the first declared function
when tools are given and the last turn is not a function response, a reply quoting the function
response after one. Usage in ``usageMetadata``: prompt = words of every text (+258 per image or file),
candidates = words generated, thoughts when asked for. Behaviours per test::

    fake.behavior(status=429, error_body=..., error_headers={"Retry-After": "7"})
    fake.behavior(thoughts="Let me think", cached_tokens=3, block_prompt="SAFETY", finish_reason="MAX_TOKENS")
    fake.behavior(stream_error_after=1)  # a raw (not ``data:``) google.rpc error JSON mid-stream, then the end
    fake.behavior(status=500, error_body=leaky_error())  # echoes its key and URL: "{key}", "{url}"
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any
from urllib.parse import unquote

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.fakes.openai_upstream import LEAKY_TEXT

DEFAULT_KEY = "AIzaSyFAKE-gemini-key-0123456789abcdefg"
OTHER_KEY = "AIzaSyFAKE-gemini-key-9876543210zyxwvut"
DEFAULT_MODELS = ("gemini-2.5-flash", "gemini-3-pro-preview", "gemini-embedding-001")
IMAGE_TOKENS = 258  # what Gemini counts for one image

_REQUEST_FIELDS = {"contents", "systemInstruction", "tools", "toolConfig", "safetySettings", "generationConfig", "cachedContent"}
_CONTENT_FIELDS = {"role", "parts"}
_PART_FIELDS = {"text", "inlineData", "fileData", "functionCall", "functionResponse", "thought", "thoughtSignature",
                "executableCode", "codeExecutionResult", "videoMetadata"}
_CONFIG_FIELDS = {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "candidateCount",
                  "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty", "frequencyPenalty",
                  "responseLogprobs", "logprobs", "thinkingConfig", "responseModalities", "mediaResolution"}
_TOOL_FIELDS = {"functionDeclarations", "googleSearch", "codeExecution", "urlContext"}
_DECLARATION_FIELDS = {"name", "description", "parameters", "parametersJsonSchema", "response", "behavior"}
_SCHEMA_FIELDS = {"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties", "required",
                  "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf", "propertyOrdering",
                  "default", "items", "minimum", "maximum"}
_TOOL_CONFIG_FIELDS = {"functionCallingConfig"}
_CALLING_FIELDS = {"mode", "allowedFunctionNames"}
_THINKING_FIELDS = {"thinkingBudget", "includeThoughts", "thinkingLevel"}


def google_error(code: int, status: str, message: str, details: list | None = None) -> dict:
    """A ``google.rpc.Status`` error body."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


def leaky_error(code: int = 500, status: str = "INTERNAL") -> dict:
    """A Google-shaped error whose message and details echo the key, the URL, hosts, addresses and a DSN."""
    return google_error(code, status, LEAKY_TEXT, [{"@type": "type.googleapis.com/google.rpc.DebugInfo", "detail": LEAKY_TEXT}])


def rate_limited(delay: str = "19s") -> dict:
    """Google's 429 with a QuotaFailure and a RetryInfo ``retryDelay``."""
    return google_error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details.", [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
         "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                         "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "quotaValue": "10"}]},
        {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Learn more", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}])


def invalid_key() -> dict:
    """Google's answer to a wrong API key: a 400, not a 401."""
    return google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
         "metadata": {"service": "generativelanguage.googleapis.com"}},
        {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": "API key not valid. Please pass a valid API key."}])


_DEFAULT_ERRORS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
}


def default_error(status: int) -> dict:
    if status == 429:
        return rate_limited()
    name, message = _DEFAULT_ERRORS.get(status, ("UNKNOWN", f"HTTP {status}."))
    return google_error(status, name, message)


class Refused(Exception):
    """A request the fake refuses the way Google would: status + body."""

    def __init__(self, status: int, body: dict) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _unknown(name: str, where: str) -> Refused:
    message = f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': Cannot find field."
    return Refused(400, google_error(400, "INVALID_ARGUMENT", message, [
        {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": where, "description": message}]}]))


def _bad(message: str) -> Refused:
    return Refused(400, google_error(400, "INVALID_ARGUMENT", message))


def _fields(obj: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(obj, dict):
        raise _bad(f"Invalid value at '{where}': expected an object.")
    for name in obj:
        if name not in allowed:
            raise _unknown(name, where)
    return obj


_FORMATS = {"STRING": {"enum", "date-time"}, "INTEGER": {"int32", "int64"}, "NUMBER": {"float", "double"}}


def _schema(schema: Any, where: str) -> None:
    _fields(schema, _SCHEMA_FIELDS, where)
    kind = str(schema.get("type", "")).upper()
    if "format" in schema and schema["format"] not in _FORMATS.get(kind, ()):
        raise _bad(f"* GenerateContentRequest.{where}.format: only {sorted(_FORMATS.get(kind, ()))} are supported for {kind} type")
    if schema.get("type", "object").upper() == "OBJECT" and "properties" in schema and not schema["properties"]:
        raise _bad(f"* GenerateContentRequest.{where}.properties: should be non-empty for OBJECT type")
    for name, value in (schema.get("properties") or {}).items():
        _schema(value, f"{where}.properties[{name}].value")
    if "items" in schema:
        _schema(schema["items"], f"{where}.items")
    for i, variant in enumerate(schema.get("anyOf") or []):
        _schema(variant, f"{where}.any_of[{i}]")


def validate(body: Any, model: str) -> None:
    """Refuse what Google's parser and validator refuse (the parts these tests exercise)."""
    _fields(body, _REQUEST_FIELDS, "")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _bad("* GenerateContentRequest.contents: contents is not specified")
    if "systemInstruction" in body:
        _parts(_fields(body["systemInstruction"], _CONTENT_FIELDS, "system_instruction").get("parts"), "system_instruction")
    pending_calls = 0
    for i, content in enumerate(contents):
        _fields(content, _CONTENT_FIELDS, f"contents[{i}]")
        if content.get("role") not in ("user", "model"):
            raise _bad(f"Please use a valid role: user, model. (contents[{i}].role: {content.get('role')!r})")
        parts = _parts(content.get("parts"), f"contents[{i}]")
        calls = [p for p in parts if "functionCall" in p]
        responses = [p for p in parts if "functionResponse" in p]
        if pending_calls and len(responses) != pending_calls:
            raise _bad("Please ensure that the number of function response parts is equal to the number of function call parts "
                       "of the function call turn.")
        if calls and model.startswith("gemini-3") and "thoughtSignature" not in calls[0]:
            raise _bad(f"Function call `{calls[0]['functionCall'].get('name')}` in the {i + 1}. content block is missing a "
                       "`thought_signature`.")
        pending_calls = len(calls) if content["role"] == "model" else 0
    for i, tool in enumerate(body.get("tools") or []):
        for j, declaration in enumerate(_fields(tool, _TOOL_FIELDS, f"tools[{i}]").get("functionDeclarations") or []):
            _fields(declaration, _DECLARATION_FIELDS, f"tools[{i}].function_declarations[{j}]")
            if "parameters" in declaration:
                _schema(declaration["parameters"], f"tools[{i}].function_declarations[{j}].parameters")
    if "toolConfig" in body:
        calling = _fields(body["toolConfig"], _TOOL_CONFIG_FIELDS, "tool_config").get("functionCallingConfig") or {}
        _fields(calling, _CALLING_FIELDS, "tool_config.function_calling_config")
    config = _fields(body.get("generationConfig", {}), _CONFIG_FIELDS, "generation_config")
    if "thinkingConfig" in config:
        _fields(config["thinkingConfig"], _THINKING_FIELDS, "generation_config.thinking_config")
    if "responseSchema" in config:
        _schema(config["responseSchema"], "generation_config.response_schema")


def _parts(parts: Any, where: str) -> list[dict]:
    if not isinstance(parts, list) or not parts:
        raise _bad(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
    for j, part in enumerate(parts):
        _fields(part, _PART_FIELDS, f"{where}.parts[{j}]")
        if "inlineData" in part:
            _fields(part["inlineData"], {"mimeType", "data"}, f"{where}.parts[{j}].inline_data")
        if "fileData" in part:
            _fields(part["fileData"], {"mimeType", "fileUri"}, f"{where}.parts[{j}].file_data")
        if "functionCall" in part and not isinstance(part["functionCall"].get("args", {}), dict):
            raise _bad(f"Invalid value at '{where}.parts[{j}].function_call.args': expected an object.")
        if "functionResponse" in part and not isinstance(part["functionResponse"].get("response"), dict):
            raise _bad(f"Invalid value at '{where}.parts[{j}].function_response.response': expected an object.")
    return parts


def _words(value: Any) -> int:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return len(text.split())


def prompt_tokens(body: dict) -> int:
    """What the fake reports as ``promptTokenCount``: words of every text (system included), JSON words of
    function calls and responses, ``IMAGE_TOKENS`` per inline or file part."""
    contents = list(body.get("contents") or [])
    if "systemInstruction" in body:
        contents.append(body["systemInstruction"])
    total = 0
    for content in contents:
        for part in content.get("parts") or []:
            if "text" in part:
                total += _words(part["text"])
            elif "inlineData" in part or "fileData" in part:
                total += IMAGE_TOKENS
            else:
                total += _words(part.get("functionCall") or part.get("functionResponse") or "")
    return max(total, 1)


@dataclasses.dataclass(frozen=True)
class Behavior:
    """What the fake does with the next requests. ``FakeGemini.behavior(**changes)`` replaces fields."""

    status: int | None = None  # answer every request (after auth) with this status…
    error_body: Any = None  # …and this body (a dict as JSON, a str as is); None → Google's error for the status
    error_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    fail_times: int | None = None  # only the next N requests fail; None → all
    reply: str | None = None  # the answer's text; None → "Gemini heard: <last user text>"
    chunks: int = 3  # stream pieces of the text
    thoughts: str | None = None  # a thought part ("thought": true) before the answer, counted in thoughtsTokenCount
    cached_tokens: int = 0  # reported as cachedContentTokenCount (and inside promptTokenCount)
    tool_use_prompt_tokens: int = 0  # reported as toolUsePromptTokenCount
    thought_signature: str | None = None  # sent with a functionCall part (Gemini 3 does)
    finish_reason: str | None = None  # instead of STOP
    block_prompt: str | None = None  # a promptFeedback.blockReason answer with no candidates
    omit_usage: bool = False
    response_body: Any = None  # a 200 answer with exactly this JSON body
    drop_after_chunks: int | None = None  # cut the connection after K stream events
    end_after_chunks: int | None = None  # end the stream cleanly after K events, before the one with finishReason
    stream_error_after: int | None = None  # after K stream events, a raw google.rpc error JSON (no ``data:``), then the end
    stream_error_body: Any = None  # …this one; None → a 500 INTERNAL
    stream_error_as_data: bool = False  # send the mid-stream error as a ``data:`` event instead


@dataclasses.dataclass
class RecordedRequest:
    method: str
    path: str  # decoded path, e.g. /v1beta/models/gemini-2.5-flash:generateContent
    url: str  # the whole URL as received, query included
    query: dict[str, str]
    headers: CIMultiDict
    body: Any
    received_at: float
    status: int | None = None
    events_sent: int = 0


class FakeGemini:
    """A real Gemini-API HTTP server on 127.0.0.1:<ephemeral port>, run in a background thread."""

    def __init__(self, *, expected_keys: tuple[str, ...] = (DEFAULT_KEY, OTHER_KEY), models: tuple[str, ...] = DEFAULT_MODELS) -> None:
        self.expected_keys = set(expected_keys)
        self.models = models
        self.port: int | None = None
        self._behavior = Behavior()
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeGemini is not started")
        return f"http://127.0.0.1:{self.port}/v1beta"

    @property
    def api_key(self) -> str:
        return DEFAULT_KEY

    def start(self) -> FakeGemini:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fake-gemini", daemon=True)
        self._thread.start()
        if not ready.wait(10) or self.port is None:
            raise RuntimeError("FakeGemini did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        self.port = None

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            ready.set()
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    # ----------------------------------------------------------------- test controls

    def behavior(self, **changes: Any) -> Behavior:
        """Change how the next requests are answered (see ``Behavior``)."""
        with self._lock:
            self._behavior = dataclasses.replace(self._behavior, **changes)
            return self._behavior

    def reset(self) -> None:
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
                raise AssertionError("FakeGemini has received no request")
            return self._requests[-1]

    # ----------------------------------------------------------------- serving

    def _take_behavior(self) -> tuple[Behavior, bool]:
        with self._lock:
            behavior = self._behavior
            fails = behavior.status is not None
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
        record = RecordedRequest(method=request.method, path=unquote(request.path), url=str(request.url),
                                 query=dict(request.query), headers=CIMultiDict(request.headers), body=body, received_at=time.time())
        with self._lock:
            self._requests.append(record)
        try:
            return await self._answer(request, record)
        except Refused as refused:
            return self._json(record, refused.status, self._echo(refused.body, request))

    def _json(self, record: RecordedRequest, status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
        record.status = status
        text = payload if isinstance(payload, str) else orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode()
        return web.Response(status=status, text=text, content_type="application/json", headers=headers)

    @staticmethod
    def _echo(payload: Any, request: web.Request) -> Any:
        """``payload`` with "{key}" and "{url}" replaced by the presented key and the request's URL."""
        if isinstance(payload, str):
            key = request.headers.get("x-goog-api-key") or request.query.get("key", "")
            return payload.replace("{key}", key).replace("{url}", str(request.url))
        if isinstance(payload, dict):
            return {k: FakeGemini._echo(v, request) for k, v in payload.items()}
        if isinstance(payload, list):
            return [FakeGemini._echo(v, request) for v in payload]
        return payload

    def _authenticate(self, request: web.Request) -> None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            raise Refused(403, google_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without "
                                            "established identity). Please use API Key or other form of API consumer identity to call this API."))
        if key not in self.expected_keys:
            raise Refused(400, invalid_key())

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        self._authenticate(request)
        behavior, fails = self._take_behavior()
        if fails:
            assert behavior.status is not None
            payload = behavior.error_body if behavior.error_body is not None else default_error(behavior.status)
            return self._json(record, behavior.status, self._echo(payload, request), self._echo(dict(behavior.error_headers), request))
        path = record.path
        prefix = "/v1beta/models/"
        model, _, method = path[len(prefix):].partition(":") if path.startswith(prefix) else ("", "", "")
        if request.method != "POST" or not method:
            raise Refused(404, google_error(404, "NOT_FOUND", f"Invalid URL ({request.method} {path})"))
        if model not in self.models:
            raise Refused(404, google_error(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta, or is not "
                                            f"supported for {method}. Call ListModels to see the list of available models."))
        if method in ("batchEmbedContents", "embedContent"):
            return self._json(record, 200, self._embed(method, model, record.body))
        if method not in ("generateContent", "streamGenerateContent"):
            raise Refused(404, google_error(404, "NOT_FOUND", f"Method {method} not found."))
        validate(record.body, model)
        if behavior.response_body is not None:
            return self._json(record, 200, behavior.response_body)
        pieces = self._pieces(record.body, behavior)
        if method == "generateContent":
            return self._json(record, 200, pieces[-1] if len(pieces) == 1 else self._merge(pieces))
        if request.query.get("alt") != "sse":
            return self._json(record, 200, pieces)  # Google's non-SSE stream: one JSON array
        return await self._stream(request, record, behavior, pieces)

    # ----------------------------------------------------------------- answers

    def _usage(self, body: dict, behavior: Behavior, generated: int, thoughts: int) -> dict:
        prompt = prompt_tokens(body) + behavior.cached_tokens
        usage = {"promptTokenCount": prompt, "candidatesTokenCount": generated,
                 "totalTokenCount": prompt + generated + thoughts + behavior.tool_use_prompt_tokens,
                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        if behavior.cached_tokens:
            usage["cachedContentTokenCount"] = behavior.cached_tokens
        if behavior.tool_use_prompt_tokens:
            usage["toolUsePromptTokenCount"] = behavior.tool_use_prompt_tokens
        return usage

    def _pieces(self, body: dict, behavior: Behavior) -> list[dict]:
        """The answer as stream chunks (a non-streamed answer is their merge): thoughts, then the text in
        ``behavior.chunks`` pieces or one function call; the last chunk carries ``finishReason``; every
        chunk carries the running ``usageMetadata``."""
        if behavior.block_prompt:
            return [{"promptFeedback": {"blockReason": behavior.block_prompt, "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
                "usageMetadata": self._usage(body, behavior, 0, 0), "modelVersion": "gemini-fake-001"}]
        count = int((body.get("generationConfig") or {}).get("candidateCount") or 1)
        parts_list = self._answer_parts(body, behavior)
        thoughts = _words(behavior.thoughts) if behavior.thoughts else 0
        pieces, generated = [], 0
        for position, parts in enumerate(parts_list):
            generated += sum(_words(p.get("text") or p.get("functionCall") or "") for p in parts if not p.get("thought"))
            last = position == len(parts_list) - 1
            candidates = []
            for index in range(count):
                candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": index}
                if last:
                    candidate["finishReason"] = behavior.finish_reason or "STOP"
                candidates.append(candidate)
            piece: dict[str, Any] = {"candidates": candidates, "modelVersion": "gemini-fake-001", "responseId": "fakeResp123"}
            if not behavior.omit_usage:
                piece["usageMetadata"] = self._usage(body, behavior, generated * count, thoughts)
            pieces.append(piece)
        return pieces

    def _answer_parts(self, body: dict, behavior: Behavior) -> list[list[dict]]:
        out: list[list[dict]] = []
        if behavior.thoughts:
            out.append([{"text": behavior.thoughts, "thought": True}])
        last = body["contents"][-1]["parts"]
        declarations = [d for tool in body.get("tools") or [] for d in tool.get("functionDeclarations") or []]
        mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode", "AUTO")
        answered = [p["functionResponse"] for p in last if "functionResponse" in p]
        if declarations and not answered and mode != "NONE" and behavior.reply is None:
            allowed = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("allowedFunctionNames")
            declaration = next(d for d in declarations if not allowed or d["name"] in allowed)
            args = {name: "Rome" for name in (declaration.get("parameters") or {}).get("required") or []}
            part: dict[str, Any] = {"functionCall": {"name": declaration["name"], "args": args}}
            if behavior.thought_signature:
                part["thoughtSignature"] = behavior.thought_signature
            out.append([part])
            return out
        if answered:
            text = behavior.reply or "The tool said: " + " ".join(orjson.dumps(a["response"]).decode() for a in answered)
        else:
            heard = " ".join(p["text"] for p in last if "text" in p)
            text = behavior.reply if behavior.reply is not None else f"Gemini heard: {heard}"
        words = text.split(" ")
        size = max(1, -(-len(words) // max(1, behavior.chunks)))
        for start in range(0, len(words), size):
            piece = " ".join(words[start:start + size])
            out.append([{"text": piece if start == 0 else " " + piece}])
        return out

    @staticmethod
    def _merge(pieces: list[dict]) -> dict:
        merged = dict(pieces[-1])
        candidates = []
        for candidate in pieces[-1]["candidates"]:
            parts: list[dict] = []
            for piece in pieces:
                source = piece["candidates"][candidate["index"]]["content"]["parts"]
                for part in source:
                    if parts and "text" in part and "text" in parts[-1] and bool(part.get("thought")) == bool(parts[-1].get("thought")):
                        parts[-1] = {**parts[-1], "text": parts[-1]["text"] + part["text"]}
                    else:
                        parts.append(dict(part))
            candidates.append({**candidate, "content": {"role": "model", "parts": parts}})
        merged["candidates"] = candidates
        return merged

    def _embed(self, method: str, model: str, body: Any) -> dict:
        requests = body.get("requests") if method == "batchEmbedContents" and isinstance(body, dict) else [body]
        if not isinstance(requests, list) or not requests:
            raise _bad("* BatchEmbedContentsRequest.requests: requests is not specified")
        vectors = []
        for i, item in enumerate(requests):
            _fields(item, {"model", "content", "taskType", "title", "outputDimensionality"}, f"requests[{i}]")
            if method == "batchEmbedContents" and item.get("model") != f"models/{model}":
                raise _bad(f"Model names should be in the form models/{{model}} and match the batch request's model "
                           f"(requests[{i}].model: {item.get('model')!r}).")
            text = " ".join(p.get("text", "") for p in _parts((item.get("content") or {}).get("parts"), f"requests[{i}].content"))
            size = int(item.get("outputDimensionality") or 8)
            vectors.append({"values": [round(((len(text) + 1) * (k + 3)) % 97 / 97, 6) for k in range(size)]})
        return {"embeddings": vectors} if method == "batchEmbedContents" else {"embedding": vectors[0]}

    async def _stream(self, request: web.Request, record: RecordedRequest, behavior: Behavior, pieces: list[dict]) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        record.status = 200
        await response.prepare(request)
        for piece in pieces:
            if behavior.stream_error_after is not None and record.events_sent >= behavior.stream_error_after:
                error = self._echo(behavior.stream_error_body if behavior.stream_error_body is not None else default_error(500), request)
                encoded = orjson.dumps(error)
                # Google sends a failure mid-stream as raw JSON (pretty-printed, no ``data:``); some proxies as an event.
                await response.write(b"data: " + encoded + b"\r\n\r\n" if behavior.stream_error_as_data
                                     else orjson.dumps(error, option=orjson.OPT_INDENT_2) + b"\n")
                break
            if behavior.end_after_chunks is not None and record.events_sent >= behavior.end_after_chunks:
                break
            if behavior.drop_after_chunks is not None and record.events_sent >= behavior.drop_after_chunks:
                if request.transport is not None:
                    request.transport.close()
                raise asyncio.CancelledError
            await response.write(b"data: " + orjson.dumps(piece) + b"\r\n\r\n")
            record.events_sent += 1
        await response.write_eof()
        return response


# --------------------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="session")
def fake_gemini_server():
    """One FakeGemini for the whole session (import into a conftest or test module to use)."""
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def fake_gemini(fake_gemini_server: FakeGemini):
    """The session's FakeGemini with default behaviour and no recorded requests, reset after the test."""
    fake_gemini_server.reset()
    yield fake_gemini_server
    fake_gemini_server.reset()
