"""Anthropic's Messages wire format, piece by piece: request map, response map, usage, errors.

Sources: https://docs.anthropic.com/en/api/messages (request and response),
https://docs.anthropic.com/en/api/errors (error shapes and statuses), the official SDK's types
(https://github.com/anthropics/anthropic-sdk-python, ``src/anthropic/types/``: ``message_create_params``,
``message``, ``usage``, ``message_delta_usage``, ``stop_reason``).

Canonical (OpenAI chat) → Anthropic:

- ``system`` / ``developer`` messages → ``system`` (text blocks, in order, wherever they stood);
- ``user`` / ``assistant`` messages → turns of content blocks: text, images (a ``data:`` URL → a
  base64 source, an http(s) URL → a url source), PDF files (``file.file_data`` data URL → a
  ``document`` block); assistant ``tool_calls`` → ``tool_use`` blocks (arguments parsed from their
  JSON string); ``tool`` messages → ``tool_result`` blocks in a user turn; consecutive turns of one
  role are merged (the API wants user and assistant to alternate), tool results first in their turn;
- ``tools`` (functions) → ``tools`` with ``input_schema``; ``tool_choice`` auto/none/required→any/
  a named function→tool; ``parallel_tool_calls: false`` → ``disable_parallel_tool_use``;
- ``max_tokens`` / ``max_completion_tokens`` → ``max_tokens`` (required by Anthropic: a default when
  absent); ``stop`` → ``stop_sequences``; ``temperature``, ``top_p``; ``user`` → ``metadata.user_id``;
  ``stream``. A ``cache_control`` on a content part or tool is passed on (prompt caching).

Anything the canonical request cannot express for Anthropic (an unknown content part, arguments that
are not JSON, ``n`` > 1) raises ``RequestNotMappable``, answered 400 without calling the upstream.

Usage (``usage_from``): Anthropic's ``input_tokens`` EXCLUDES the prompt tokens read from and written
to the cache, so canonical input = ``input_tokens + cache_read_input_tokens +
cache_creation_input_tokens``, cached = ``cache_read_input_tokens`` and cache-write =
``cache_creation_input_tokens`` (billed at the cache-write price); output = ``output_tokens``
(thinking included: it is the billed total).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from apps.providers.adapters.base import Usage

MESSAGES_PATH = "/messages"
API_VERSION = "2023-06-01"
# From this API version on, temperature/top_p/top_k are refused with a 400, even at their defaults
# (https://platform.claude.com/docs/en/api/migration-2026-10-21): they are not sent.
NO_SAMPLING_VERSION = "2026-10-21"
# max_tokens is required by Anthropic; without one from the client or the provider's options, this.
DEFAULT_MAX_TOKENS = 4096

FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}
# An error's ``type`` (https://docs.anthropic.com/en/api/errors) → the HTTP status it stands for;
# a stream's error event carries only the type.
ERROR_STATUSES = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
    "timeout_error": 504, "overloaded_error": 529,
}


class RequestNotMappable(ValueError):
    """The canonical request holds something Anthropic's format cannot carry; the message says what
    (safe to show: it names only the client's own fields)."""


def messages_url(base_url: str) -> str:
    """``base_url`` (like ``https://api.anthropic.com/v1``) + ``/messages``."""
    return base_url + MESSAGES_PATH


def finish_reason(stop_reason: Any) -> str | None:
    """OpenAI's ``finish_reason`` for Anthropic's ``stop_reason`` (None stays None: not finished)."""
    if stop_reason is None:
        return None
    return FINISH_REASONS.get(stop_reason, "stop")


# --------------------------------------------------------------------------- request


def request_body(body: dict[str, Any], *, upstream_model: str, stream: bool, max_tokens: int,
                 api_version: str = API_VERSION) -> bytes:
    """The Messages request for canonical chat ``body`` (see the module docstring), as JSON bytes.

    ``max_tokens`` is used when the body names none; ``api_version`` is the ``anthropic-version``
    the request goes out with. Raises ``RequestNotMappable``."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise RequestNotMappable("Anthropic models generate one choice per request: 'n' must be 1.")
    system, messages = _conversation(body.get("messages") or [])
    mapped: dict[str, Any] = {"model": upstream_model, "messages": messages,
                              "max_tokens": _max_tokens(body) or max_tokens}
    if system:
        mapped["system"] = system
    _sampling(body, mapped, sampling=api_version < NO_SAMPLING_VERSION)
    _tooling(body, mapped)
    if stream:
        mapped["stream"] = True
    return orjson.dumps(mapped)


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _sampling(body: dict[str, Any], mapped: dict[str, Any], *, sampling: bool) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if sampling and isinstance(value, int | float) and not isinstance(value, bool):
            # OpenAI's temperature runs to 2, Anthropic's to 1: above it is "as random as it gets".
            mapped[name] = min(value, 1)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop:
        # Anthropic refuses whitespace-only stop sequences.
        mapped["stop_sequences"] = [s for s in stop if isinstance(s, str) and s.strip()]
    user = body.get("user")
    if isinstance(user, str) and user:
        mapped["metadata"] = {"user_id": user}


def _tooling(body: dict[str, Any], mapped: dict[str, Any]) -> None:
    tools = [_tool(tool) for tool in body.get("tools") or []]
    if tools:
        mapped["tools"] = tools
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and tools:
        choice = dict(choice or {"type": "auto"})
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if choice is not None and tools:  # a tool_choice without tools is refused upstream
        mapped["tool_choice"] = choice


def _tool(tool: Any) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise RequestNotMappable("Only function tools with a name can be sent to an Anthropic model.")
    mapped: dict[str, Any] = {"name": function["name"],
                              "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        mapped["description"] = function["description"]
    if isinstance(tool.get("cache_control"), dict):
        mapped["cache_control"] = tool["cache_control"]
    return mapped


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice in (None, "auto"):
        return None if choice is None else {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return {"type": "tool", "name": function["name"]}
    raise RequestNotMappable("'tool_choice' must be 'auto', 'none', 'required' or a named function.")


def _conversation(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, alternating turns) of the canonical messages."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_blocks(message.get("content"), role))
            continue
        if role == "tool":
            role, blocks = "user", [_tool_result(message)]
        elif role in ("user", "assistant"):
            blocks = _blocks(message.get("content"), role)
            if role == "assistant":
                blocks += [_tool_use(call) for call in message.get("tool_calls") or []]
        else:
            raise RequestNotMappable(f"Messages of role '{role}' cannot be sent to an Anthropic model.")
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":  # tool results must open their turn
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return system, turns


def _blocks(content: Any, role: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []  # empty text blocks are refused
    if not isinstance(content, list):
        raise RequestNotMappable(f"The content of a '{role}' message must be a string or a list of parts.")
    return [block for part in content if (block := _part(part)) is not None]


def _part(part: Any) -> dict[str, Any] | None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("text", "refusal"):
        text = part.get(kind)
        block: dict[str, Any] | None = {"type": "text", "text": text} if isinstance(text, str) and text else None
    elif kind == "image_url":
        block = _image(part.get("image_url"))
    elif kind == "file":
        block = _document(part.get("file"))
    else:
        raise RequestNotMappable(f"Content parts of type '{kind}' cannot be sent to an Anthropic model.")
    if block is not None and isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a ``data:<type>;base64,<data>`` URL, else None."""
    if not url.startswith("data:"):
        return None
    header, _, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    return (media_type, data) if encoding == "base64" and data else None


def _image(image: Any) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise RequestNotMappable("An image part needs an 'image_url.url'.")
    inline = _data_url(url)
    if inline is not None:
        return {"type": "image", "source": {"type": "base64", "media_type": inline[0], "data": inline[1]}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise RequestNotMappable("An image URL must be a base64 data: URL or an http(s) URL.")


def _document(file: Any) -> dict[str, Any]:
    inline = _data_url(file.get("file_data") or "") if isinstance(file, dict) else None
    if inline is None or inline[0] != "application/pdf":
        raise RequestNotMappable("Only PDF files given inline ('file.file_data' as a base64 data: URL) can be sent to an "
                                 "Anthropic model.")
    return {"type": "document", "source": {"type": "base64", "media_type": inline[0], "data": inline[1]}}


def _tool_use(call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(call.get("id"), str) or not isinstance(function.get("name"), str):
        raise RequestNotMappable("An assistant tool call needs an 'id' and a 'function.name'.")
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise RequestNotMappable(f"The arguments of tool call '{call['id']}' must be a JSON object.")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": parsed}


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise RequestNotMappable("A 'tool' message needs a 'tool_call_id'.")
    content = message.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, list):
        block["content"] = _blocks(content, "tool")
    elif content:
        block["content"] = str(content)
    return block


# --------------------------------------------------------------------------- response


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_from(usage: Any) -> Usage | None:
    """The canonical ``Usage`` of an Anthropic ``usage`` object (see the module docstring), or None."""
    if not isinstance(usage, dict):
        return None
    read = _int(usage.get("cache_read_input_tokens"))
    written = _int(usage.get("cache_creation_input_tokens"))
    total_input = _int(usage.get("input_tokens")) + read + written
    return Usage(total_input, _int(usage.get("output_tokens")), read, written)


def openai_usage(usage: Usage, raw: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``usage`` object for ``usage``; Anthropic's own cache and thinking figures are kept
    under ``prompt_tokens_details`` / ``completion_tokens_details``."""
    details = raw.get("output_tokens_details")
    reasoning = _int(details.get("thinking_tokens")) if isinstance(details, dict) else 0
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens,
                                      "cache_creation_tokens": _int(raw.get("cache_creation_input_tokens"))},
            "completion_tokens_details": {"reasoning_tokens": reasoning}}


def tool_call(block: dict[str, Any], index: int) -> dict[str, Any]:
    """OpenAI's ``tool_calls`` entry for a ``tool_use`` block (arguments as a JSON string)."""
    return {"index": index, "id": block.get("id"), "type": "function",
            "function": {"name": block.get("name"), "arguments": orjson.dumps(block.get("input") or {}).decode()}}


def completion(message: dict[str, Any]) -> tuple[dict[str, Any], Usage | None]:
    """A ``chat.completion`` body and the usage of an Anthropic ``message`` object."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            calls.append(tool_call(block, len(calls)))
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                             "refusal": None}
    if calls:
        reply["tool_calls"] = [{key: value for key, value in call.items() if key != "index"} for call in calls]
    usage = usage_from(message.get("usage"))
    body: dict[str, Any] = {
        "id": message.get("id") or "msg", "object": "chat.completion", "created": int(time.time()),
        "model": message.get("model"),
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": finish_reason(message.get("stop_reason")) or "stop"}],
    }
    if usage is not None:
        body["usage"] = openai_usage(usage, message["usage"])
    return body, usage


def generated_text(body: dict[str, Any]) -> str:
    """Everything a canonical ``chat.completion`` body holds that the model produced (for local counting)."""
    message = body["choices"][0]["message"]
    parts = [message.get("content") or ""]
    for call in message.get("tool_calls") or []:
        parts += [call["function"]["name"] or "", call["function"]["arguments"]]
    return "".join(parts)


# --------------------------------------------------------------------------- errors


def error_object(obj: Any) -> dict[str, Any] | None:
    """The ``error`` of an Anthropic error body ``{"type": "error", "error": {"type", "message"}}``, or None."""
    if not isinstance(obj, dict) or obj.get("type") != "error":
        return None
    error = obj.get("error")
    return error if isinstance(error, dict) else {}


def upstream_error(payload: bytes) -> tuple[str | None, str | None]:
    """(error type, message) of an error body or event exactly as the upstream wrote them — raw,
    unscrubbed: for the adapter's mapping only; (None, None) for anything else."""
    try:
        error = error_object(orjson.loads(payload))
    except orjson.JSONDecodeError:
        error = None
    if error is None:
        return None, None
    kind, message = error.get("type"), error.get("message")
    return (kind if isinstance(kind, str) else None), (message if isinstance(message, str) else None)
