"""The OpenAI Responses dialect: ``POST /v1/responses``.

Wire format: https://platform.openai.com/docs/api-reference/responses (create, the response
object), https://platform.openai.com/docs/api-reference/responses-streaming (typed events, each with
a ``sequence_number``) and the official SDK's types (``openai/types/responses``).

Request → canonical (OpenAI chat): ``instructions`` becomes the first system message; ``input`` as a
string a user message, as items: ``message`` items (``input_text``/``output_text`` → text parts,
``input_image`` → ``image_url``, ``input_file`` with ``file_data`` → a ``file`` part), ``function_call`` items → the assistant's ``tool_calls`` (consecutive
ones in one message), ``function_call_output`` items → ``tool`` messages; ``reasoning`` items are
dropped. Function ``tools`` (flat ``{type, name, parameters}``) → chat tools; ``tool_choice``;
``max_output_tokens`` → ``max_tokens``; ``temperature``, ``top_p``, ``parallel_tool_calls``; ``user``
or ``safety_identifier`` → ``user``; ``text.format`` (``json_schema``, ``json_object``) →
``response_format``; ``reasoning.effort`` → ``reasoning_effort``.

Nothing is stored: ``store`` is accepted whatever its value and the answer says ``store: false``.
``previous_response_id``, ``conversation``, ``item_reference`` items, ``background`` and ``prompt``
need responses kept by the server; they are refused with a 400 in OpenAI's error shape saying the
client must send the whole conversation in ``input``. Built-in tools (web search, file search,
computer use…) are refused the same way: an arbitrary upstream cannot run them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from apps.providers.adapters.base import CanonicalRequest
from lib.money import format_rub

from ..exceptions import ApiError, bad_request
from .base import Dialect, load_body
from .canonical import Answer, Piece, read_answer, read_pieces, sse

if TYPE_CHECKING:
    from ..pipeline.context import Call

STORED = ("previous_response_id", "conversation", "prompt")
NOT_STORED = ("This gateway does not keep responses: '{param}' is not supported. Send the whole conversation in "
              "'input' (earlier messages, function calls and their outputs) instead.")
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
KEEPALIVE = b": keep-alive\n\n"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def not_stored(param: str) -> ApiError:
    """The 400 for a feature that needs responses kept by the server."""
    return bad_request(NOT_STORED.format(param=param), param=param, code="unsupported_parameter")


def _text(parts: Any, where: str) -> str:
    """A string, or text parts joined (``function_call_output.output``, an assistant's history)."""
    if isinstance(parts, str):
        return parts
    if not isinstance(parts, list):
        raise bad_request(f"'{where}' must be a string or an array of content parts.", param=where, code="invalid_type")
    return "".join(str(p.get("text") or p.get("refusal") or "") for p in parts if isinstance(p, dict))


def _part(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return {"type": "text", "text": part["refusal"]}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        image = {"url": part["image_url"]}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file" and isinstance(part.get("file_data"), str):
        name = part.get("filename") if isinstance(part.get("filename"), str) else "document"
        return {"type": "file", "file": {"file_data": part["file_data"], "filename": name}}
    if kind == "input_file":
        raise bad_request(f"'{where}': files by 'file_id' or 'file_url' are not supported; send 'file_data' (a data URL).",
                          param=where, code="invalid_value")
    if kind == "input_image":
        raise bad_request(f"'{where}': images by 'file_id' are not supported; send 'image_url' (a URL or a data URL).",
                          param=where, code="invalid_value")
    raise bad_request(f"'{where}': unsupported content type {kind!r}.", param=where, code="invalid_value")


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise bad_request(f"'{where}.role' must be one of user, assistant, system, developer.", param=f"{where}.role",
                          code="invalid_value")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise bad_request(f"'{where}.content' must be a string or an array of content parts.", param=f"{where}.content",
                          code="invalid_type")
    parts = [_part(part, f"{where}.content[{index}]") for index, part in enumerate(content)]
    if role != "user":  # only a user turn takes images; the others are plain text for any upstream
        return {"role": role, "content": "".join(p.get("text", "") for p in parts)}
    return {"role": role, "content": parts}


def _function_call(item: dict[str, Any], where: str, out: list[dict[str, Any]]) -> None:
    if not isinstance(item.get("call_id"), str) or not isinstance(item.get("name"), str):
        raise bad_request(f"'{where}' needs 'call_id' and 'name'.", param=where, code="missing_required_parameter")
    call = {"id": item["call_id"], "type": "function",
            "function": {"name": item["name"], "arguments": item.get("arguments") if isinstance(item.get("arguments"), str) else "{}"}}
    last = out[-1] if out else None
    if last is not None and last["role"] == "assistant":  # a turn's text and its calls, or several calls: one message
        last.setdefault("tool_calls", []).append(call)
    else:
        out.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _item(item: Any, where: str, out: list[dict[str, Any]]) -> None:
    kind = item.get("type", "message") if isinstance(item, dict) else None
    if kind == "message":
        out.append(_message(item, where))
    elif kind == "function_call":
        _function_call(item, where, out)
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise bad_request(f"'{where}.call_id' is required.", param=f"{where}.call_id", code="missing_required_parameter")
        out.append({"role": "tool", "tool_call_id": item["call_id"], "content": _text(item.get("output", ""), f"{where}.output")})
    elif kind == "item_reference":
        raise not_stored(f"{where}.id")
    elif kind != "reasoning":
        raise bad_request(f"'{where}': unsupported input item type {kind!r}.", param=where, code="invalid_value")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad_request("'instructions' must be a string.", param="instructions", code="invalid_type")
    if instructions:
        out.append({"role": "system", "content": instructions})
    given = body.get("input")
    if isinstance(given, str) and given:
        out.append({"role": "user", "content": given})
    elif isinstance(given, list) and given:
        for index, item in enumerate(given):
            _item(item, f"input[{index}]", out)
    else:
        raise bad_request("'input' must be a non-empty string or array of input items.", param="input",
                          code="missing_required_parameter" if given is None else "invalid_value")
    if not any(m["role"] != "system" for m in out):
        raise bad_request("'input' holds no message for the model.", param="input", code="invalid_value")
    return out


def _tools(body: dict[str, Any], canonical: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools in (None, []):
        return
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array.", param="tools", code="invalid_type")
    mapped = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise bad_request(f"'tools[{index}]': only function tools ({{type: 'function', name, parameters}}) are supported "
                              "by this gateway; built-in tools are not.", param=f"tools[{index}]", code="invalid_value")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        mapped.append({"type": "function", "function": function})
    canonical["tools"] = mapped
    choice = body.get("tool_choice")
    if choice in ("auto", "none", "required"):
        canonical["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        canonical["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        raise bad_request("'tool_choice' must be 'auto', 'none', 'required' or {type: 'function', name}.", param="tool_choice",
                          code="invalid_value")


def _format(body: dict[str, Any], canonical: dict[str, Any]) -> None:
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return
    if fmt.get("type") == "json_object":
        canonical["response_format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema" and isinstance(fmt.get("name"), str) and isinstance(fmt.get("schema"), dict):
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        canonical["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        raise bad_request("'text.format' must be text, json_object or json_schema (with name and schema).", param="text.format",
                          code="invalid_value")


def _sampling(body: dict[str, Any], canonical: dict[str, Any]) -> None:
    for name, high in (("temperature", 2), ("top_p", 1)):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
            raise bad_request(f"'{name}' must be a number from 0 to {high}.", param=name, code="invalid_value")
        canonical[name] = value
    if isinstance(body.get("parallel_tool_calls"), bool) and "tools" in canonical:
        canonical["parallel_tool_calls"] = body["parallel_tool_calls"]
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str):
        canonical["user"] = user
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        canonical["reasoning_effort"] = reasoning["effort"]


def _refuse_stored(body: dict[str, Any]) -> None:
    for param in STORED:
        if body.get(param) not in (None, ""):
            raise not_stored(param)
    if body.get("background") is True:
        raise not_stored("background")


def parse_response_request(raw: bytes) -> CanonicalRequest:
    """A Responses create body → the canonical chat request. Raises ``ApiError`` 400 naming the
    field (``not_stored`` for what needs stored responses)."""
    body = load_body(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 128:
        raise bad_request("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    _refuse_stored(body)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean.", param="stream", code="invalid_type")
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise bad_request("'max_output_tokens' must be a positive integer.", param="max_output_tokens", code="invalid_value")
    canonical: dict[str, Any] = {"model": model, "messages": _messages(body)}
    if max_tokens is not None:
        canonical["max_tokens"] = max_tokens
    if stream:
        canonical["stream"] = True
    _tools(body, canonical)
    _sampling(body, canonical)
    _format(body, canonical)
    return CanonicalRequest("chat", model, canonical, stream, stream, max_tokens, 1)


# --------------------------------------------------------------------------- rendering


def _ids(call: Call) -> tuple[str, str]:
    hex_id = call.id.removeprefix("req_")
    return f"resp_{hex_id}", f"msg_{hex_id}"


def _usage(call: Call, upstream: dict[str, Any] | None) -> dict[str, Any]:
    """The billed usage in the Responses shape; reasoning tokens (part of the output) as the
    upstream's ``usage`` (``upstream``, canonical) reported them."""
    details = upstream.get("completion_tokens_details") if isinstance(upstream, dict) else None
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else 0
    return {"input_tokens": call.input_tokens, "input_tokens_details": {"cached_tokens": call.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": call.output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning if _is_int(reasoning) else 0},
            "total_tokens": call.input_tokens + call.output_tokens}


def _echo(call: Call) -> dict[str, Any]:
    """The request's settings a response object repeats (from the client's own body)."""
    try:
        body = orjson.loads(call.raw)
    except orjson.JSONDecodeError:
        body = {}
    body = body if isinstance(body, dict) else {}
    return {"instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
            "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
            "temperature": body.get("temperature"), "top_p": body.get("top_p"), "tool_choice": body.get("tool_choice") or "auto",
            "tools": body.get("tools") or [], "text": body.get("text") or {"format": {"type": "text"}},
            "user": body.get("user"), "reasoning": body.get("reasoning")}


def response_object(call: Call, *, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None,
                    finish_reason: str | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``response`` object for ``call`` (``status``: in_progress, completed, incomplete, failed)."""
    response_id, _ = _ids(call)
    reason = INCOMPLETE.get(finish_reason or "")
    if status == "completed" and reason:
        status = "incomplete"
    return {"id": response_id, "object": "response", "created_at": int(call.started), "status": status, "error": error,
            "incomplete_details": {"reason": reason} if status == "incomplete" else None, "model": call.route.name,
            "output": output, "previous_response_id": None, "store": False, "truncation": "disabled", **_echo(call),
            "usage": usage}


def _output(call: Call, answer: Answer) -> list[dict[str, Any]]:
    _, message_id = _ids(call)
    output: list[dict[str, Any]] = []
    text = answer.text or answer.refusal
    if text:
        output.append({"type": "message", "id": message_id, "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
    output.extend({"type": "function_call", "id": f"fc_{message_id[4:]}_{index}", "call_id": c.id, "name": c.name,
                   "arguments": c.arguments, "status": "completed"} for index, c in enumerate(answer.tool_calls))
    return output


class ResponsesStream:
    """The canonical stream as the Responses API's typed events (see the module docstring); every
    event carries its ``sequence_number``. Keep-alives are SSE comments."""

    keepalive = KEEPALIVE

    def __init__(self, call: Call) -> None:
        self._call = call
        self._sequence = 0
        self._started = False
        self._output: list[dict[str, Any]] = []  # finished items
        self._item: dict[str, Any] | None = None  # the open item
        self._key: tuple[str, int] | None = None  # ("text", 0) or ("tool", the call's canonical index)
        self._finish: str | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return sse(kind, payload)

    def _start(self) -> list[bytes]:
        self._started = True
        response = response_object(self._call, status="in_progress", output=[], usage=None)
        return [self._event("response.created", response=response), self._event("response.in_progress", response=response)]

    def _close(self) -> list[bytes]:
        item, self._item, self._key = self._item, None, None
        if item is None:
            return []
        index = len(self._output)
        item["status"] = "completed"
        out = []
        if item["type"] == "message":
            part = item["content"][0]
            out = [self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                               text=part["text"], logprobs=[]),
                   self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part)]
        else:
            out = [self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                               name=item["name"], arguments=item["arguments"])]
        self._output.append(item)
        return [*out, self._event("response.output_item.done", output_index=index, item=item)]

    def _open(self, key: tuple[str, int], item: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self._item, self._key = item, key
        index = len(self._output)
        out.append(self._event("response.output_item.added", output_index=index, item={**item, "content": []}
                               if item["type"] == "message" else dict(item)))
        if item["type"] == "message":
            out.append(self._event("response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                                   part={"type": "output_text", "text": "", "annotations": [], "logprobs": []}))
        return out

    def _piece(self, piece: Piece) -> list[bytes]:
        if piece.kind == "finish":
            self._finish = piece.text
            return []
        out: list[bytes] = []
        _, message_id = _ids(self._call)
        if piece.kind == "text":
            if self._key != ("text", 0):
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                out = self._open(("text", 0), {"type": "message", "id": f"{message_id}_{len(self._output)}", "status": "in_progress",
                                               "role": "assistant", "content": [part]})
            assert self._item is not None
            self._item["content"][0]["text"] += piece.text
            return [*out, self._event("response.output_text.delta", item_id=self._item["id"], output_index=len(self._output),
                                      content_index=0, delta=piece.text, logprobs=[])]
        if self._key != ("tool", piece.index):
            out = self._open(("tool", piece.index), {"type": "function_call", "id": f"fc_{message_id[4:]}_{piece.index}",
                                                     "call_id": piece.id or f"call_{piece.index}", "name": piece.name or "",
                                                     "arguments": "", "status": "in_progress"})
        assert self._item is not None
        if piece.text:
            self._item["arguments"] += piece.text
            out.append(self._event("response.function_call_arguments.delta", item_id=self._item["id"],
                                   output_index=len(self._output), delta=piece.text))
        return out

    def events(self, events: list[bytes]) -> bytes:
        """See ``StreamRenderer.events``."""
        out = [] if self._started else self._start()
        for event in events:
            for piece in read_pieces(event):
                out.extend(self._piece(piece))
        return b"".join(out)

    def end(self, usage_chunk: dict[str, Any] | None, error: ApiError | None) -> bytes:
        """See ``StreamRenderer.end``: ``response.completed`` (or ``response.incomplete``) with the
        billed usage and ``usage.cost`` (RUB); after a failure an ``error`` event and ``response.failed``."""
        out = [] if self._started else self._start()
        out.extend(self._close())
        if error is not None:
            failed = {"code": "rate_limit_exceeded" if error.status == 429 else "server_error", "message": error.message}
            out.append(self._event("error", code=error.code, message=error.message, param=error.param))
            response = response_object(self._call, status="failed", output=self._output, usage=None, error=failed)
            out.append(self._event("response.failed", response=response))
            return b"".join(out)
        usage = {**_usage(self._call, (usage_chunk or {}).get("usage")),
                 "cost": orjson.Fragment(format_rub(self._call.sell, 6).encode())}
        response = response_object(self._call, status="completed", output=self._output, usage=usage, finish_reason=self._finish)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        out.append(self._event(kind, response=response))
        return b"".join(out)


class ResponsesDialect(Dialect):
    """OpenAI Responses (see the module docstring). Errors keep OpenAI's shape."""

    name = "responses"

    def parse(self, endpoint: str, raw: bytes) -> CanonicalRequest:
        """See ``Dialect.parse`` (``parse_response_request``)."""
        return parse_response_request(raw)

    def render_body(self, call: Call, body: bytes) -> bytes:
        """See ``Dialect.render_body``: a ``response`` object with the billed usage."""
        answer = read_answer(body)
        try:
            usage_obj = orjson.loads(body).get("usage")
        except (orjson.JSONDecodeError, AttributeError):
            usage_obj = None
        return orjson.dumps(response_object(call, status="completed", output=_output(call, answer),
                                            usage=_usage(call, usage_obj if isinstance(usage_obj, dict) else None),
                                            finish_reason=answer.finish_reason))

    def stream_renderer(self, call: Call) -> ResponsesStream:
        """See ``Dialect.stream_renderer``."""
        return ResponsesStream(call)


RESPONSES = ResponsesDialect()
