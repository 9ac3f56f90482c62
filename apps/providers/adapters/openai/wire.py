"""OpenAI's wire format, piece by piece: request map, usage and text of a response or stream, errors.

Source: https://platform.openai.com/docs/api-reference/chat (usage: ``prompt_tokens``,
``completion_tokens``, ``prompt_tokens_details.cached_tokens``; embeddings report ``prompt_tokens``
and ``total_tokens`` only). Also the format of every ``openai_compatible`` upstream and of the
in-process ``mock``.
"""

from __future__ import annotations

import re

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


_SECRETISH = re.compile(r"(sk-[A-Za-z0-9_\-]{4,}|js-[A-Za-z0-9_\-]{4,}|https?://\S+|Bearer\s+\S+)")


def scrub(message: str, secret: str | None = None) -> str:
    """Upstream error text without keys or URLs (ours or the supplier's)."""
    if secret:
        message = message.replace(secret, "***")
    return _SECRETISH.sub("***", message)[:500]


def error_message(body: bytes, secret: str | None = None) -> tuple[str, str | None, str | None]:
    """(message, type, code) from an upstream error body, scrubbed."""
    try:
        obj = orjson.loads(body)
        error = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(error, dict):
            return (scrub(str(error.get("message") or "upstream error"), secret),
                    error.get("type") if isinstance(error.get("type"), str) else None,
                    error.get("code") if isinstance(error.get("code"), str) else None)
        if isinstance(error, str):
            return scrub(error, secret), None, None
    except (orjson.JSONDecodeError, TypeError):
        pass
    return "The upstream provider returned an error.", None, None
