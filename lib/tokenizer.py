"""Offline token counting (OpenAI's BPE encodings via ``quicktok``; nothing is downloaded).

Used where an upstream gives no usage (settle from counted tokens), to size reservations before
a call, and by the ``mock`` provider so its usage is honest. Every ``count_*`` function accepts
whatever a JSON request body may hold and never raises on odd input: a value of an unexpected
type is counted as its JSON text.

Encodings load lazily, once per process (the first load costs ~0.4 s: call ``preload()`` at
worker start to keep that off a request).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import Any

import orjson

O200K = "o200k_base"
CL100K = "cl100k_base"
ENCODINGS = (O200K, CL100K)

# OpenAI's chat counting recipe: each message is wrapped as <|start|>{role/name}\n{content}<|end|>\n,
# a name costs one more token, and every reply is primed with <|start|>assistant<|message|>.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
# An image part is counted at the low-detail price: the proxy cannot fetch the image to size it.
IMAGE_PART_TOKENS = 85

_IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})
_O200K_PREFIXES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "gpt-oss", "o1", "o3", "o4")


class UnknownEncodingError(ValueError):
    """A caller named an encoding this module does not ship (a programming error, not bad input)."""


class _Loaded:
    """One encoding's operations: ``count(str) -> int``, ``encode(str) -> list[int]``, ``decode_bytes``.

    quicktok (exact BPE in C++, tables bundled in the wheel) counts without building a token list
    and has no length caps; it agrees token for token with the reference implementation
    (tests/lib/test_tokenizer.py checks it against bpe_openai). It costs ~65 MB for o200k and
    ~30 MB for cl100k, a third of what bpe_openai needs, which matters for the proxy's RSS.
    """

    __slots__ = ("count", "encode", "decode_bytes")

    def __init__(self, encoding: str) -> None:
        import quicktok

        enc = quicktok.get_encoding(encoding)
        self.count = _utf8_safe(enc.count)
        self.encode = _utf8_safe(enc.encode_ordinary)
        self.decode_bytes = enc.decode_bytes


def _utf8_safe(func):
    """JSON may carry lone surrogates, which are not UTF-8: count them as U+FFFD, never raise."""

    def call(text: str):
        try:
            return func(text)
        except (UnicodeEncodeError, TypeError):  # pybind11 reports an unencodable str as a TypeError
            if not isinstance(text, str):
                raise
            return func(text.encode("utf-8", "replace").decode("utf-8"))

    return call


_loaded: dict[str, _Loaded] = {}
_load_lock = threading.Lock()


def _encoding(encoding: str) -> _Loaded:
    loaded = _loaded.get(encoding)
    if loaded is not None:
        return loaded
    if encoding not in ENCODINGS:
        raise UnknownEncodingError(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")
    with _load_lock:  # two threads asking for the first time load it once
        loaded = _loaded.get(encoding)
        if loaded is None:
            loaded = _Loaded(encoding)
            _loaded[encoding] = loaded
    return loaded


def _counter(encoding: str):
    return _encoding(encoding).count


def preload(encodings: Iterable[str] = ENCODINGS) -> None:
    """Load encodings now (at worker start) instead of on the first request."""
    for name in encodings:
        _counter(name)


def encoding_for_model(name: Any) -> str:
    """o200k_base for the GPT-4o/4.1/4.5/5 and o-series families, cl100k_base for everything else."""
    if not isinstance(name, str):
        return CL100K
    model = name.strip().lower().rsplit("/", 1)[-1]  # "openai/gpt-4o" names the same model
    return O200K if model.startswith(_O200K_PREFIXES) else CL100K


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        try:
            return json.dumps(value, ensure_ascii=False, default=repr)
        except (TypeError, ValueError):  # e.g. a circular structure
            return repr(value)


def _count_str(text: str, counter) -> int:
    if not text:
        return 0
    try:
        return counter(text)
    except UnicodeEncodeError:  # lone surrogates from a lenient JSON parser
        return counter(text.encode("utf-8", "replace").decode("utf-8"))


def count_text(text: Any, *, encoding: str = O200K) -> int:
    """Tokens in ``text``; a non-string is counted as its JSON text, None as nothing."""
    if text is None:
        return 0
    if not isinstance(text, str):
        text = _json_text(text)
    return _count_str(text, _counter(encoding))


def _count_content(content: Any, counter) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return _count_str(content, counter)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += _count_str(part, counter)
                continue
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind in _IMAGE_PART_TYPES:
                total += IMAGE_PART_TOKENS
            elif kind in ("text", "input_text", "output_text") or (kind is None and "text" in part):
                text = part.get("text")
                total += _count_str(text, counter) if isinstance(text, str) else _count_str(_json_text(text), counter)
            elif kind == "refusal":
                total += _count_content(part.get("refusal"), counter)
            # Unknown parts (audio, files, …) cost what the upstream says; counting guesses here would overcharge.
        return total
    return _count_str(_json_text(content), counter)


def _count_function_call(call: Any, counter) -> int:
    if not isinstance(call, dict):
        return _count_str(_json_text(call), counter)
    total = 0
    for key in ("name", "arguments"):
        value = call.get(key)
        if value is None:
            continue
        total += _count_str(value if isinstance(value, str) else _json_text(value), counter)
    return total


def _count_tool_calls(tool_calls: Any, counter) -> int:
    if not isinstance(tool_calls, list):
        return _count_str(_json_text(tool_calls), counter) if tool_calls is not None else 0
    total = 0
    for call in tool_calls:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            total += _count_function_call(call["function"], counter)
        elif call is not None:
            total += _count_str(_json_text(call), counter)
    return total


def _count_message(message: Any, counter) -> int:
    if not isinstance(message, dict):
        return TOKENS_PER_MESSAGE + _count_str(_json_text(message), counter)
    total = TOKENS_PER_MESSAGE
    for key, value in message.items():
        if key == "content":
            total += _count_content(value, counter)
        elif key == "tool_calls":
            total += _count_tool_calls(value, counter)
        elif key == "function_call":
            total += _count_function_call(value, counter) if value is not None else 0
        elif isinstance(value, str):
            total += _count_str(value, counter)
            if key == "name":
                total += TOKENS_PER_NAME
        elif value is not None:
            total += _count_str(_json_text(value), counter)
    return total


def count_chat_prompt(messages: Any, *, encoding: str = O200K) -> int:
    """Prompt tokens of chat ``messages`` by OpenAI's recipe (without tool definitions: see count_tools)."""
    counter = _counter(encoding)
    if not isinstance(messages, list):
        return REPLY_PRIMING_TOKENS + (_count_str(_json_text(messages), counter) if messages is not None else 0)
    return REPLY_PRIMING_TOKENS + sum(_count_message(message, counter) for message in messages)


def count_tools(tools: Any, *, encoding: str = O200K) -> int:
    """Tokens of tool (or legacy function) definitions, counted on their JSON."""
    if not tools:
        return 0
    return _count_str(_json_text(tools), _counter(encoding))


def count_chat_request(body: Any, *, encoding: str | None = None) -> int:
    """Prompt tokens of a /v1/chat/completions body: messages plus tool and function definitions."""
    if not isinstance(body, dict):
        return count_text(body, encoding=encoding or CL100K)
    encoding = encoding or encoding_for_model(body.get("model"))
    return (
        count_chat_prompt(body.get("messages"), encoding=encoding)
        + count_tools(body.get("tools"), encoding=encoding)
        + count_tools(body.get("functions"), encoding=encoding)
    )


def count_completion_output(message: Any, *, encoding: str = O200K) -> int:
    """Output tokens of one generated assistant message (or a stream's accumulated deltas):
    its content, refusal, tool-call names and arguments, and legacy function_call."""
    counter = _counter(encoding)
    if not isinstance(message, dict):
        return _count_content(message, counter)
    return (
        _count_content(message.get("content"), counter)
        + _count_content(message.get("refusal"), counter)
        + _count_tool_calls(message.get("tool_calls"), counter)
        + (_count_function_call(message["function_call"], counter) if message.get("function_call") is not None else 0)
    )


def _is_token_array(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, int) and not isinstance(item, bool) for item in value)


def _count_text_or_tokens(value: Any, counter) -> int:
    """A string, a list of strings, a token-id array, or a list of token-id arrays."""
    if value is None:
        return 0
    if isinstance(value, str):
        return _count_str(value, counter)
    if isinstance(value, list):
        if _is_token_array(value):
            return len(value)
        total = 0
        for item in value:
            if isinstance(item, str):
                total += _count_str(item, counter)
            elif _is_token_array(item):
                total += len(item)
            elif item is not None:
                total += _count_str(_json_text(item), counter)
        return total
    return _count_str(_json_text(value), counter)


def count_prompt_input(prompt: Any, *, encoding: str = CL100K) -> int:
    """Prompt tokens of a /v1/completions ``prompt`` (string, strings, token array or token arrays)."""
    return _count_text_or_tokens(prompt, _counter(encoding))


def count_embedding_input(input: Any, *, encoding: str = CL100K) -> int:  # noqa: A002 - OpenAI's field name
    """Tokens of a /v1/embeddings ``input`` (string, strings, token array or token arrays)."""
    return _count_text_or_tokens(input, _counter(encoding))


def truncate_text(text: str, max_tokens: int, *, encoding: str = O200K) -> str:
    """The longest prefix of ``text`` that counts as at most ``max_tokens`` tokens."""
    if max_tokens <= 0 or not text:
        return ""
    loaded = _encoding(encoding)
    text = text.encode("utf-8", "replace").decode("utf-8")
    ids = loaded.encode(text)
    if len(ids) <= max_tokens:
        return text
    # A token may end inside a multi-byte character: drop the partial character.
    prefix = loaded.decode_bytes(ids[:max_tokens]).decode("utf-8", "ignore")
    # Re-encoding a prefix can merge differently at its end; shorten until the count holds.
    while prefix and loaded.count(prefix) > max_tokens:
        prefix = prefix[:-1]
    return prefix
