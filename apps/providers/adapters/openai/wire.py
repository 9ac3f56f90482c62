"""OpenAI's wire format, piece by piece: request map, usage and text of a response or stream, errors.

Source: https://platform.openai.com/docs/api-reference/chat (usage: ``prompt_tokens``,
``completion_tokens``, ``prompt_tokens_details.cached_tokens``; embeddings report ``prompt_tokens``
and ``total_tokens`` only). Also the format of every ``openai_compatible`` upstream and of the
in-process ``mock``.
"""

from __future__ import annotations

from typing import Any

import orjson

from apps.providers.adapters.base import Usage

PATHS = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings"}


def request_url(base_url: str, endpoint: str) -> str:
    """``base_url`` (ending in ``/v1`` or the provider's equivalent) + the endpoint's path."""
    return base_url + PATHS[endpoint]


def request_body(body: dict, *, upstream_model: str, stream: bool) -> bytes:
    """The client's body with the upstream model id; streams always ask for the usage chunk
    (the gateway bills from it and strips it again if the client did not ask)."""
    mapped = dict(body)
    mapped["model"] = upstream_model
    if stream:
        options = dict(mapped.get("stream_options") or {})
        options["include_usage"] = True
        mapped["stream_options"] = options
    return orjson.dumps(mapped)


def _int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_from(obj) -> Usage | None:
    """The ``usage`` of a response or chunk object in tokens, or None when it has none."""
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details") or {}
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    if completion == 0 and "total_tokens" in usage:  # embeddings report prompt + total only
        completion = max(0, _int(usage.get("total_tokens")) - prompt)
    return Usage(prompt, completion, min(cached, prompt))


def generated_text(obj: dict, endpoint: str) -> str:
    """Everything the model produced in a non-streaming response (for local counting)."""
    parts: list[str] = []
    for choice in obj.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if endpoint == "completion":
            parts.append(str(choice.get("text") or ""))
            continue
        message = choice.get("message") or {}
        _collect_message(message, parts)
    return "".join(parts)


def _collect_message(message: dict, parts: list[str]) -> None:
    if not isinstance(message, dict):
        return
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts.append(str(function.get("name") or ""))
            parts.append(str(function.get("arguments") or ""))


def stream_text(events: list[bytes], endpoint: str) -> str:
    """Text generated so far in a stream, from its raw ``data:`` events."""
    parts: list[str] = []
    for event in events:
        payload = event[5:].strip() if event.startswith(b"data:") else b""
        if not payload or payload == b"[DONE]":
            continue
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        for choice in obj.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            if endpoint == "completion":
                parts.append(str(choice.get("text") or ""))
            else:
                _collect_message(choice.get("delta") or {}, parts)
    return "".join(parts)


def error_object(obj: Any) -> dict | None:
    """The error inside a decoded upstream answer or stream event, or None when it is not one.

    Shapes: OpenAI's ``{"error": {"message", "type", "param", "code"}}``, ``{"error": "text"}``
    (TGI, some proxies) and vLLM's ``{"object": "error", "message", "type", "code": 400}``. An
    object that also carries ``choices`` or ``data`` is an answer, not an error."""
    if not isinstance(obj, dict) or obj.get("choices") or obj.get("data"):
        return None
    error = obj.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    return obj if obj.get("object") == "error" else None


def load_error(payload: bytes) -> dict | None:
    """``error_object`` of a JSON ``payload`` (None if it is not JSON or not an error)."""
    try:
        return error_object(orjson.loads(payload))
    except orjson.JSONDecodeError:
        return None


def upstream_error(body: bytes) -> tuple[str | None, str | None, int | None]:
    """(message, code, status) of an upstream error body exactly as the upstream wrote them — raw,
    unscrubbed: for the adapter's mapping only. ``status`` is an HTTP status the error names in
    ``code`` or ``status`` (400–599). A body that is not an error object (plain text, an HTML page)
    gives (None, None, None)."""
    error = load_error(body)
    if error is None:
        return None, None, None
    message, code, status = error.get("message"), error.get("code"), error.get("status")
    numeric = next((n for n in (code, status) if isinstance(n, int) and not isinstance(n, bool) and 400 <= n <= 599), None)
    return (message if isinstance(message, str) else None), (code if isinstance(code, str) else None), numeric
