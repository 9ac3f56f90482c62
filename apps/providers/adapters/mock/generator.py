"""Deterministic, realistic OpenAI-format answers for the ``mock`` provider kind.

Every function takes a request body the proxy has already validated, the upstream model id, and
the provider's ``options`` (admin-entered JSON: a value of the wrong type falls back to its
default, it never crashes a request), and returns bytes exactly as OpenAI would send them:

- ``chat_completion`` / ``chat_completion_chunks`` for /v1/chat/completions,
- ``completion`` / ``completion_chunks`` for /v1/completions,
- ``embeddings`` for /v1/embeddings,
- ``stream`` (async, with the configured latency between events) and ``respond`` (async, one body).

The answer text comes from a hash of the prompt (same prompt → same text; Russian words when the
user wrote in Cyrillic, English otherwise), and usage is what ``lib.tokenizer`` counts for exactly the
text produced, so the proxy's metering of the mock is honest.

Options: ``latency_ms`` (before the first byte), ``chunk_delay_ms`` (between stream events),
``chunks`` (content pieces per stream, 0 = one per word; default 8), ``words`` (answer length;
default 12-48 from the hash), ``language`` ("en"/"ru"), ``dimensions`` (embedding size when the
request names none; default 256), ``cached_tokens`` (reported as prompt_tokens_details.cached_tokens),
``omit_usage`` (answer without usage, like an upstream that sends none), ``always_stream_usage``
(a usage chunk even when the request did not ask for one), ``echo`` (a chat answer repeats the last
user message; a forced function call's arguments are ``{"echo": that text}``: what the upstream
received, made visible), ``chunk_chars`` (stream pieces of this many characters, whatever the words).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import os
import re
import sys
import time
from array import array
from collections.abc import AsyncIterator
from typing import Any

import orjson

from lib import tokenizer

DEFAULT_CHUNKS = 8
DEFAULT_DIMENSIONS = 256
MAX_DIMENSIONS = 8192
MAX_CHOICES = 128  # OpenAI's own cap on n
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions
SYSTEM_FINGERPRINT = "fp_mock"
DONE_EVENT = b"data: [DONE]\n\n"

_WORDS_EN = (
    "the", "model", "answer", "request", "token", "gateway", "budget", "stream", "reply", "simple",
    "careful", "quick", "bright", "river", "mountain", "city", "garden", "window", "morning", "evening",
    "people", "system", "network", "signal", "value", "result", "question", "idea", "story", "letter",
    "bank", "ledger", "balance", "limit", "price", "rate", "account", "transfer", "report", "journal",
    "is", "are", "was", "has", "will", "can", "should", "may", "makes", "brings",
    "and", "but", "or", "so", "because", "while", "when", "where", "with", "without",
    "clear", "green", "silent", "steady", "honest", "small", "large", "early", "late", "useful",
    "we", "you", "they", "it", "this", "that", "every", "some", "many", "few",
    "find", "keep", "check", "count", "send", "read", "write", "build", "measure", "explain",
)
_WORDS_RU = (
    "модель", "ответ", "запрос", "токен", "шлюз", "бюджет", "поток", "текст", "простой", "важный",
    "быстрый", "светлый", "река", "гора", "город", "сад", "окно", "утро", "вечер", "люди",
    "система", "сеть", "сигнал", "значение", "результат", "вопрос", "идея", "история", "письмо", "банк",
    "баланс", "лимит", "цена", "курс", "счёт", "перевод", "отчёт", "журнал", "компания", "отдел",
    "это", "был", "будет", "может", "должен", "делает", "приносит", "даёт", "видит", "знает",
    "и", "но", "или", "поэтому", "потому", "пока", "когда", "где", "с", "без",
    "ясный", "зелёный", "тихий", "ровный", "честный", "малый", "большой", "ранний", "поздний", "полезный",
    "мы", "вы", "они", "он", "она", "каждый", "некоторые", "многие", "здесь", "там",
    "найти", "хранить", "проверить", "считать", "отправить", "читать", "писать", "строить", "мерить", "объяснить",
)
_CYRILLIC = re.compile("[\u0400-\u04ff]")
# Pieces that concatenate back to the whole text: each word with the whitespace before it.
_WORD_PIECES = re.compile(r"\s*\S+|\s+$")


# --------------------------------------------------------------------------- options


class _Options:
    __slots__ = (
        "latency_ms", "chunk_delay_ms", "chunks", "words", "language", "dimensions", "cached_tokens", "omit_usage",
        "always_stream_usage", "echo", "chunk_chars",
    )

    def __init__(self, options: Any) -> None:
        options = options if isinstance(options, dict) else {}
        self.latency_ms = _int_option(options, "latency_ms", 0, high=600_000)
        self.chunk_delay_ms = _int_option(options, "chunk_delay_ms", 0, high=60_000)
        self.chunks = _int_option(options, "chunks", DEFAULT_CHUNKS, high=100_000)
        words = _int_option(options, "words", 0, high=100_000)
        self.words = words or None
        language = options.get("language")
        self.language = language if language in ("en", "ru") else None
        self.dimensions = _int_option(options, "dimensions", DEFAULT_DIMENSIONS, high=MAX_DIMENSIONS) or DEFAULT_DIMENSIONS
        self.cached_tokens = _int_option(options, "cached_tokens", 0, high=10**12)
        self.omit_usage = options.get("omit_usage") is True
        self.always_stream_usage = options.get("always_stream_usage") is True
        self.echo = options.get("echo") is True
        self.chunk_chars = _int_option(options, "chunk_chars", 0, high=100_000)


def _int_option(options: dict, key: str, default: int, *, high: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool):
        return default
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            return default
    if isinstance(value, float) and math.isfinite(value):
        value = int(value)
    if not isinstance(value, int):
        return default
    return max(0, min(value, high))


def _positive_int(value: Any, *, high: int) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, high)
    return None


# --------------------------------------------------------------------------- determinism


def _digest(*parts: Any) -> bytes:
    try:
        data = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:  # values JSON cannot hold (a parser would not produce them, but never crash)
        data = repr(parts).encode("utf-8", "replace")
    return hashlib.blake2b(data, digest_size=16).digest()


def _response_id(prefix: str, digest: bytes) -> str:
    # The first half names the prompt (handy when reading logs); the second keeps every id unique.
    return f"{prefix}{digest[:6].hex()}{os.urandom(6).hex()}"


class _Entropy:
    """An endless deterministic byte stream from a seed."""

    __slots__ = ("_seed", "_buf", "_pos", "_round")

    def __init__(self, seed: bytes) -> None:
        self._seed, self._buf, self._pos, self._round = seed, b"", 0, 0

    def below(self, n: int) -> int:
        """The next deterministic integer in [0, n) (0 when n <= 0), from two bytes of the stream."""
        if self._pos + 2 > len(self._buf):
            self._buf = hashlib.shake_256(self._seed + self._round.to_bytes(4, "little")).digest(256)
            self._round += 1
            self._pos = 0
        value = self._buf[self._pos] << 8 | self._buf[self._pos + 1]
        self._pos += 2
        return value % n if n > 0 else 0


def _language(text: str, opts: _Options) -> str:
    if opts.language:
        return opts.language
    return "ru" if _CYRILLIC.search(text) else "en"


def _sentences(seed: bytes, *, words: int | None, language: str) -> str:
    vocab = _WORDS_RU if language == "ru" else _WORDS_EN
    count = words or 12 + seed[0] % 37
    stream = hashlib.shake_256(seed).digest(2 * count)
    out = []
    left_in_sentence = 0
    for i in range(count):
        word = vocab[stream[2 * i] % len(vocab)]
        shape = stream[2 * i + 1]
        if left_in_sentence == 0:
            word = word.capitalize()
            left_in_sentence = 4 + shape % 9
        left_in_sentence -= 1
        if left_in_sentence == 0 or i == count - 1:
            word += "."
            left_in_sentence = 0
        elif shape % 11 == 0:
            word += ","
        out.append(word)
    return " ".join(out)


def _schema_value(schema: Any, entropy: _Entropy, vocab: tuple[str, ...], depth: int = 0) -> Any:
    """A deterministic value that fits a (JSON Schema) ``schema`` well enough for a mock."""
    if not isinstance(schema, dict) or depth > 8:
        return vocab[entropy.below(len(vocab))]
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[entropy.below(len(enum))]
    for key in ("anyOf", "oneOf", "allOf"):
        variants = schema.get(key)
        if isinstance(variants, list) and variants:
            concrete = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
            return _schema_value((concrete or variants)[0], entropy, vocab, depth + 1)
    return _typed_value(_schema_type(schema), schema, entropy, vocab, depth)


def _schema_type(schema: dict) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    return kind


def _typed_value(kind: str, schema: dict, entropy: _Entropy, vocab: tuple[str, ...], depth: int) -> Any:
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {str(name): _schema_value(sub, entropy, vocab, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        return [_schema_value(schema.get("items"), entropy, vocab, depth + 1) for _ in range(1 + entropy.below(2))]
    if kind == "integer":
        low = schema.get("minimum") if isinstance(schema.get("minimum"), int) else 0
        high = schema.get("maximum") if isinstance(schema.get("maximum"), int) else low + 100
        return low + entropy.below(max(1, high - low + 1))
    if kind == "number":
        return entropy.below(10_000) / 100
    if kind == "boolean":
        return entropy.below(2) == 1
    if kind == "null":
        return None
    return " ".join(vocab[entropy.below(len(vocab))] for _ in range(1 + entropy.below(3)))


# --------------------------------------------------------------------------- request reading


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def last_user_text(messages: Any) -> str:
    """The text of the last user message of a chat body's ``messages`` ("" when there is none)."""
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text_of(message.get("content"))
    return ""


def _max_output_tokens(body: dict, *, default: int | None = None) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def _stop_sequences(body: dict) -> list[str]:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str) and s]
    return []


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _forced_function(body: dict) -> tuple[dict, str, bool] | None:
    """(function definition, finish_reason, legacy) when the request makes a call mandatory."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if isinstance(tools, list) and tools:
        functions = [t["function"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
        if choice == "required" and functions:
            return functions[0], "tool_calls", False
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            name = choice["function"].get("name")
            if isinstance(name, str):
                named = next((f for f in functions if f.get("name") == name), {"name": name})
                # OpenAI ends a call it was told to make by name with "stop", not "tool_calls".
                return named, "stop", False
    functions = body.get("functions")
    legacy_choice = body.get("function_call")
    if isinstance(functions, list) and isinstance(legacy_choice, dict) and isinstance(legacy_choice.get("name"), str):
        name = legacy_choice["name"]
        named = next((f for f in functions if isinstance(f, dict) and f.get("name") == name), {"name": name})
        return named, "stop", True
    return None


def _usage(prompt_tokens: int, completion_tokens: int, opts: _Options) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": min(opts.cached_tokens, prompt_tokens), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
        },
    }


def _split(text: str, opts: _Options) -> list[str]:
    """A stream's pieces of ``text``: ``chunk_chars`` code points each when set, else ``_pieces``."""
    if opts.chunk_chars and text:
        return [text[i : i + opts.chunk_chars] for i in range(0, len(text), opts.chunk_chars)]
    return _pieces(text, opts.chunks)


def _pieces(text: str, chunks: int) -> list[str]:
    """``text`` in ``chunks`` pieces cut between words (one per word when chunks is 0); joined they give ``text``."""
    if not text:
        return []
    words = _WORD_PIECES.findall(text)
    if len(words) <= 1 and chunks > 1:  # no spaces (JSON arguments): cut by characters instead
        size = -(-len(text) // min(chunks, len(text)))
        return [text[i : i + size] for i in range(0, len(text), size)]
    if chunks <= 0 or chunks >= len(words):
        return words
    size = -(-len(words) // chunks)
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


# --------------------------------------------------------------------------- chat


class _ChatChoice:
    __slots__ = ("index", "content", "call", "legacy", "finish_reason", "completion_tokens")

    def __init__(self, index: int) -> None:
        self.index = index
        self.content: str | None = None
        self.call: dict | None = None  # {"id", "name", "arguments"}
        self.legacy = False
        self.finish_reason = "stop"
        self.completion_tokens = 0

    def message(self) -> dict:
        """This choice's ``chat.completion`` message: its content, or its call as ``tool_calls``
        (``function_call`` when the request used the legacy ``functions``)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content, "refusal": None, "annotations": []}
        if self.call is not None and self.legacy:
            message["function_call"] = {"name": self.call["name"], "arguments": self.call["arguments"]}
        elif self.call is not None:
            message["tool_calls"] = [
                {"id": self.call["id"], "type": "function", "function": {"name": self.call["name"], "arguments": self.call["arguments"]}},
            ]
        return message


class _ChatPlan:
    __slots__ = ("id", "created", "model", "choices", "prompt_tokens", "opts")


def _plan_chat(body: Any, upstream_model: str, options: Any) -> _ChatPlan:
    body = body if isinstance(body, dict) else {}
    opts = _Options(options)
    encoding = tokenizer.encoding_for_model(upstream_model)
    messages = body.get("messages")
    digest = _digest(messages)
    language = _language(last_user_text(messages), opts)
    vocab = _WORDS_RU if language == "ru" else _WORDS_EN
    max_tokens = _max_output_tokens(body)
    stops = _stop_sequences(body)
    forced = _forced_function(body)
    response_format = body.get("response_format")
    format_kind = response_format.get("type") if isinstance(response_format, dict) else None

    plan = _ChatPlan()
    plan.id = _response_id("chatcmpl-mock-", digest)
    plan.created = int(time.time())
    plan.model = upstream_model
    plan.opts = opts
    plan.prompt_tokens = tokenizer.count_chat_request(body, encoding=encoding)
    plan.choices = []
    for index in range(_positive_int(body.get("n"), high=MAX_CHOICES) or 1):
        seed = digest + index.to_bytes(2, "little")
        choice = _ChatChoice(index)
        if forced is not None:
            function, choice.finish_reason, choice.legacy = forced
            name = function.get("name") if isinstance(function.get("name"), str) else "function"
            arguments = orjson.dumps({"echo": last_user_text(messages)} if opts.echo else
                                     _schema_value(function.get("parameters") or {"type": "object"}, _Entropy(seed), vocab)).decode()
            if max_tokens is not None:
                allowed = max(0, max_tokens - tokenizer.count_text(name, encoding=encoding))
                cut = tokenizer.truncate_text(arguments, allowed, encoding=encoding)
                if cut != arguments:
                    arguments, choice.finish_reason = cut, "length"
            call_id = "call_" + hashlib.blake2b(seed + b"call", digest_size=12).hexdigest()
            choice.call = {"id": call_id, "name": name, "arguments": arguments}
        else:
            if format_kind == "json_schema":
                schema_holder = response_format.get("json_schema")
                schema = schema_holder.get("schema") if isinstance(schema_holder, dict) else None
                text = orjson.dumps(_schema_value(schema or {"type": "object", "properties": {"answer": {"type": "string"}}},
                                                  _Entropy(seed), vocab)).decode()
            elif format_kind == "json_object":
                text = orjson.dumps({"answer": _sentences(seed, words=opts.words, language=language)}).decode()
            elif opts.echo:
                text = last_user_text(messages)
            else:
                text = _sentences(seed, words=opts.words, language=language)
            text, _ = _cut_at_stop(text, stops)
            if max_tokens is not None:
                cut = tokenizer.truncate_text(text, max_tokens, encoding=encoding)
                if cut != text:
                    text, choice.finish_reason = cut, "length"
            choice.content = text
        choice.completion_tokens = tokenizer.count_completion_output(choice.message(), encoding=encoding)
        plan.choices.append(choice)
    return plan


def chat_completion(body: dict, *, upstream_model: str, options: dict | None = None) -> bytes:
    """A /v1/chat/completions response body (object "chat.completion")."""
    plan = _plan_chat(body, upstream_model, options)
    response: dict[str, Any] = {
        "id": plan.id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "choices": [
            {"index": c.index, "message": c.message(), "logprobs": None, "finish_reason": c.finish_reason} for c in plan.choices
        ],
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "service_tier": "default",
    }
    if not plan.opts.omit_usage:
        response["usage"] = _usage(plan.prompt_tokens, sum(c.completion_tokens for c in plan.choices), plan.opts)
    return orjson.dumps(response)


def _wants_stream_usage(body: Any, opts: _Options) -> tuple[bool, bool]:
    """(usage chunk at the end, ``"usage": null`` on every other chunk)."""
    stream_options = body.get("stream_options") if isinstance(body, dict) else None
    requested = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    if opts.omit_usage:
        return False, False
    return requested or opts.always_stream_usage, requested


def _event(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _interleave(per_choice: list[list[dict]]) -> list[list[dict]]:
    """Round-robin the choices' deltas, as OpenAI does when n > 1."""
    rounds = max((len(items) for items in per_choice), default=0)
    return [[items[i] for items in per_choice if i < len(items)] for i in range(rounds)]


def chat_completion_chunks(body: dict, *, upstream_model: str, options: dict | None = None) -> list[bytes]:
    """The SSE events of a streamed /v1/chat/completions response, ending with ``data: [DONE]``."""
    plan = _plan_chat(body, upstream_model, options)
    usage_chunk, usage_null = _wants_stream_usage(body, plan.opts)
    base: dict[str, Any] = {
        "id": plan.id, "object": "chat.completion.chunk", "created": plan.created, "model": plan.model,
        "system_fingerprint": SYSTEM_FINGERPRINT, "service_tier": "default",
    }

    def chunk(choices: list[dict]) -> bytes:
        payload = dict(base, choices=choices)
        if usage_null:
            payload["usage"] = None
        return _event(payload)

    def entry(index: int, delta: dict, finish_reason: str | None = None) -> dict:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    events = []
    per_choice: list[list[dict]] = []
    for c in plan.choices:
        if c.call is None:
            events.append(chunk([entry(c.index, {"role": "assistant", "content": "", "refusal": None})]))
            per_choice.append([entry(c.index, {"content": piece}) for piece in _split(c.content or "", plan.opts)])
        elif c.legacy:
            events.append(chunk([entry(c.index, {"role": "assistant", "content": None,
                                                 "function_call": {"name": c.call["name"], "arguments": ""}, "refusal": None})]))
            per_choice.append([entry(c.index, {"function_call": {"arguments": piece}}) for piece in _split(c.call["arguments"], plan.opts)])
        else:
            opening = {"index": 0, "id": c.call["id"], "type": "function", "function": {"name": c.call["name"], "arguments": ""}}
            events.append(chunk([entry(c.index, {"role": "assistant", "content": None, "tool_calls": [opening], "refusal": None})]))
            per_choice.append([
                entry(c.index, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                for piece in _split(c.call["arguments"], plan.opts)
            ])
    for round_entries in _interleave(per_choice):
        events.extend(chunk([e]) for e in round_entries)
    events.extend(chunk([entry(c.index, {}, c.finish_reason)]) for c in plan.choices)
    if usage_chunk:
        events.append(_event(dict(base, choices=[], usage=_usage(plan.prompt_tokens, sum(c.completion_tokens for c in plan.choices), plan.opts))))
    events.append(DONE_EVENT)
    return events


# --------------------------------------------------------------------------- completions


def _prompts(prompt: Any) -> list[tuple[str | None, Any]]:
    """Each prompt of a /v1/completions body as (its text when it is text, what to hash)."""
    if isinstance(prompt, str):
        return [(prompt, prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [(None, prompt)]
        return [(p if isinstance(p, str) else None, p) for p in prompt]
    return [("", prompt)]


class _CompletionPlan:
    __slots__ = ("id", "created", "model", "choices", "prompt_tokens", "completion_tokens", "opts")


def _plan_completion(body: Any, upstream_model: str, options: Any) -> _CompletionPlan:
    body = body if isinstance(body, dict) else {}
    opts = _Options(options)
    encoding = tokenizer.encoding_for_model(upstream_model)
    prompt = body.get("prompt")
    max_tokens = _max_output_tokens(body, default=COMPLETIONS_DEFAULT_MAX_TOKENS)
    stops = _stop_sequences(body)
    n = _positive_int(body.get("n"), high=MAX_CHOICES) or 1
    echo = body.get("echo") is True

    plan = _CompletionPlan()
    plan.created = int(time.time())
    plan.model = upstream_model
    plan.opts = opts
    plan.prompt_tokens = tokenizer.count_prompt_input(prompt, encoding=encoding)
    plan.completion_tokens = 0
    plan.choices = []  # (index, text, finish_reason)
    digest = b""
    for prompt_index, (prompt_text, hashed) in enumerate(_prompts(prompt)):
        digest = _digest(hashed)
        language = _language(prompt_text or "", opts)
        for j in range(n):
            # A completion continues the prompt, so its first word follows a space.
            text = " " + _sentences(digest + j.to_bytes(2, "little"), words=opts.words, language=language)
            text, _ = _cut_at_stop(text, stops)
            finish_reason = "stop"
            cut = tokenizer.truncate_text(text, max_tokens, encoding=encoding)
            if cut != text:
                text, finish_reason = cut, "length"
            plan.completion_tokens += tokenizer.count_text(text, encoding=encoding)
            if echo and prompt_text:
                text = prompt_text + text
            plan.choices.append((prompt_index * n + j, text, finish_reason))
    plan.id = _response_id("cmpl-mock-", digest)
    return plan


def completion(body: dict, *, upstream_model: str, options: dict | None = None) -> bytes:
    """A /v1/completions response body (object "text_completion")."""
    plan = _plan_completion(body, upstream_model, options)
    response: dict[str, Any] = {
        "id": plan.id,
        "object": "text_completion",
        "created": plan.created,
        "model": plan.model,
        "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": reason} for index, text, reason in plan.choices],
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if not plan.opts.omit_usage:
        response["usage"] = _usage(plan.prompt_tokens, plan.completion_tokens, plan.opts)
    return orjson.dumps(response)


def completion_chunks(body: dict, *, upstream_model: str, options: dict | None = None) -> list[bytes]:
    """The SSE events of a streamed /v1/completions response, ending with ``data: [DONE]``."""
    plan = _plan_completion(body, upstream_model, options)
    usage_chunk, usage_null = _wants_stream_usage(body, plan.opts)
    base: dict[str, Any] = {
        "id": plan.id, "object": "text_completion", "created": plan.created, "model": plan.model, "system_fingerprint": SYSTEM_FINGERPRINT,
    }

    def chunk(index: int, text: str, finish_reason: str | None = None) -> bytes:
        payload = dict(base, choices=[{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}])
        if usage_null:
            payload["usage"] = None
        return _event(payload)

    events = []
    per_choice = [[(index, piece) for piece in _split(text, plan.opts)] for index, text, _ in plan.choices]
    for round_entries in _interleave(per_choice):
        events.extend(chunk(index, piece) for index, piece in round_entries)
    events.extend(chunk(index, "", reason) for index, _, reason in plan.choices)
    if usage_chunk:
        events.append(_event(dict(base, choices=[], usage=_usage(plan.prompt_tokens, plan.completion_tokens, plan.opts))))
    events.append(DONE_EVENT)
    return events


# --------------------------------------------------------------------------- embeddings


def _embedding_items(value: Any) -> list[Any]:
    if isinstance(value, list) and value:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            return [value]
        return list(value)
    return [value]


def _unit_vector(seed: bytes, dimensions: int) -> array:
    raw = array("H", hashlib.shake_256(seed).digest(2 * dimensions))
    if sys.byteorder == "big":  # the same vector on every platform
        raw.byteswap()
    centred = [v - 32767.5 for v in raw]  # never exactly zero, so the norm is never zero
    norm = math.sqrt(math.fsum(x * x for x in centred))
    return array("f", [x / norm for x in centred])


def embeddings(body: dict, *, upstream_model: str, options: dict | None = None) -> bytes:
    """A /v1/embeddings response body: unit-length vectors derived from a hash of each input."""
    body = body if isinstance(body, dict) else {}
    opts = _Options(options)
    raw_input = body.get("input")
    dimensions = _positive_int(body.get("dimensions"), high=MAX_DIMENSIONS) or opts.dimensions
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(_embedding_items(raw_input)):
        vector = _unit_vector(_digest("embedding", upstream_model, item), dimensions)
        if as_base64:
            little_endian = array("f", vector)
            if sys.byteorder == "big":
                little_endian.byteswap()
            encoded: Any = base64.b64encode(little_endian.tobytes()).decode()
        else:
            encoded = vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    response: dict[str, Any] = {"object": "list", "data": data, "model": upstream_model}
    if not opts.omit_usage:
        prompt_tokens = tokenizer.count_embedding_input(raw_input, encoding=tokenizer.encoding_for_model(upstream_model))
        response["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return orjson.dumps(response)


# --------------------------------------------------------------------------- async delivery

_STREAMERS = {"chat": chat_completion_chunks, "completion": completion_chunks}
_RESPONDERS = {"chat": chat_completion, "completion": completion, "embedding": embeddings}


async def stream(body: dict, *, upstream_model: str, options: dict | None = None, kind: str = "chat") -> AsyncIterator[bytes]:
    """The stream events of ``kind`` ("chat" or "completion"), after ``latency_ms`` and
    ``chunk_delay_ms`` between events, as an upstream would deliver them."""
    if kind not in _STREAMERS:
        raise ValueError(f"cannot stream {kind!r}; use one of {', '.join(_STREAMERS)}")
    opts = _Options(options)
    events = _STREAMERS[kind](body, upstream_model=upstream_model, options=options)
    if opts.latency_ms:
        await asyncio.sleep(opts.latency_ms / 1000)
    for position, event in enumerate(events):
        if position and opts.chunk_delay_ms:
            await asyncio.sleep(opts.chunk_delay_ms / 1000)
        yield event


async def respond(body: dict, *, upstream_model: str, options: dict | None = None, kind: str = "chat") -> bytes:
    """The response body of ``kind`` ("chat", "completion" or "embedding") after ``latency_ms``."""
    if kind not in _RESPONDERS:
        raise ValueError(f"cannot answer {kind!r}; use one of {', '.join(_RESPONDERS)}")
    opts = _Options(options)
    if opts.latency_ms:
        await asyncio.sleep(opts.latency_ms / 1000)
    return _RESPONDERS[kind](body, upstream_model=upstream_model, options=options)
