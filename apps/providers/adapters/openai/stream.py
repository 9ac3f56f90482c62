"""OpenAI's SSE stream, decoded: ``data: {chat.completion.chunk}`` events separated by a blank line,
ended by ``data: [DONE]``; with ``stream_options.include_usage`` the last chunk carries ``usage``
and an empty ``choices`` (https://platform.openai.com/docs/api-reference/chat-streaming).

The canonical form *is* this format, so events pass through as the bytes that arrived: only a
chunk that mentions ``"usage"`` or ``"error"`` is parsed. Comment lines and other SSE fields are dropped.

An error event is never relayed: a ``data:`` payload that is an error object (``wire.error_object``),
one after ``event: error``, or one that is not JSON at all (an upstream's plain-text complaint) ends
the stream with ``error`` set to its payload; so does a stream that held no event at all. The relay
answers with the gateway's own error.
"""

from __future__ import annotations

from typing import Any

import orjson

from apps.providers.adapters.base import Usage
from apps.providers.adapters.openai.wire import error_object, stream_text, usage_from

_DONE = b"[DONE]"


class OpenAIStreamDecoder:
    """Bytes of one OpenAI-format stream in; its ``data:`` lines out (see ``StreamDecoder``)."""

    __slots__ = ("_buffer", "_endpoint", "_error_event", "done", "error", "events", "usage_chunk")

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._buffer = b""
        self._error_event = False  # inside an SSE event that declared ``event: error``
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
        ends with no event, no usage and no ``[DONE]`` (a JSON or plain-text body where SSE belonged)
        ends with ``error`` set to what it held."""
        tail, self._buffer = self._buffer, b""
        out = self._take(tail) if tail and not self.done else []
        if not self.done and not self.events and self.usage_chunk is None:
            self.error, self.done = tail.strip(), True
        return out

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
                self.done = True
                break
            if not payload:
                continue  # an empty data field carries nothing a client could parse
            if self._is_error(payload):
                break
            if self._withheld(line):
                continue
            self.events.append(line)
            out.append(line)
        self._error_event = False  # ``complete`` ends where an event ends
        return out

    def _field(self, line: bytes) -> None:
        # Other SSE fields and comments are dropped; ``event: error`` marks the event's data as an error.
        if line.startswith(b"event:"):
            self._error_event = line[6:].strip() == b"error"
        elif not line:
            self._error_event = False  # a blank line ends an SSE event

    def _withheld(self, line: bytes) -> bool:
        # Keeps a chunk with usage; the usage-only one goes out last, rendered with the gateway's cost.
        if b'"usage":{' not in line and b'"usage": {' not in line:
            return False
        try:
            candidate = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            return False
        if not isinstance(candidate, dict) or not isinstance(candidate.get("usage"), dict):
            return False
        self.usage_chunk = candidate
        return not candidate.get("choices")

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
        """See ``StreamDecoder.generated_text``."""
        return stream_text(self.events, self._endpoint)

    def produced(self) -> bool:
        """See ``StreamDecoder.produced``."""
        return bool(self.events)
