"""The Anthropic Messages dialect: ``POST /v1/messages`` (and ``/v1/messages/count_tokens``).

Wire format: https://docs.anthropic.com/en/api/messages (request, response, errors),
https://docs.anthropic.com/en/docs/build-with-claude/streaming (the named-event stream) and the
official SDK's types (``anthropic/types``: ``Message``, ``RawMessageStreamEvent``, ``ErrorType``).

Request → canonical (OpenAI chat): ``system`` (a string or text blocks) becomes the first system
message; ``text`` blocks text parts; ``image`` blocks (``base64`` or ``url`` source) ``image_url``
parts (a base64 source as a data URL); ``document`` blocks ``file`` parts (base64, as a data URL) or text
parts (a ``text`` source); an assistant's ``tool_use`` blocks its ``tool_calls`` (input
as a JSON text); a user's ``tool_result`` blocks ``tool`` messages placed before the rest of that
user turn; ``tools`` (``input_schema``) function tools; ``tool_choice`` auto/any/tool/none →
auto/required/{function}/none; ``stop_sequences`` → ``stop``; ``metadata.user_id`` → ``user``.
Dropped: ``top_k``, ``thinking``, ``cache_control`` and ``thinking`` blocks (the upstream may not be
Anthropic). ``max_tokens`` is required, as Anthropic requires it.

Canonical answer → Anthropic: content ``text`` and ``tool_use`` blocks; ``finish_reason`` stop →
``end_turn``, length → ``max_tokens``, tool_calls/function_call → ``tool_use``, content_filter →
``refusal``; an answer with tool calls stops with ``tool_use`` whatever its ``finish_reason`` (OpenAI
says "stop" after a call it was told to make by name). Usage is the billed usage, in Anthropic's meaning: ``input_tokens`` excludes the tokens
read from cache (``cache_read_input_tokens``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from apps.providers.adapters.base import CanonicalRequest
from lib.money import format_rub

from ..exceptions import ApiError, bad_request
from .base import Dialect, load_body
from .canonical import Piece, read_answer, read_pieces, sse

if TYPE_CHECKING:
    from ..pipeline.context import Call

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
# The gateway's HTTP statuses as Anthropic's error types (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 504: "timeout_error"}
# Anthropic's own overload is 529 ``overloaded_error``; the gateway's 503s (Redis unreachable, a model
# without a price) stay 503 and are ``api_error``: the SDK retries every 5xx alike.
PING = sse("ping", {"type": "ping"})
MAX_STOP_SEQUENCES = 4  # what OpenAI-wire upstreams take


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, high: float) -> float | None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high):
        raise bad_request(f"{name}: Input should be a number from 0 to {high}.", param=name, code="invalid_value")
    return value


def _text_of(blocks: Any, where: str) -> str:
    """A string, or text blocks joined: ``system`` and ``tool_result`` contents."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise bad_request(f"{where}: Input should be a valid string or a list of text blocks.", param=where, code="invalid_type")
    texts = []
    for index, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise bad_request(f"{where}.{index}: only text blocks are supported here.", param=f"{where}.{index}",
                              code="invalid_value")
        texts.append(block["text"])
    return "\n".join(texts)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64" and isinstance(source.get("data"), str):
        media = source.get("media_type") if isinstance(source.get("media_type"), str) else "image/png"
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{source['data']}"}}
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise bad_request(f"{where}.source: an image needs a 'base64' (media_type, data) or 'url' source.",
                      param=f"{where}.source", code="invalid_value")


def _document(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A ``document`` block: a base64 PDF (or other file) → a ``file`` part with a data URL; a plain
    ``text`` source → a text part."""
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64" and isinstance(source.get("data"), str):
        media = source.get("media_type") if isinstance(source.get("media_type"), str) else "application/pdf"
        name = block.get("title") if isinstance(block.get("title"), str) else "document"
        return {"type": "file", "file": {"file_data": f"data:{media};base64,{source['data']}", "filename": name}}
    if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    raise bad_request(f"{where}.source: a document needs a 'base64' (media_type, data) or 'text' source.",
                      param=f"{where}.source", code="invalid_value")


def _user_turn(content: list[Any], where: str) -> list[dict[str, Any]]:
    """A user turn's blocks → its ``tool`` messages (first, as OpenAI wants them right after the
    calls) and one user message with the rest."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        at = f"{where}.content.{index}"
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "document":
            parts.append(_document(block, at))
        elif kind == "tool_result" and isinstance(block.get("tool_use_id"), str):
            text = _text_of(block.get("content", ""), f"{at}.content")
            if block.get("is_error") is True:
                text = f"Error: {text}"
            tools.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        elif kind not in ("thinking", "redacted_thinking"):
            raise bad_request(f"{at}: unsupported content block type {kind!r} in a user turn.", param=at, code="invalid_value")
    return tools + ([{"role": "user", "content": parts}] if parts else [])


def _assistant_turn(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use" and isinstance(block.get("id"), str) and isinstance(block.get("name"), str):
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        elif kind not in ("thinking", "redacted_thinking"):
            at = f"{where}.content.{index}"
            raise bad_request(f"{at}: unsupported content block type {kind!r} in an assistant turn.", param=at,
                              code="invalid_value")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: Field required (a non-empty list).", param="messages",
                          code="missing_required_parameter" if messages is None else "invalid_type")
    out: list[dict[str, Any]] = []
    if body.get("system") not in (None, "", []):
        out.append({"role": "system", "content": _text_of(body["system"], "system")})
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise bad_request(f"{where}.role: Input should be 'user' or 'assistant'.", param=f"{where}.role", code="invalid_value")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
            raise bad_request(f"{where}.content: Input should be a string or a list of content blocks.",
                              param=f"{where}.content", code="invalid_type")
        out.extend(_user_turn(content, where) if role == "user" else [_assistant_turn(content, where)])
    return out


def _tools(body: dict[str, Any], canonical: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise bad_request("tools: Input should be a list.", param="tools", code="invalid_type")
    mapped = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or tool.get("type", "custom") != "custom":
            raise bad_request(f"tools.{index}: only client tools with a name and input_schema are supported "
                              "(Anthropic's server tools are not).", param=f"tools.{index}", code="invalid_value")
        function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        mapped.append({"type": "function", "function": function})
    if mapped:
        canonical["tools"] = mapped
        _tool_choice(body.get("tool_choice"), canonical)


def _tool_choice(choice: Any, canonical: dict[str, Any]) -> None:
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "tool" and isinstance(choice.get("name"), str):
        canonical["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif kind in ("auto", "any", "none"):
        canonical["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    else:
        raise bad_request("tool_choice: Input should be {'type': 'auto' | 'any' | 'none'} or {'type': 'tool', 'name': …}.",
                          param="tool_choice", code="invalid_value")
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        canonical["parallel_tool_calls"] = False


def _sampling(body: dict[str, Any], canonical: dict[str, Any]) -> None:
    for name, high in (("temperature", 1.0), ("top_p", 1.0)):
        if (value := _number(body, name, high)) is not None:
            canonical[name] = value
    top_k = body.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise bad_request("top_k: Input should be a non-negative integer.", param="top_k", code="invalid_value")
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOP_SEQUENCES:
            raise bad_request(f"stop_sequences: Input should be a list of at most {MAX_STOP_SEQUENCES} strings.",
                              param="stop_sequences", code="invalid_value")
        if stops:
            canonical["stop"] = stops
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        canonical["user"] = metadata["user_id"]


def _head(raw: bytes) -> tuple[dict[str, Any], str, bool]:
    body = load_body(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 128:
        raise bad_request("model: Field required (a non-empty string).", param="model", code="missing_required_parameter")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad_request("stream: Input should be a valid boolean.", param="stream", code="invalid_type")
    return body, model, stream


def parse_messages(raw: bytes, *, count_only: bool = False) -> CanonicalRequest:
    """A Messages body → the canonical chat request. ``count_only`` (``count_tokens``) does not
    require ``max_tokens``. Raises ``ApiError`` 400 naming the field, as Anthropic does (``max_tokens:
    Field required``)."""
    body, model, stream = _head(raw)
    max_tokens = body.get("max_tokens")
    if max_tokens is None and not count_only:
        raise bad_request("max_tokens: Field required", param="max_tokens", code="missing_required_parameter")
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise bad_request("max_tokens: Input should be a positive integer.", param="max_tokens", code="invalid_value")
    canonical: dict[str, Any] = {"model": model, "messages": _messages(body)}
    if max_tokens is not None:
        canonical["max_tokens"] = max_tokens
    if stream:
        canonical["stream"] = True
    _sampling(body, canonical)
    _tools(body, canonical)
    return CanonicalRequest("chat", model, canonical, stream, stream, max_tokens, 1)


# --------------------------------------------------------------------------- rendering


def message_id(call: Call) -> str:
    """``msg_<the request id's hex>``: the answer's id names the request."""
    return "msg_" + call.id.removeprefix("req_")


def usage(call: Call) -> dict[str, int]:
    """The billed usage in Anthropic's meaning (input without the cache reads)."""
    return {"input_tokens": max(0, call.input_tokens - call.cached_tokens), "output_tokens": call.output_tokens,
            "cache_read_input_tokens": call.cached_tokens, "cache_creation_input_tokens": 0}


def _tool_input(arguments: str) -> Any:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {"_raw_arguments": arguments}


def error_object(call: Call, error: ApiError) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message", "code"}, "request_id"}``; ``code`` is the
    gateway's own (``insufficient_balance`` …), an addition Anthropic clients ignore."""
    status = 400 if error.status == 499 else error.status
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    if error.type == "moderation_blocked":  # the gateway's own type: a client tells a policy refusal from a bad request
        kind = error.type
    return {"type": "error", "error": {"type": kind, "message": error.message, "code": error.code}, "request_id": call.id}


class AnthropicStream:
    """The canonical stream as Anthropic's named events: ``message_start``, then per content block
    ``content_block_start`` / ``content_block_delta`` (``text_delta``, ``input_json_delta``) /
    ``content_block_stop``, then ``message_delta`` (stop reason, billed usage, ``usage.cost`` in RUB)
    and ``message_stop``; a failure after the start is an ``event: error``. Keep-alives are ``ping``."""

    keepalive = PING

    def __init__(self, call: Call) -> None:
        self._call = call
        self._started = False
        self._index = -1  # the open content block's index (-1: none yet)
        self._open: tuple[str, int] | None = None  # ("text", 0) or ("tool", the call's canonical index)
        self._stop_reason = "end_turn"
        self._tools = False  # a tool_use block was sent

    def _start(self) -> list[bytes]:
        self._started = True
        call = self._call
        message: dict[str, Any] = {"id": message_id(call), "type": "message", "role": "assistant", "model": call.route.name, "content": [],
                   "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": call.input_tokens_estimate, "output_tokens": 0}}
        return [sse("message_start", {"type": "message_start", "message": message}), PING]

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [sse("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _open_block(self, key: tuple[str, int], block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self._index += 1
        self._open = key
        return [*out, sse("content_block_start", {"type": "content_block_start", "index": self._index, "content_block": block})]

    def _piece(self, piece: Piece) -> list[bytes]:
        if piece.kind == "finish":
            self._stop_reason = STOP_REASONS.get(piece.text, "end_turn")
            return []
        out: list[bytes] = []
        if piece.kind == "text":
            if self._open != ("text", 0):
                out = self._open_block(("text", 0), {"type": "text", "text": ""})
            delta = {"type": "text_delta", "text": piece.text}
        else:
            self._tools = True
            if self._open != ("tool", piece.index):
                block = {"type": "tool_use", "id": piece.id or f"toolu_{piece.index}", "name": piece.name or "", "input": {}}
                out = self._open_block(("tool", piece.index), block)
            if not piece.text:
                return out
            delta = {"type": "input_json_delta", "partial_json": piece.text}
        return [*out, sse("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta})]

    def events(self, events: list[bytes]) -> bytes:
        """See ``StreamRenderer.events``."""
        out = [] if self._started else self._start()
        for event in events:
            for piece in read_pieces(event):
                out.extend(self._piece(piece))
        return b"".join(out)

    def end(self, usage_chunk: dict[str, Any] | None, error: ApiError | None) -> bytes:
        """See ``StreamRenderer.end``."""
        if error is not None:
            return sse("error", error_object(self._call, error))
        out = [] if self._started else self._start()
        if self._tools:
            self._stop_reason = "tool_use"
        out.extend(self._close())
        billed: dict[str, Any] = {**usage(self._call), "cost": orjson.Fragment(format_rub(self._call.sell, 6).encode())}
        out.append(sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": self._stop_reason, "stop_sequence": None},
                                         "usage": billed}))
        out.append(sse("message_stop", {"type": "message_stop"}))
        return b"".join(out)


class AnthropicDialect(Dialect):
    """Anthropic Messages (see the module docstring)."""

    name = "anthropic"
    request_id_header = b"request-id"  # what the SDK reads into ``Message._request_id``

    def parse(self, endpoint: str, raw: bytes) -> CanonicalRequest:
        """See ``Dialect.parse`` (``parse_messages``)."""
        return parse_messages(raw)

    def render_body(self, call: Call, body: bytes) -> bytes:
        """See ``Dialect.render_body``: a ``message`` object with the public model name and the billed usage."""
        answer = read_answer(body)
        content: list[dict[str, Any]] = []
        if answer.text or answer.refusal:
            content.append({"type": "text", "text": answer.text or answer.refusal})
        content.extend({"type": "tool_use", "id": c.id, "name": c.name, "input": _tool_input(c.arguments)} for c in answer.tool_calls)
        stop = "tool_use" if answer.tool_calls else STOP_REASONS.get(answer.finish_reason or "stop", "end_turn")
        return orjson.dumps({"id": message_id(call), "type": "message", "role": "assistant", "model": call.route.name,
                             "content": content, "stop_reason": stop, "stop_sequence": None, "usage": usage(call)})

    def stream_renderer(self, call: Call) -> AnthropicStream:
        """See ``Dialect.stream_renderer``."""
        return AnthropicStream(call)

    def render_error(self, call: Call, error: ApiError) -> bytes:
        """See ``Dialect.render_error``: Anthropic's error object (``error_object``)."""
        return orjson.dumps(error_object(call, error))


ANTHROPIC = AnthropicDialect()
