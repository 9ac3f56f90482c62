"""GigaChat's SSE stream, decoded into canonical ``chat.completion.chunk`` events.

Upstream (https://developers.sber.ru/docs/ru/gigachat/api/response-token-streaming, and the
SDK's recorded ``test_stream_simple`` exchange): ``data: {json}`` events separated by a blank
line, ended by ``data: [DONE]``. Chunks say ``"object": "chat.completion"`` and carry no ``id``;
the role comes in the first delta only. The LAST CONTENT chunk — the one with ``finish_reason`` —
also carries ``usage`` (no opt-in needed)::

    data: {"choices":[{"delta":{"content":"1, 2","role":"assistant"},"index":0}],"created":…,"model":"GigaChat:2.0.28.2","object":"chat.completion"}
    data: {"choices":[{"delta":{"content":""},"index":0,"finish_reason":"stop"}],…,"usage":{"prompt_tokens":17,"completion_tokens":42,"total_tokens":59,"precached_prompt_tokens":2}}
    data: [DONE]

That chunk is relayed once, without its usage; the usage goes to ``usage_chunk`` as a separate
canonical chunk with empty ``choices``, which the relay renders at the end with the gateway's cost
(only if the client asked for ``include_usage``): the client never sees the content twice.

A function call arrives as ``delta.function_call {name, arguments: <object>}``; it is collected
and relayed as one OpenAI ``tool_calls`` delta (arguments as a JSON string, an id minted) with the
chunk that finishes the choice, so arguments split over several chunks still make one call.

An error ends the stream with ``error`` set to its payload (never relayed): a ``data:`` payload
that is not a JSON object, a GigaChat error object (``{"status", "message"}``), a chunk with
``finish_reason: "error"``, or a stream that held no event at all.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from apps.providers.adapters.base import Usage
from apps.providers.adapters.gigachat.wire import as_dict, canonical_usage, finish_reason, tool_call, usage_from

_DONE = b"[DONE]"


class _PendingCall:
    """A function call being collected from deltas, for one choice."""

    __slots__ = ("arguments", "name", "state_id")

    def __init__(self) -> None:
        self.name = ""
        self.arguments: dict[str, Any] | str = {}
        self.state_id: Any = None

    def add(self, function_call: dict[str, Any], state_id: Any) -> None:
        self.name = self.name or str(function_call.get("name") or "")
        self.state_id = self.state_id or state_id
        more = function_call.get("arguments")
        if isinstance(more, dict) and isinstance(self.arguments, dict):
            self.arguments = {**self.arguments, **more}
        elif isinstance(more, str):
            self.arguments = (self.arguments if isinstance(self.arguments, str) else "") + more


class GigaChatStreamDecoder:
    """Bytes of one GigaChat stream in; canonical ``data:`` lines out (see ``StreamDecoder``).

    ``model`` is the public model name the chunks carry; their ``id`` is minted once per stream."""

    __slots__ = ("_buffer", "_calls", "_created", "_id", "_model", "_text", "_usage", "done", "error", "events", "usage_chunk")

    def __init__(self, model: str) -> None:
        self._model = model
        self._id = f"chatcmpl-{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._buffer = b""
        self._calls: dict[int, _PendingCall] = {}
        self._text: list[str] = []
        self._usage: Usage | None = None
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
        """See ``StreamDecoder.finish``: the unterminated tail, unless ``[DONE]`` came; a stream with
        no event and no usage ends with ``error`` set to what it held."""
        tail, self._buffer = self._buffer, b""
        out = self._take(tail) if tail and not self.done else []
        if not self.done:
            out.extend(self._flush())
        if not self.done and not self.events and self._usage is None:
            self.error, self.done = tail.strip() or b"(empty stream)", True
        return out

    def _take(self, complete: bytes) -> list[bytes]:
        out = []
        for line in complete.split(b"\n"):
            if self.done:
                break
            if not line.startswith(b"data:"):
                continue  # comments and other SSE fields carry nothing for the client
            payload = line[5:].strip()
            if payload == _DONE:
                self.done = True
                out.extend(self._flush())
                break
            if payload:
                event = self._event(payload)
                if event is not None:
                    self.events.append(event)
                    out.append(event)
        return out

    def _event(self, payload: bytes) -> bytes | None:
        """The canonical event for one upstream payload (None: nothing to relay, or an error)."""
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict) or ("choices" not in chunk and "usage" not in chunk):
            self.error, self.done = payload, True
            return None
        usage = usage_from(chunk)
        if usage is not None:  # kept even from a failed chunk: what was generated is billed
            self._keep_usage(usage)
        if _failed(chunk):
            self.error, self.done = payload, True
            return None
        choices = [self._choice(choice, position) for position, choice in enumerate(chunk.get("choices") or [])
                   if isinstance(choice, dict)]
        return self._render(choices) if choices else None

    def _keep_usage(self, usage: Usage) -> None:
        self._usage = usage
        self.usage_chunk = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                            "model": self._model, "choices": [], "usage": canonical_usage(usage)}

    def _flush(self) -> list[bytes]:
        """A function call still being collected when the stream ended (no chunk finished its
        choice), as one last event that finishes it."""
        choices = []
        for index, pending in sorted(self._calls.items()):
            choices.append({"index": index, "delta": {"tool_calls": [self._finished_call(pending)]}, "finish_reason": "tool_calls", "logprobs": None})
        self._calls.clear()
        if not choices:
            return []
        event = self._render(choices)
        self.events.append(event)
        return [event]

    def _finished_call(self, pending: _PendingCall) -> dict[str, Any]:
        call = tool_call({"name": pending.name, "arguments": pending.arguments}, pending.state_id, index=0)
        self._text.append(call["function"]["name"] + call["function"]["arguments"])
        return call

    def _render(self, choices: list[dict[str, Any]]) -> bytes:
        return b"data: " + orjson.dumps({"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                                         "model": self._model, "choices": choices})

    def _choice(self, choice: dict[str, Any], position: int) -> dict[str, Any]:
        index = choice.get("index", position)
        delta = as_dict(choice.get("delta"))
        mapped: dict[str, Any] = {}
        if delta.get("role"):
            mapped["role"] = "assistant"
        for field in ("content", "reasoning_content"):
            if isinstance(delta.get(field), str):
                mapped[field] = delta[field]
                self._text.append(delta[field])
        if isinstance(delta.get("function_call"), dict):
            self._calls.setdefault(index, _PendingCall()).add(delta["function_call"], delta.get("functions_state_id"))
        reason = finish_reason(choice.get("finish_reason"))
        pending = self._calls.pop(index, None) if reason is not None else None
        if pending is not None:
            mapped["tool_calls"] = [self._finished_call(pending)]
            if not mapped.get("content"):
                mapped.pop("content", None)
        return {"index": index, "delta": mapped, "finish_reason": reason, "logprobs": None}

    def usage(self) -> Usage | None:
        """See ``StreamDecoder.usage``."""
        return self._usage

    def generated_text(self) -> str:
        """See ``StreamDecoder.generated_text``."""
        return "".join(self._text)

    def produced(self) -> bool:
        """See ``StreamDecoder.produced``."""
        return bool(self.events)


def _failed(chunk: dict[str, Any]) -> bool:
    """Whether a decoded payload is GigaChat failing in-band: an error object, or a choice that
    finished with ``error``."""
    if "choices" not in chunk and ("status" in chunk or "message" in chunk):
        return True
    return any(isinstance(choice, dict) and choice.get("finish_reason") == "error" for choice in chunk.get("choices") or [])
