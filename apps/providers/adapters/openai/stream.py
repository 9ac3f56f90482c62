"""OpenAI's SSE stream, decoded: ``data: {chat.completion.chunk}`` events separated by a blank line,
ended by ``data: [DONE]``; with ``stream_options.include_usage`` the last chunk carries ``usage``
and an empty ``choices`` (https://platform.openai.com/docs/api-reference/chat-streaming).

The canonical form *is* this format, so events pass through as the bytes that arrived: only a
chunk that mentions ``"usage"`` is parsed. Comment lines and other SSE fields are dropped.
"""

from __future__ import annotations

from typing import Any

import orjson

from apps.providers.adapters.base import Usage
from apps.providers.adapters.openai.wire import stream_text, usage_from

_DONE = b"data: [DONE]"


class OpenAIStreamDecoder:
    """Bytes of one OpenAI-format stream in; its ``data:`` lines out (see ``StreamDecoder``)."""

    __slots__ = ("_buffer", "_endpoint", "done", "events", "usage_chunk")

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._buffer = b""
        self.done = False
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
        """See ``StreamDecoder.finish``: the unterminated tail, unless ``[DONE]`` came."""
        tail, self._buffer = self._buffer, b""
        return self._take(tail) if tail and not self.done else []

    def _take(self, complete: bytes) -> list[bytes]:
        out = []
        for line in complete.split(b"\n"):
            if not line.startswith(b"data:") or self.done:
                continue
            if line == _DONE:
                self.done = True
                break
            if b'"usage":{' in line or b'"usage": {' in line:
                try:
                    candidate = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    candidate = None
                if isinstance(candidate, dict) and isinstance(candidate.get("usage"), dict):
                    self.usage_chunk = candidate
                    if not candidate.get("choices"):
                        continue  # the usage-only chunk goes out last, rendered with the gateway's cost
            self.events.append(line)
            out.append(line)
        return out

    def usage(self) -> Usage | None:
        """See ``StreamDecoder.usage``."""
        return usage_from(self.usage_chunk) if self.usage_chunk else None

    def generated_text(self) -> str:
        """See ``StreamDecoder.generated_text``."""
        return stream_text(self.events, self._endpoint)

    def produced(self) -> bool:
        """See ``StreamDecoder.produced``."""
        return bool(self.events)
