"""OpenAI's SSE stream, decoded: ``data: {chat.completion.chunk}`` events separated by a blank line,
ended by ``data: [DONE]``; with ``stream_options.include_usage`` the last chunk carries ``usage``
and an empty ``choices`` (https://platform.openai.com/docs/api-reference/chat-streaming).

The canonical form *is* this format, so events pass through as the bytes that arrived: only a
chunk that mentions ``"usage"``, ``"error"`` or a ``finish_reason`` outside OpenAI's vocabulary is
parsed. Comment lines (DeepSeek's ``: keep-alive``) and other SSE fields are dropped;
``data:[DONE]`` without the space ends the stream like ``data: [DONE]``.

The family's protocol faults are handled here, once:

- usage on a *content* chunk (Mistral always, vLLM's ``continuous_usage_stats`` on every chunk):
  the chunk is relayed without it and the usage is kept as a usage-only chunk, so a client that
  asked for usage gets the text once and the usage chunk once;
- a provider's ``finish_reason`` word (``tool_use``, ``end_turn``, ``eos``…) is rewritten into
  OpenAI's (``wire.canonical_finish_reason``); ``"error"`` ends the stream with ``error`` set
  (``FINISH_ERROR``) after the chunk's text;
- one JSON completion where the stream belonged (an upstream that ignored ``stream: true``) comes
  out as canonical chunks and its usage chunk (``wire.completion_chunks``);
- a stream that closed with content but with neither ``[DONE]`` nor a ``finish_reason`` is
  truncated: ``error`` is set to ``TRUNCATED`` and the relay ends the client's stream with an error
  event, not a clean end;
- a stream that ended with no text at all and no usage (``data: [DONE]`` alone, or a role and a
  finish chunk) is ``EMPTY``: nothing was delivered and the upstream billed nothing it told us of.

An error event is never relayed: a ``data:`` payload that is an error object (``wire.error_object``),
one after ``event: error``, or one that is not JSON at all (an upstream's plain-text complaint) ends
the stream with ``error`` set to its payload; so does a stream that held no event at all. The relay
answers with the gateway's own error (``OpenAIAdapter.in_band_error``, which knows the markers).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from apps.providers.adapters.base import Usage
from apps.providers.adapters.openai.wire import (
    FINISH_ERROR,
    FINISH_REASONS,
    canonical_choices,
    completion_chunks,
    error_object,
    stream_text,
    usage_from,
    with_cache_details,
)

_DONE = b"[DONE]"
# ``error`` markers for faults the decoder found itself (no upstream payload; NUL never starts JSON).
TRUNCATED = b"\x00jetstream:truncated"
EMPTY = b"\x00jetstream:empty"
FAILED_FINISH = b"\x00jetstream:finish-error"
MARKERS = (TRUNCATED, EMPTY, FAILED_FINISH)

_FINISH_KEY = b'"finish_reason":'
_FINISH_WORDS = re.compile(rb'"finish_reason"\s*:\s*"([^"]*)"')
_CANONICAL_WORDS = frozenset(word.encode() for word in FINISH_REASONS)


class OpenAIStreamDecoder:
    """Bytes of one OpenAI-format stream in; its ``data:`` lines out (see ``StreamDecoder``)."""

    __slots__ = ("_buffer", "_endpoint", "_error_event", "_finished", "_text", "done", "error", "events", "usage_chunk")

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._buffer = b""
        self._error_event = False  # inside an SSE event that declared ``event: error``
        self._finished = False  # a choice's finish_reason arrived: a close without [DONE] is no truncation
        self._text: str | None = None  # the generated text, once the stream is over
        self.done = False
        self.error: bytes | None = None
        self.usage_chunk: dict[str, Any] | None = None
        self.events: list[bytes] = []  # every relayed event, for local counting when usage never comes

    def feed(self, data: bytes) -> list[bytes]:
        """See ``StreamDecoder.feed``: events end at a blank line; a partial one waits for the next read."""
        buffer = self._buffer + data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._buffer = buffer
            return []
        complete, self._buffer = buffer[:end], buffer[end + 2:]
        return self._take(complete)

    def finish(self) -> list[bytes]:
        """See ``StreamDecoder.finish``: the unterminated tail, unless ``[DONE]`` came. A stream that
        held only one JSON completion comes out as its chunks; one that ends with no event, no usage
        and no ``[DONE]`` (a JSON error or plain-text body where SSE belonged) ends with ``error`` set
        to what it held; one cut off after content (no ``[DONE]``, no ``finish_reason``) with
        ``TRUNCATED``; one with nothing generated and no usage with ``EMPTY``."""
        tail, self._buffer = self._buffer, b""
        if self.done:
            return []
        out = self._take(tail) if tail else []
        if self.done:
            return out
        if not self.events and self.usage_chunk is None:
            converted = self._completion(tail)
            if converted is None:
                self.error, self.done = tail.strip(), True
                return out
            out = converted
        elif not self._finished and self.events:
            self.error = TRUNCATED
        self._complete()
        return out

    def _completion(self, tail: bytes) -> list[bytes] | None:
        # A whole JSON answer where a stream belonged: its chunks, as if it had streamed.
        try:
            obj = orjson.loads(tail)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(obj, dict) or error_object(obj) is not None or not isinstance(obj.get("choices"), list):
            return None
        events, self.usage_chunk = completion_chunks(obj, self._endpoint)
        self.events.extend(events)
        self._finished = True
        return events

    def _complete(self) -> None:
        self.done = True
        if self.error is None and self.usage_chunk is None:
            self._text = stream_text(self.events, self._endpoint)
            if not self._text:
                self.error = EMPTY

    def _take(self, complete: bytes) -> list[bytes]:
        out = []
        for line in complete.split(b"\n"):
            if self.done:
                break
            if not line.startswith(b"data:"):
                self._field(line)
                continue
            payload = line[5:].strip()
            if payload == _DONE:
                self._complete()
                break
            if not payload:
                continue  # an empty data field carries nothing a client could parse
            if self._is_error(payload):
                break
            relayed = self._without_usage(line)
            if relayed is None:
                continue
            # One scan from the end (where the key sits): content chunks say ``"finish_reason":null``.
            at = relayed.rfind(_FINISH_KEY)
            if at >= 0 and not relayed.startswith(b"null", at + 16):
                relayed = self._canonical_finish(relayed)
            self.events.append(relayed)
            out.append(relayed)
        self._error_event = False  # ``complete`` ends where an event ends
        return out

    def _field(self, line: bytes) -> None:
        # Other SSE fields and comments are dropped; ``event: error`` marks the event's data as an error.
        if line.startswith(b"event:"):
            self._error_event = line[6:].strip() == b"error"
        elif not line:
            self._error_event = False  # a blank line ends an SSE event

    def _without_usage(self, line: bytes) -> bytes | None:
        # The line to relay: a usage-only chunk is withheld (it goes out last, rendered with the
        # gateway's cost); a content chunk that also carries usage goes out without it.
        if b'"usage":{' not in line and b'"usage": {' not in line:
            return line
        try:
            candidate = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            return line
        if not isinstance(candidate, dict) or not isinstance(candidate.get("usage"), dict):
            return line
        with_cache_details(candidate)
        if not candidate.get("choices"):
            self.usage_chunk = candidate
            return None
        self.usage_chunk = {**candidate, "choices": []}
        content = {key: value for key, value in candidate.items() if key != "usage"}
        return b"data: " + orjson.dumps(content)

    def _canonical_finish(self, line: bytes) -> bytes:
        # A chunk that names a finish_reason: parsed only when a word is not OpenAI's.
        words = _FINISH_WORDS.findall(line)
        self._finished = self._finished or bool(words)
        if all(word in _CANONICAL_WORDS for word in words):
            return line
        try:
            chunk = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            return line
        if not isinstance(chunk, dict):
            return line
        if any(isinstance(c, dict) and c.get("finish_reason") == FINISH_ERROR for c in chunk.get("choices") or []):
            self.error, self.done = FAILED_FINISH, True  # the text of this chunk still goes out
        canonical_choices(chunk)
        return b"data: " + orjson.dumps(chunk)

    def _is_error(self, payload: bytes) -> bool:
        # Every chunk is a JSON object; anything else, or an object that is (or, cut off, may have
        # been) an error, is the upstream failing in-band. Only a payload that mentions "error" is
        # parsed: the hot path stays a byte scan.
        failed = self._error_event or payload[:1] != b"{"
        if not failed and b'"error"' in payload:
            try:
                failed = error_object(orjson.loads(payload)) is not None
            except orjson.JSONDecodeError:
                failed = True
        if failed:
            self.error, self.done = payload, True
        return failed

    def usage(self) -> Usage | None:
        """See ``StreamDecoder.usage``."""
        return usage_from(self.usage_chunk) if self.usage_chunk else None

    def generated_text(self) -> str:
        """See ``StreamDecoder.generated_text`` (answer, reasoning and tool calls, as ``wire.stream_text``)."""
        if self._text is not None:
            return self._text
        return stream_text(self.events, self._endpoint)

    def produced(self) -> bool:
        """See ``StreamDecoder.produced``."""
        return bool(self.events)
