"""YandexGPT's native stream, decoded: newline-delimited JSON (not SSE), one ``{"result":
CompletionResponse}`` object per line, each carrying the *whole* text generated so far and the
*cumulative* usage; the last one has a final status (``ALTERNATIVE_STATUS_FINAL``, ``…TRUNCATED_FINAL``,
``…CONTENT_FILTER``, ``…TOOL_CALLS``) and the stream just ends — there is no terminator line
(https://yandex.cloud/en/docs/ai-studio/text-generation/api-ref/TextGeneration/completion;
recorded streams in yandex-cloud/yandex-cloud-ml-sdk's test cassettes).

The decoder diffs each alternative's text against the previous line's and emits the difference as
an OpenAI ``chat.completion.chunk`` delta (code points, so multi-byte Russian text is never split:
lines are cut at ``\\n`` bytes, which never occur inside UTF-8 sequences or JSON strings). A final
tool-call message becomes one ``tool_calls`` delta. An ``{"error": …}`` line (gRPC-gateway's
shape), or a line that is not JSON, ends the stream with ``error`` set; so does a stream that closes
before any alternative reached a final status (a truncated answer must not look complete).

``YandexStreamDecoder`` also serves the provider's ``api: openai`` mode: it looks at the first bytes
and hands an SSE stream to ``OpenAIStreamDecoder`` (the adapter's methods do not know the provider's
options, the bytes do).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from apps.providers.adapters.base import StreamDecoder, Usage
from apps.providers.adapters.openai import OpenAIStreamDecoder
from apps.providers.adapters.yandexgpt import wire

# What ``error`` holds when the stream closed before a final status (read by ``in_band_error``).
TRUNCATED = orjson.dumps({"error": {"httpCode": 502, "message": "The upstream stream ended before its final status."}})


class NativeStreamDecoder:
    """Bytes of one native YandexGPT stream in; canonical ``data: {chat.completion.chunk}`` lines out
    (see ``StreamDecoder``). ``model`` is the name the chunks carry (the relay renames it anyway)."""

    __slots__ = ("_buffer", "_created", "_finished", "_id", "_model", "_texts", "_tools", "_usage", "done", "error",
                 "produced_any", "usage_chunk")

    def __init__(self, model: str) -> None:
        self._buffer = b""
        self._id = f"chatcmpl-{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._model = model
        self._texts: dict[int, str] = {}  # per alternative: the text relayed so far
        self._tools: list[str] = []  # names and arguments of relayed tool calls (for local counting)
        self._finished: dict[int, bool] = {}
        self._usage: Usage | None = None
        self.produced_any = False
        self.done = False
        self.error: bytes | None = None
        self.usage_chunk: dict[str, Any] | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """See ``StreamDecoder.feed``: complete lines are decoded; a partial one waits for the next read."""
        buffer = self._buffer + data
        end = buffer.rfind(b"\n")
        if end < 0:
            self._buffer = buffer
            return []
        complete, self._buffer = buffer[:end], buffer[end + 1:]
        out: list[bytes] = []
        for line in complete.split(b"\n"):
            if self.done:
                break
            out += self._line(line.strip())
        return out

    def finish(self) -> list[bytes]:
        """See ``StreamDecoder.finish``: the unterminated last line; then, if no alternative reached a
        final status, ``error`` is set (``TRUNCATED``, or what the body held when it was no stream)."""
        tail, self._buffer = self._buffer.strip(), b""
        out = self._line(tail) if tail and not self.done else []
        if not self.done:
            self.error, self.done = (TRUNCATED if self.produced_any or self._usage else tail or TRUNCATED), True
        return out

    def _line(self, line: bytes) -> list[bytes]:
        if not line:
            return []
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        result = obj.get("result") if isinstance(obj, dict) else None
        if not isinstance(result, dict):
            self.error, self.done = line, True  # an error object, or not this format at all
            return []
        usage = wire.usage_of(result)
        if usage is not None:
            self._usage = usage
            self.usage_chunk = self._chunk([], usage=wire.openai_usage(result))
        out = []
        for index, alternative in enumerate(wire.alternatives(result)):
            out += self._alternative(index, alternative)
        if self._finished and all(self._finished.values()):
            self.done = True
        return out

    def _alternative(self, index: int, alternative: dict) -> list[bytes]:
        message = wire.message_of(alternative)
        status = str(alternative.get("status") or "")
        finish = wire.FINISH_REASONS.get(status)
        self._finished[index] = finish is not None
        out = []
        delta: dict[str, Any] = {} if index in self._texts else {"role": "assistant"}
        text = wire.text_of(message) or ""
        previous = self._texts.get(index, "")
        # Each line repeats the whole text: the new part is what follows the text already relayed
        # (should the upstream ever rewrite earlier text, what follows the common part).
        start = len(previous) if text.startswith(previous) else _common_prefix(previous, text)
        if text[start:]:
            delta["content"] = text[start:]
        self._texts[index] = text if len(text) >= len(previous) else previous
        calls = wire.tool_calls(message)
        if calls:
            delta["tool_calls"] = calls
            self._tools += [c["function"]["name"] + c["function"]["arguments"] for c in calls]
            finish = "tool_calls"
        if "content" in delta or calls:
            out.append(self._event([{"index": index, "delta": delta, "finish_reason": None, "logprobs": None}]))
        if finish is not None:
            out.append(self._event([{"index": index, "delta": {}, "finish_reason": finish, "logprobs": None}]))
        return out

    def _chunk(self, choices: list, *, usage: dict | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                                 "model": self._model, "choices": choices}
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    def _event(self, choices: list) -> bytes:
        self.produced_any = True
        return b"data: " + orjson.dumps(self._chunk(choices))

    def usage(self) -> Usage | None:
        """See ``StreamDecoder.usage``: the last line's (cumulative) usage."""
        return self._usage

    def generated_text(self) -> str:
        """See ``StreamDecoder.generated_text``."""
        return "".join(self._texts.values()) + "".join(self._tools)

    def produced(self) -> bool:
        """See ``StreamDecoder.produced``."""
        return self.produced_any


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class YandexStreamDecoder:
    """The stream decoder for both of the provider's APIs: the first non-blank byte decides — ``{``
    is the native NDJSON stream (``NativeStreamDecoder``), anything else SSE from the OpenAI-compatible
    endpoint (``OpenAIStreamDecoder``). Until then nothing is decoded (see ``StreamDecoder``)."""

    __slots__ = ("_endpoint", "_inner", "_model", "_pending")

    def __init__(self, endpoint: str, model: str) -> None:
        self._endpoint = endpoint
        self._model = model
        self._inner: StreamDecoder | None = None
        self._pending = b""

    @property
    def done(self) -> bool:
        """See ``StreamDecoder.done``."""
        return self._inner.done if self._inner is not None else False

    @property
    def error(self) -> bytes | None:
        """See ``StreamDecoder.error``."""
        return self._inner.error if self._inner is not None else None

    @property
    def usage_chunk(self) -> dict[str, Any] | None:
        """See ``StreamDecoder.usage_chunk``."""
        return self._inner.usage_chunk if self._inner is not None else None

    def feed(self, data: bytes) -> list[bytes]:
        """See ``StreamDecoder.feed``."""
        if self._inner is None:
            self._pending += data
            head = self._pending.lstrip()
            if not head:
                return []
            self._inner = NativeStreamDecoder(self._model) if head[:1] == b"{" else OpenAIStreamDecoder(self._endpoint)
            data, self._pending = self._pending, b""
        return self._inner.feed(data)

    def finish(self) -> list[bytes]:
        """See ``StreamDecoder.finish``: an empty stream is decoded as a native one (which reports it truncated)."""
        if self._inner is None:
            self._inner = NativeStreamDecoder(self._model)
        return self._inner.finish()

    def usage(self) -> Usage | None:
        """See ``StreamDecoder.usage``."""
        return self._inner.usage() if self._inner is not None else None

    def generated_text(self) -> str:
        """See ``StreamDecoder.generated_text``."""
        return self._inner.generated_text() if self._inner is not None else ""

    def produced(self) -> bool:
        """See ``StreamDecoder.produced``."""
        return self._inner.produced() if self._inner is not None else False
