"""Gemini's stream, decoded: ``streamGenerateContent?alt=sse`` sends ``data: {GenerateContentResponse}``
events separated by a blank line, each a piece of the answer; there is no terminator — the stream
simply ends after the chunk that carries ``finishReason``. ``usageMetadata`` comes on the chunks
(running totals, the last one final). Source: https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent
and the official SDK's reader (googleapis/python-genai ``_api_client.py``).

Each chunk becomes one canonical ``chat.completion.chunk`` (``response.candidate_message`` per
candidate: text as ``delta.content``, function calls as whole ``delta.tool_calls``, thought parts
dropped); the usage goes out last, rendered by the relay from ``usage_chunk``.

Failures end the stream with ``error`` set (see ``GeminiAdapter.in_band_error``): an error object as a
``data:`` payload or as raw JSON outside any ``data:`` line (how Google sends a failure mid-stream),
a blocked prompt (``promptFeedback.blockReason``), a payload that is not JSON; and a stream that
ended without any chunk carrying a ``finishReason`` (cut off: ``TRUNCATED``).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from apps.providers.adapters.base import CanonicalRequest, Usage
from apps.providers.adapters.gemini.response import block_reason, candidate_message, finish_reason, openai_usage, response_id, usage_from

# ``error`` of a stream that ended before Gemini said it was finished (never an upstream's bytes: it
# cannot be JSON).
TRUNCATED = b"\x00stream ended without a finishReason"
_SSE_FIELDS = (b"event:", b"id:", b"retry:", b":")


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


class GeminiStreamDecoder:
    """Bytes of one ``streamGenerateContent?alt=sse`` answer in, canonical chunk lines out (see ``StreamDecoder``)."""

    def __init__(self, request: CanonicalRequest) -> None:
        self._model = request.model
        self._id = f"chatcmpl-{secrets.token_hex(12)}"
        self._created = int(time.time())
        self._buffer = b""
        self._raw = b""  # lines outside any SSE field: Google's mid-stream error JSON
        self._started: set[int] = set()  # candidates whose first delta (with the role) went out
        self._calls: dict[int, int] = {}  # candidate → tool calls sent so far (the next call's index)
        self._finished = False
        self._metadata: dict[str, Any] | None = None
        self._text: list[str] = []
        self.done = False
        self.error: bytes | None = None
        self.usage_chunk: dict[str, Any] | None = None
        self.events: list[bytes] = []

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
        """See ``StreamDecoder.finish``: the unterminated tail; then ``error`` if the upstream's own error
        came as raw JSON, or if no chunk said the answer was finished."""
        tail, self._buffer = self._buffer, b""
        out = self._take(tail) if tail.strip() and not self.done else []
        if not self.done:
            if self._raw.strip():
                self.error = self._raw.strip()
            elif not self._finished:
                self.error = TRUNCATED
            self.done = self.error is not None
        return out

    def _take(self, complete: bytes) -> list[bytes]:
        out: list[bytes] = []
        data: list[bytes] = []
        for line in complete.split(b"\n") + [b""]:
            if self.done:
                break
            if line.startswith(b"data:"):
                data.append(line[5:].strip())
            elif not line.strip():  # the end of an event: its data lines are one payload
                if data:
                    out.extend(self._event(b"\n".join(data)))
                data = []
            elif not line.startswith(_SSE_FIELDS):
                self._raw += line + b"\n"
        if self._raw and not self.done and _is_json(self._raw):
            self.error, self.done = self._raw.strip(), True
        return out

    def _event(self, payload: bytes) -> list[bytes]:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or "error" in obj or block_reason(obj) is not None:
            self.error, self.done = payload, True
            return []
        self._id = response_id(obj, self._id) if not self.events else self._id
        if isinstance(obj.get("usageMetadata"), dict):
            self._metadata = obj["usageMetadata"]
            self.usage_chunk = self._usage_chunk(self._metadata)
        choices = [choice for candidate in obj.get("candidates") or [] if isinstance(candidate, dict)
                   if (choice := self._choice(candidate)) is not None]
        if not choices:
            return []
        chunk = {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model,
                 "choices": choices}
        line = b"data: " + orjson.dumps(chunk)
        self.events.append(line)
        return [line]

    def _choice(self, candidate: dict[str, Any]) -> dict[str, Any] | None:
        given = candidate.get("index")
        index = given if isinstance(given, int) else 0
        text, calls = candidate_message(candidate)
        sent = self._calls.get(index, 0)
        finish = finish_reason(candidate.get("finishReason"), called=bool(calls) or sent > 0)
        if finish is not None:
            self._finished = True
        if text is None and not calls and finish is None:
            return None  # only thoughts (or nothing) in this piece
        delta: dict[str, Any] = {}
        if index not in self._started:
            self._started.add(index)
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
            self._text.append(text)
        if calls:
            delta["tool_calls"] = [{"index": sent + i, **call} for i, call in enumerate(calls)]
            self._calls[index] = sent + len(calls)
            self._text.extend(call["function"]["name"] + call["function"]["arguments"] for call in calls)
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    def _usage_chunk(self, metadata: dict[str, Any]) -> dict[str, Any] | None:
        usage = usage_from(metadata)
        if usage is None:
            return None
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model,
                "choices": [], "usage": openai_usage(usage, metadata)}

    def usage(self) -> Usage | None:
        """See ``StreamDecoder.usage``: from the last ``usageMetadata`` seen."""
        return usage_from(self._metadata)

    def generated_text(self) -> str:
        """See ``StreamDecoder.generated_text``: text and function calls (name + JSON arguments)."""
        return "".join(self._text)

    def produced(self) -> bool:
        """See ``StreamDecoder.produced``."""
        return bool(self.events)
