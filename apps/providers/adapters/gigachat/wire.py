"""GigaChat's v1 REST wire format, piece by piece: the request map (OpenAI → GigaChat), the answer
map (GigaChat → OpenAI), usage, and error bodies.

Sources: https://developers.sber.ru/docs/ru/gigachat/api/reference/rest/post-chat (chat),
https://developers.sber.ru/docs/ru/gigachat/api/reference/rest/post-embeddings (embeddings),
https://developers.sber.ru/docs/ru/gigachat/api/errors-description (errors), and the official SDK's
models (https://github.com/ai-forever/gigachat, ``src/gigachat/models``).

GigaChat is OpenAI-like with these differences, all bridged here:

- tools are ``functions`` (name, description, parameters) and ``tool_choice`` is ``function_call``
  (``"auto"``, ``"none"`` or ``{"name": ...}``);
- an assistant's tool call is ``function_call: {"name", "arguments": <JSON object>}`` — one per
  message, its arguments an object, not a string — and there are no tool call ids (GigaChat's
  ``functions_state_id`` is used as the id when it sends one);
- a tool result is a ``function`` message with the function's ``name`` and JSON content;
- ``content`` is a string (no content parts), and only one system message, the first;
- answers have no ``id`` and a versioned ``model``; ``finish_reason`` says ``function_call`` and
  ``blacklist`` where OpenAI says ``tool_calls`` and ``content_filter``;
- usage has ``precached_prompt_tokens`` (a part of ``prompt_tokens``); embeddings report usage per
  item (``data[].usage.prompt_tokens``), none for the whole list.
"""

from __future__ import annotations

import base64
import re
import struct
import time
import uuid
from collections.abc import Iterable
from typing import Any

import orjson

from apps.providers.adapters.base import UpstreamFailure, Usage, rejected

PATHS = {"chat": "/chat/completions", "embedding": "/embeddings"}

# OpenAI chat fields GigaChat's v1 ``Chat`` takes as they are; every other field is dropped
# (``stop``, ``seed``, penalties, ``logprobs``, ``response_format``, ``user``…: GigaChat has none).
_PASSED = ("temperature", "top_p", "n", "repetition_penalty", "update_interval", "profanity_check", "reasoning_effort")
_FINISH_REASONS = {"stop": "stop", "length": "length", "function_call": "tool_calls", "blacklist": "content_filter"}
_STATE_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def request_url(base_url: str, endpoint: str) -> str:
    """``base_url`` (``…/api/v1``) + the endpoint's path. Raises ``UpstreamFailure`` (400) for the
    legacy completions endpoint, which GigaChat does not have."""
    path = PATHS.get(endpoint)
    if path is None:
        raise rejected(400, "GigaChat models serve /v1/chat/completions and /v1/embeddings only.", code="invalid_request")
    return base_url + path


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def _unsupported(message: str) -> UpstreamFailure:
    return rejected(400, message, code="unsupported_value")


# --------------------------------------------------------------------------- requests


def chat_body(body: dict[str, Any], *, upstream_model: str, stream: bool) -> dict[str, Any]:
    """GigaChat's ``POST /chat/completions`` body for an OpenAI chat body (see the module docstring).

    ``max_completion_tokens`` counts as ``max_tokens``. Raises ``UpstreamFailure`` (400) for what
    GigaChat cannot take: image or audio content parts, several tool calls in one assistant message,
    a tool result whose call is not in the conversation."""
    mapped: dict[str, Any] = {"model": upstream_model, "messages": chat_messages(body.get("messages") or []), "stream": stream}
    for name in _PASSED:
        if body.get(name) is not None:
            mapped[name] = body[name]
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        mapped["max_tokens"] = limit
    functions = _functions(body)
    if functions:
        mapped["functions"] = functions
        choice = _function_call(body, functions)
        if choice is not None:
            mapped["function_call"] = choice
    return mapped


def _functions(body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
        if isinstance(function, dict) and function.get("name"):
            spec = {"name": function["name"], "parameters": function.get("parameters") or {"type": "object", "properties": {}}}
            if function.get("description"):
                spec["description"] = function["description"]
            out.append(spec)
    legacy = body.get("functions")
    if not out and isinstance(legacy, list):
        out = [f for f in legacy if isinstance(f, dict)]
    return out


def _function_call(body: dict[str, Any], functions: list[dict[str, Any]]) -> str | dict[str, Any] | None:
    """OpenAI's ``tool_choice`` (or legacy ``function_call``) as GigaChat's ``function_call``.
    ``"required"`` has no GigaChat equivalent: it names the function when there is only one, else
    ``"auto"``."""
    choice = body.get("tool_choice", body.get("function_call"))
    if choice in ("auto", "none"):
        return choice
    if choice == "required":
        return {"name": functions[0]["name"]} if len(functions) == 1 else "auto"
    if isinstance(choice, dict):
        named = as_dict(choice.get("function")) or choice
        if isinstance(named.get("name"), str):
            return {"name": named["name"]}
    return None


def chat_messages(messages: Iterable[Any]) -> list[dict[str, Any]]:
    """OpenAI messages as GigaChat's: system and developer messages merged into one system message
    first; assistant ``tool_calls`` as ``function_call``; ``tool`` results as ``function`` messages
    named after their call. Raises ``UpstreamFailure`` (400) as ``chat_body`` says."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id → function name, for the tool results that follow
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text(message.get("content")))
        elif role == "assistant":
            out.append(_assistant(message, names))
        elif role == "tool":
            out.append(_tool_result(message, names))
        elif role == "function":
            out.append({"role": "function", "name": str(message.get("name") or ""), "content": _json_content(message.get("content"))})
        else:
            out.append({"role": "user", "content": _text(message.get("content"))})
    if system:
        out.insert(0, {"role": "system", "content": "\n\n".join(part for part in system if part)})
    return out


_PART_NAMES = {"image_url": "image", "image": "image", "input_audio": "audio", "file": "file (document)", "document": "file (document)"}


def _text(content: Any) -> str:
    """A message's content as GigaChat's string: text parts joined; any other part refused."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content if isinstance(content, list) else []:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            # Named in plain words, not by OpenAI's part type: an Anthropic client sent an image block,
            # not an ``image_url`` part, and must recognise what was refused.
            what = _PART_NAMES.get(str(kind), "non-text")
            raise _unsupported(f"GigaChat through this gateway takes text only; this request has {what} content. "
                               "Send the text alone, or choose a model that accepts it.")
        parts.append(str(part.get("text") or ""))
    return "".join(parts)


def _assistant(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    mapped: dict[str, Any] = {"role": "assistant", "content": _text(message.get("content"))}
    calls = message.get("tool_calls") or []
    if len(calls) > 1:
        raise _unsupported("GigaChat takes one tool call per assistant message.")
    call = calls[0] if calls else None
    function = call.get("function") if isinstance(call, dict) else message.get("function_call")
    if isinstance(function, dict) and function.get("name"):
        mapped["function_call"] = {"name": function["name"], "arguments": _arguments(function.get("arguments"))}
        call_id = call.get("id") if isinstance(call, dict) else None
        if isinstance(call_id, str):
            names[call_id] = function["name"]
            if _STATE_ID.match(call_id):  # GigaChat's own state id, given back as it asks
                mapped["functions_state_id"] = call_id
    return mapped


def _arguments(arguments: Any) -> dict[str, Any]:
    """OpenAI's arguments (a JSON string) as GigaChat's JSON object."""
    if isinstance(arguments, dict):
        return arguments
    try:
        decoded = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        raise _unsupported("A tool call's arguments must be a JSON object for GigaChat.") from None
    if not isinstance(decoded, dict):
        raise _unsupported("A tool call's arguments must be a JSON object for GigaChat.")
    return decoded


def _tool_result(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    name = message.get("name") or names.get(str(message.get("tool_call_id")))
    if not name:
        raise _unsupported("A tool message must answer a tool call made earlier in the conversation.")
    return {"role": "function", "name": name, "content": _json_content(message.get("content"))}


def _json_content(content: Any) -> str:
    """A function result as the JSON text GigaChat requires: JSON-object text as it is, anything else
    wrapped as ``{"result": <text>}``."""
    text = _text(content)
    try:
        if isinstance(orjson.loads(text), dict):
            return text
    except orjson.JSONDecodeError:
        pass
    return orjson.dumps({"result": text}).decode()


def embeddings_body(body: dict[str, Any], *, upstream_model: str) -> dict[str, Any]:
    """GigaChat's ``POST /embeddings`` body: ``{"model", "input": [texts]}``. Raises ``UpstreamFailure``
    (400) for token-id input, which GigaChat does not take."""
    given = body.get("input")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise _unsupported("GigaChat embeddings take text input (a string or a list of strings).")
    return {"model": upstream_model, "input": texts}


# --------------------------------------------------------------------------- answers


def usage_from(obj: Any) -> Usage | None:
    """A chat answer's or chunk's ``usage`` in tokens (``precached_prompt_tokens`` as the cached part
    of ``prompt_tokens``; ``completion_tokens`` include reasoning), or None when it has none."""
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    return Usage(prompt, completion, min(_count(usage.get("precached_prompt_tokens")), prompt))


def canonical_usage(usage: Usage) -> dict[str, Any]:
    """``usage`` in OpenAI's shape (``prompt_tokens_details.cached_tokens`` for the cached part)."""
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def finish_reason(reason: Any) -> str | None:
    """GigaChat's ``finish_reason`` in OpenAI's vocabulary (``error`` is handled as a failure before
    this); an unknown one is ``stop``."""
    if reason is None:
        return None
    return _FINISH_REASONS.get(reason, "stop")


def new_call_id() -> str:
    """A tool call id for a GigaChat function call that came without ``functions_state_id``."""
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_call(function_call: dict[str, Any], state_id: Any, *, index: int | None = None) -> dict[str, Any]:
    """GigaChat's ``function_call`` as an OpenAI tool call (arguments serialised to a JSON string)."""
    arguments = function_call.get("arguments")
    call: dict[str, Any] = {"id": state_id if isinstance(state_id, str) and state_id else new_call_id(), "type": "function",
            "function": {"name": str(function_call.get("name") or ""),
                         "arguments": arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode()}}
    return call if index is None else {"index": index, **call}


def chat_completion(obj: dict[str, Any], *, model: str) -> dict[str, Any]:
    """A GigaChat chat answer as OpenAI's ``chat.completion`` (a minted id, the public ``model``)."""
    choices = []
    for position, choice in enumerate(obj.get("choices") or []):
        if not isinstance(choice, dict):
            continue
        message = as_dict(choice.get("message"))
        choices.append({"index": choice.get("index", position), "message": _answer_message(message),
                        "finish_reason": finish_reason(choice.get("finish_reason")), "logprobs": None})
    created = obj.get("created")
    completion: dict[str, Any] = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                  "created": created if isinstance(created, int) else int(time.time()), "model": model, "choices": choices}
    usage = usage_from(obj)
    if usage is not None:
        completion["usage"] = canonical_usage(usage)
    return completion


def _answer_message(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    mapped: dict[str, Any] = {"role": "assistant", "content": content if isinstance(content, str) else None}
    if isinstance(message.get("reasoning_content"), str):
        mapped["reasoning_content"] = message["reasoning_content"]
    function_call = message.get("function_call")
    if isinstance(function_call, dict):
        mapped["tool_calls"] = [tool_call(function_call, message.get("functions_state_id"))]
        mapped["content"] = content or None
    return mapped


def generated_text(completion: dict[str, Any]) -> str:
    """Everything a canonical ``chat.completion`` holds as generated text (for local counting)."""
    parts: list[str] = []
    for choice in completion.get("choices") or []:
        message = choice.get("message") or {}
        parts.append(message.get("content") or "")
        parts.append(message.get("reasoning_content") or "")
        for call in message.get("tool_calls") or []:
            parts.append(call["function"]["name"] + call["function"]["arguments"])
    return "".join(parts)


def embeddings(obj: dict[str, Any], *, model: str, encoding: str | None) -> tuple[dict[str, Any], Usage]:
    """A GigaChat embeddings answer as OpenAI's (``usage`` summed from the items) and its usage.
    ``encoding`` ``"base64"`` packs each vector as little-endian float32 (what the OpenAI SDKs ask
    for by default). Raises ``ValueError`` for an item without a vector."""
    data, tokens = [], 0
    for position, item in enumerate(obj.get("data") or []):
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(vector, list):
            raise ValueError("an embeddings item without a vector")
        tokens += _count((item.get("usage") or {}).get("prompt_tokens")) if isinstance(item.get("usage"), dict) else 0
        encoded: Any = vector
        if encoding == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": item.get("index", position), "embedding": encoded})
    return ({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
            Usage(tokens, 0, 0))


# --------------------------------------------------------------------------- errors


def error_fields(body: bytes) -> tuple[str | None, int | None]:
    """(message, status) of a GigaChat error body exactly as the upstream wrote them — raw,
    unscrubbed. API errors are ``{"status": <int>, "message": "..."}``; the OAuth endpoint's are
    ``{"code": <int>, "message": "..."}`` (its small codes are not HTTP statuses: status None). A
    body that is not one gives (None, None)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(obj, dict) or obj.get("choices") or obj.get("data"):
        return None, None
    message = obj.get("message")
    status = obj.get("status")
    numeric = status if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599 else None
    return (message if isinstance(message, str) else None), numeric
