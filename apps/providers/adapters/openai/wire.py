"""OpenAI's wire format, piece by piece: request map, usage and text of a response or stream, errors.

Source: https://platform.openai.com/docs/api-reference/chat (usage: ``prompt_tokens``,
``completion_tokens``, ``prompt_tokens_details.cached_tokens``; embeddings report ``prompt_tokens``
and ``total_tokens`` only). Also the format of every ``openai_compatible`` upstream and of the
in-process ``mock``, and of the family's variants (DeepSeek's cache hit/miss usage,
https://api-docs.deepseek.com/api/create-chat-completion; ``reasoning_content`` / ``reasoning``
deltas of DeepSeek, Qwen, vLLM and Ollama).

Also the family's protocol faults, repaired once here: provider ``finish_reason`` words mapped to
OpenAI's (``canonical_finish_reason``), a JSON completion where a stream belonged turned into
canonical chunks (``completion_chunks``) and a stream where JSON belonged assembled into one
completion (``assemble_completion``).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from apps.providers.adapters.base import Usage

PATHS = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings"}


def request_url(base_url: str, endpoint: str) -> str:
    """``base_url`` (ending in ``/v1`` or the provider's equivalent) + the endpoint's path."""
    return base_url + PATHS[endpoint]


# Upstream model ids that refuse ``max_tokens`` and want ``max_completion_tokens`` (OpenAI's
# reasoning models: o1, o3, o4-mini…, the gpt-5 family): "Unsupported parameter: 'max_tokens' is
# not supported with this model. Use 'max_completion_tokens' instead."
# (https://platform.openai.com/docs/api-reference/chat/create#chat-create-max_tokens).
REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")


def max_tokens_field(upstream_model: str, options: Any, default: str | None = None) -> str | None:
    """The name the upstream wants for the output cap: ``options["max_tokens_param"]`` when it is
    one of ``MAX_TOKENS_FIELDS``, else ``max_completion_tokens`` for a reasoning model id
    (``REASONING_MODEL``, a "vendor/" prefix ignored), else ``default`` (None = as the client sent it)."""
    chosen = options.get("max_tokens_param") if isinstance(options, dict) else None
    if chosen in MAX_TOKENS_FIELDS:
        return chosen
    if REASONING_MODEL.match(upstream_model.strip().lower().rsplit("/", 1)[-1]):
        return "max_completion_tokens"
    return default


def request_body(body: dict, *, upstream_model: str, stream: bool, ask_usage: bool = True,
                 max_tokens_as: str | None = None) -> bytes:
    """The client's body with the upstream model id. Streams ask for the usage chunk
    (``ask_usage``; the gateway bills from it and strips it again if the client did not ask); with
    ``ask_usage`` False ``stream_options`` is left out altogether (Mistral refuses the field with a
    422). ``max_tokens_as`` renames the output cap (``max_tokens`` ↔ ``max_completion_tokens``)
    when the client used the other name."""
    mapped = dict(body)
    mapped["model"] = upstream_model
    if stream and ask_usage:
        options = dict(mapped.get("stream_options") or {})
        options["include_usage"] = True
        mapped["stream_options"] = options
    elif not ask_usage:
        mapped.pop("stream_options", None)
    if max_tokens_as is not None:
        other = MAX_TOKENS_FIELDS[1] if max_tokens_as == MAX_TOKENS_FIELDS[0] else MAX_TOKENS_FIELDS[0]
        if other in mapped:
            value = mapped.pop(other)
            mapped.setdefault(max_tokens_as, value)
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
    # DeepSeek: prompt_tokens = prompt_cache_hit_tokens + prompt_cache_miss_tokens.
    cached = cached or _int(usage.get("prompt_cache_hit_tokens"))
    # Prompt-cache writes, part of prompt_tokens: Alibaba Model Studio's explicit cache
    # (prompt_tokens_details.cache_creation_input_tokens, billed at 125 % of input,
    # https://www.alibabacloud.com/help/en/model-studio/context-cache) and OpenRouter's cache_write_tokens.
    written = (_int(details.get("cache_creation_input_tokens")) or _int(details.get("cache_write_tokens"))) \
        if isinstance(details, dict) else 0
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    if completion == 0 and "total_tokens" in usage:  # embeddings report prompt + total only
        completion = max(0, _int(usage.get("total_tokens")) - prompt)
    cached = min(cached, prompt)
    return Usage(prompt, completion, cached, min(written, prompt - cached))


def with_cache_details(obj: object) -> bool:
    """Give DeepSeek's usage OpenAI's cache field as well: ``usage.prompt_cache_hit_tokens`` (the
    cached part of ``prompt_tokens``, https://api-docs.deepseek.com/api/create-chat-completion) copied
    to ``usage.prompt_tokens_details.cached_tokens`` when that is absent, in place, so an OpenAI
    client sees its cache reads where OpenAI puts them. True when ``obj`` changed."""
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict) or "prompt_cache_hit_tokens" not in usage:
        return False
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and "cached_tokens" in details:
        return False
    usage["prompt_tokens_details"] = {**(details if isinstance(details, dict) else {}),
                                      "cached_tokens": _int(usage["prompt_cache_hit_tokens"])}
    return True


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


# What a message or delta generated: the answer and the reasoning (DeepSeek, Qwen and vLLM say
# ``reasoning_content``, Ollama and newer vLLM ``reasoning``), billed as output alike.
_TEXT_FIELDS = ("reasoning_content", "reasoning", "content", "refusal")


def _collect_message(message: dict, parts: list[str]) -> None:
    if not isinstance(message, dict):
        return
    for field in _TEXT_FIELDS:
        text = message.get(field)
        if isinstance(text, str):
            parts.append(text)
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


# ---------------------------------------------------------------- finish_reason

# OpenAI's vocabulary (https://platform.openai.com/docs/api-reference/chat/object).
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
# Other providers' words, seen from OpenAI-compatible endpoints and proxies in front of them
# (Anthropic's ``end_turn``/``tool_use``/``max_tokens``/``stop_sequence``, TGI's ``eos_token``,
# llama.cpp/Ollama's ``eos``, Gemini's ``SAFETY``/``RECITATION``, DeepSeek's
# ``insufficient_system_resource`` — the answer was cut short, as by a length limit).
_FINISH_SYNONYMS = {
    "end_turn": "stop", "stop_sequence": "stop", "eos": "stop", "eos_token": "stop", "end": "stop", "complete": "stop",
    "max_tokens": "length", "max_output_tokens": "length", "model_length": "length", "insufficient_system_resource": "length",
    "tool_use": "tool_calls", "tool_call": "tool_calls", "function_calls": "tool_calls",
    "safety": "content_filter", "recitation": "content_filter", "sensitive": "content_filter", "blocklist": "content_filter",
    "prohibited_content": "content_filter", "spii": "content_filter", "refusal": "content_filter",
}
# ``finish_reason: "error"``: the upstream gave up in the middle. Not an OpenAI word and not a
# success: a stream ends with an error event after the text, a non-streamed answer is an error.
FINISH_ERROR = "error"


def canonical_finish_reason(value: Any) -> Any:
    """OpenAI's word for an upstream's ``finish_reason`` (None stays None; an unknown word → "stop")."""
    if value is None or value in FINISH_REASONS:
        return value
    return _FINISH_SYNONYMS.get(str(value).lower(), "stop")


def canonical_choices(obj: dict) -> bool:
    """Rewrite every choice's ``finish_reason`` in ``obj`` (a completion or chunk) into OpenAI's
    vocabulary, in place; True if anything changed."""
    changed = False
    for choice in obj.get("choices") or []:
        if isinstance(choice, dict) and choice.get("finish_reason") not in FINISH_REASONS and choice.get("finish_reason") is not None:
            choice["finish_reason"] = canonical_finish_reason(choice["finish_reason"])
            changed = True
    return changed


# ---------------------------------------------------------------- wrong framing

def completion_chunks(obj: dict, endpoint: str) -> tuple[list[bytes], dict | None]:
    """A whole ``chat.completion`` (or ``text_completion``) answer as the canonical stream a client
    asked for: per choice one chunk with everything its message holds (role, content, reasoning,
    tool calls with their ``index``) and one with its ``finish_reason``; and the usage-only chunk
    (``choices: []``) when the answer carried usage (None otherwise). Events are ``b"data: {…}"``."""
    chunk_object = "text_completion" if endpoint == "completion" else "chat.completion.chunk"
    base = {key: obj[key] for key in ("id", "created", "model", "system_fingerprint") if key in obj}
    base["object"] = chunk_object
    events: list[bytes] = []
    for position, choice in enumerate(obj.get("choices") or []):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        finish = canonical_finish_reason(choice.get("finish_reason") or "stop")
        if endpoint == "completion":
            body = {"index": index, "text": choice.get("text") or "", "finish_reason": None}
            events.append(b"data: " + orjson.dumps({**base, "choices": [body]}))
            events.append(b"data: " + orjson.dumps({**base, "choices": [{"index": index, "text": "", "finish_reason": finish}]}))
            continue
        message = choice.get("message")
        delta = {key: value for key, value in message.items() if value is not None} if isinstance(message, dict) else {}
        if isinstance(delta.get("tool_calls"), list):
            delta["tool_calls"] = [dict(call, index=i) if isinstance(call, dict) else call
                                   for i, call in enumerate(delta["tool_calls"])]
        events.append(b"data: " + orjson.dumps({**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}))
        events.append(b"data: " + orjson.dumps({**base, "choices": [{"index": index, "delta": {}, "finish_reason": finish}]}))
    usage_chunk = {**base, "choices": [], "usage": obj["usage"]} if isinstance(obj.get("usage"), dict) else None
    return events, usage_chunk


class _Choice:
    """One choice being put together from stream deltas."""

    __slots__ = ("fields", "finish_reason", "index", "tool_calls")

    def __init__(self, index: int) -> None:
        self.index = index
        self.fields: dict[str, Any] = {}
        self.tool_calls: dict[int, dict] = {}
        self.finish_reason: Any = None

    def add(self, delta: dict) -> None:
        for key, value in delta.items():
            if key == "tool_calls" and isinstance(value, list):
                for call in value:
                    self._add_call(call)
            elif isinstance(value, str) and isinstance(self.fields.get(key), str) and key != "role":
                self.fields[key] += value
            elif value is not None:
                self.fields.setdefault(key, value)

    def _add_call(self, call: Any) -> None:
        if not isinstance(call, dict):
            return
        slot = self.tool_calls.setdefault(call.get("index", len(self.tool_calls)), {"function": {"name": "", "arguments": ""}})
        for key in ("id", "type"):
            if call.get(key):
                slot[key] = call[key]
        function = call.get("function")
        for key in ("name", "arguments"):
            if isinstance(function, dict) and isinstance(function.get(key), str):
                slot["function"][key] += function[key]

    def completed(self, endpoint: str) -> dict:
        finish = canonical_finish_reason(self.finish_reason or "stop")
        if endpoint == "completion":
            return {"index": self.index, "text": self.fields.get("text", ""), "logprobs": None, "finish_reason": finish}
        message = {"role": "assistant", "content": None, **self.fields}
        if self.tool_calls:
            message["tool_calls"] = [dict(call, type=call.get("type", "function")) for _, call in sorted(self.tool_calls.items())]
        return {"index": self.index, "message": message, "logprobs": None, "finish_reason": finish}


def assemble_completion(events: list[bytes], endpoint: str, usage_chunk: dict | None) -> dict:
    """One ``chat.completion`` (or ``text_completion``) from a stream's canonical ``data:`` events
    and its usage chunk: deltas concatenated per choice (content, reasoning, tool-call arguments by
    ``index``), the last ``finish_reason`` of each choice kept."""
    choices: dict[int, _Choice] = {}
    head: dict[str, Any] = {}
    for event in events:
        try:
            chunk = orjson.loads(event[5:])
        except orjson.JSONDecodeError:
            continue
        if not isinstance(chunk, dict):
            continue
        for key in ("id", "created", "model", "system_fingerprint"):
            head.setdefault(key, chunk.get(key))
        for position, choice in enumerate(chunk.get("choices") or []):
            if not isinstance(choice, dict):
                continue
            slot = choices.setdefault(choice.get("index", position), _Choice(choice.get("index", position)))
            delta = choice.get("delta")
            slot.add(delta if isinstance(delta, dict) else {"text": choice.get("text") or ""} if endpoint == "completion" else {})
            slot.finish_reason = choice.get("finish_reason") or slot.finish_reason
    answer = {key: value for key, value in head.items() if value is not None}
    answer["object"] = "text_completion" if endpoint == "completion" else "chat.completion"
    answer["choices"] = [choice.completed(endpoint) for _, choice in sorted(choices.items())]
    if usage_chunk is not None and isinstance(usage_chunk.get("usage"), dict):
        answer["usage"] = usage_chunk["usage"]
    return answer
