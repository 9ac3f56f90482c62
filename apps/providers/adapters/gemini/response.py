"""The response map: a Gemini ``GenerateContentResponse`` → an OpenAI ``chat.completion`` (or one
``chat.completion.chunk``), its ``usageMetadata`` → ``Usage``, a ``BatchEmbedContentsResponse`` → an
OpenAI embeddings list.

Sources: https://ai.google.dev/api/generate-content#v1beta.GenerateContentResponse (candidates,
``finishReason``, ``promptFeedback``, ``usageMetadata``), https://ai.google.dev/api/embeddings.

Usage (``usageMetadata``, tokens) → ``Usage``:

- input  = ``promptTokenCount`` (which already includes ``cachedContentTokenCount``) + ``toolUsePromptTokenCount``
  (results of Google's built-in tools fed back to the model; counted outside the prompt);
- cached = ``cachedContentTokenCount``;
- output = ``candidatesTokenCount`` + ``thoughtsTokenCount``: thinking tokens are billed as output and are
  not in ``candidatesTokenCount`` (``totalTokenCount`` = prompt + candidates + toolUsePrompt + thoughts).

Thought parts (``"thought": true``) are the model's reasoning summary: never shown as content.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import orjson

from apps.providers.adapters.base import Usage
from apps.providers.adapters.gemini.ids import new_call_id

# finishReason → OpenAI's finish_reason (https://ai.google.dev/api/generate-content#FinishReason).
_FINISH = {
    "STOP": "stop", "MAX_TOKENS": "length",
    "SAFETY": "content_filter", "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter", "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter", "IMAGE_RECITATION": "content_filter",
}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_from(metadata: Any) -> Usage | None:
    """``Usage`` of a ``usageMetadata`` object (see the module docstring), or None when there is none."""
    if not isinstance(metadata, dict):
        return None
    prompt = _count(metadata.get("promptTokenCount")) + _count(metadata.get("toolUsePromptTokenCount"))
    output = _count(metadata.get("candidatesTokenCount")) + _count(metadata.get("thoughtsTokenCount"))
    cached = min(_count(metadata.get("cachedContentTokenCount")), prompt)
    return Usage(prompt, output, cached)


def openai_usage(usage: Usage, metadata: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``usage`` object for ``usage`` (``reasoning_tokens`` = ``thoughtsTokenCount``)."""
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": _count(metadata.get("thoughtsTokenCount"))}}


def finish_reason(reason: Any, *, called: bool) -> str | None:
    """OpenAI's ``finish_reason`` for a Gemini ``finishReason`` (None when the candidate is not finished).
    STOP with function calls is ``tool_calls``; an unknown or other reason is ``stop``."""
    if not isinstance(reason, str) or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    if called and reason == "STOP":
        return "tool_calls"
    return _FINISH.get(reason, "stop")


def block_reason(obj: dict[str, Any]) -> str | None:
    """Why the prompt itself was blocked (``promptFeedback.blockReason``) when no candidate came, else None."""
    feedback = obj.get("promptFeedback")
    if obj.get("candidates") or not isinstance(feedback, dict):
        return None
    reason = feedback.get("blockReason")
    return reason if isinstance(reason, str) and reason else None


def candidate_message(candidate: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    """(the text of a candidate's non-thought parts, or None if it has none; its function calls as OpenAI
    ``tool_calls`` with fresh ids carrying their thought signatures)."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict) or part.get("thought") is True:
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        call = part.get("functionCall")
        if isinstance(call, dict):
            signature = part.get("thoughtSignature")
            calls.append({"id": new_call_id(signature if isinstance(signature, str) else None), "type": "function",
                          "function": {"name": str(call.get("name") or ""),
                                       "arguments": orjson.dumps(call.get("args") or {}).decode()}})
    return ("".join(texts) if texts else None), calls


def completion(obj: dict[str, Any], *, model: str, response_id: str) -> tuple[dict[str, Any], Usage | None]:
    """The ``chat.completion`` object for a whole ``GenerateContentResponse`` and its usage."""
    choices = []
    for position, candidate in enumerate(obj.get("candidates") or []):
        if not isinstance(candidate, dict):
            continue
        text, calls = candidate_message(candidate)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        index = candidate.get("index")
        choices.append({"index": index if isinstance(index, int) else position, "message": message, "logprobs": None,
                        "finish_reason": finish_reason(candidate.get("finishReason"), called=bool(calls)) or "stop"})
    body: dict[str, Any] = {"id": response_id, "object": "chat.completion", "created": int(time.time()), "model": model,
                            "choices": choices}
    metadata = obj.get("usageMetadata")
    usage = usage_from(metadata)
    if usage is not None and isinstance(metadata, dict):
        body["usage"] = openai_usage(usage, metadata)
    return body, usage


def response_id(obj: dict[str, Any], fallback: str) -> str:
    """``chatcmpl-<responseId>`` when Gemini gave one, else ``fallback``."""
    given = obj.get("responseId")
    return f"chatcmpl-{given}" if isinstance(given, str) and given else fallback


def _base64_floats(values: list[Any]) -> str:
    # OpenAI's ``encoding_format: "base64"``: the vector as little-endian float32 bytes, base64-encoded.
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def embeddings(obj: dict[str, Any], *, model: str, input_tokens: int, encoding: str | None = None) -> dict[str, Any] | None:
    """OpenAI's embeddings list for a ``BatchEmbedContentsResponse`` (or a single ``EmbedContentResponse``),
    with ``input_tokens`` (counted locally: Gemini reports none) as its usage; each vector a list of floats,
    or a base64 string when ``encoding`` is ``"base64"`` (what the OpenAI SDKs ask for by default). None
    when ``obj`` is neither response."""
    items = obj.get("embeddings")
    if items is None and isinstance(obj.get("embedding"), dict):
        items = [obj["embedding"]]
    if not isinstance(items, list) or not all(isinstance(item, dict) and isinstance(item.get("values"), list) for item in items):
        return None
    try:
        data = [{"object": "embedding", "index": i,
                 "embedding": _base64_floats(item["values"]) if encoding == "base64" else item["values"]}
                for i, item in enumerate(items)]
    except struct.error:  # a value that is not a number
        return None
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": input_tokens, "total_tokens": input_tokens}}
