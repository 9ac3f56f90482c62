"""Anthropic's named-event stream, decoded into canonical ``chat.completion.chunk`` events.

Source: https://docs.anthropic.com/en/api/messages-streaming. Every SSE event is
``event: <name>`` + ``data: <json whose "type" is the name>``, then a blank line:

    message_start        the message with empty content; ``usage`` holds the input side
    content_block_start  a text, tool_use or thinking block at ``index``
    content_block_delta  text_delta{text} | input_json_delta{partial_json} | thinking_delta | signature_delta
    content_block_stop
    message_delta        ``delta.stop_reason``; ``usage`` cumulative (output_tokens, and maybe the input side)
    message_stop         the end (there is no ``[DONE]``)
    ping                 any number, anywhere
    error                ``{"type": "error", "error": {"type", "message"}}`` — e.g. overloaded_error

Out: the role on the first chunk; text as ``delta.content``; a tool_use block as a ``tool_calls``
delta with its OpenAI index, id and name, then its argument fragments (a tool whose arguments
never arrived in fragments gets its start ``input`` as one, ``"{}"`` at least, so clients can
parse it); ``message_delta``'s stop reason as ``finish_reason``. Thinking is not relayed (its
tokens are billed as output). The usage goes into ``usage_chunk`` (withheld: the relay renders the
stream's end). Unknown event types are skipped, as Anthropic's versioning policy asks.

A whole ``message`` object where the stream belonged (an upstream that ignored ``stream: true``)
becomes one chunk with its text, tool calls and finish reason, and its usage. An ``error`` event, a
``data:`` payload that is not JSON, and a stream that closes before ``message_stop`` end the stream
with ``error`` set (the last with a synthetic ``api_error``): the
client gets the gateway's error event, never a truncated answer dressed as complete.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from apps.providers.adapters.anthropic.wire import completion, finish_reason, generated_text, openai_usage, usage_from
from apps.providers.adapters.base import Usage

TRUNCATED = b'{"type":"error","error":{"type":"api_error","message":"The upstream stream ended before message_stop."}}'


class AnthropicStreamDecoder:
    """Bytes of one Messages stream in; canonical ``data:`` lines out (see ``StreamDecoder``)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._id = "msg"
        self._model: str | None = None
        self._created = int(time.time())
        self._role_sent = False
        self._usage: dict[str, Any] | None = None  # Anthropic's usage, merged from message_start and message_delta
        self._output_reported = False  # a message_delta carried usage: output_tokens is a real count
        self._tools: dict[int, list[Any]] = {}  # block index → [OpenAI tool index, start input, fragments seen]
        self._text: list[str] = []
        self._events = 0
        self.done = False
        self.error: bytes | None = None
        self.usage_chunk: dict[str, Any] | None = None

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
        out: list[bytes] = []
        for event in complete.split(b"\n\n"):
            if self.done:
                break
            out += self._event(event)
        return out

    def finish(self) -> list[bytes]:
        """See ``StreamDecoder.finish``: the unterminated tail is decoded; a stream that ends without
        ``message_stop`` ends with ``error`` set (the tail if nothing at all came, else ``TRUNCATED``)."""
        tail, self._buffer = self._buffer, b""
        out = self._event(tail) if tail.strip() and not self.done else []
        if not self.done:
            nothing = self._events == 0 and self._usage is None
            whole = self._whole_message(tail) if nothing else None
            if whole is not None:
                return whole
            self.error, self.done = (tail.strip() or TRUNCATED) if nothing else TRUNCATED, True
        return out

    def _whole_message(self, tail: bytes) -> list[bytes] | None:
        """The chunks of a whole ``message`` object sent where the stream belonged (an upstream that
        ignored ``stream: true``), or None when ``tail`` is not one: the answer in one chunk."""
        try:
            message = orjson.loads(tail)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(message, dict) or message.get("type") != "message":
            return None
        self._start(message)
        body, usage = completion(message)
        [choice] = body["choices"]
        delta: dict[str, Any] = {"content": choice["message"]["content"]}
        if choice["message"].get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(choice["message"]["tool_calls"])]
        self._text.append(generated_text(body))
        self._output_reported = usage is not None
        self._set_usage_chunk()
        self.done = True
        return [self._chunk(delta, choice["finish_reason"])]

    def _event(self, event: bytes) -> list[bytes]:
        name, data = b"", []
        for line in event.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip()
            elif line.startswith(b"data:"):
                data.append(line[5:].strip())
        payload = b"\n".join(data)  # several data lines make one payload, joined by newlines (the SSE rule)
        if not payload:
            return []  # a comment, or an event with no data
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or name == b"error" or obj.get("type") == "error":
            self.error, self.done = payload, True
            return []
        return self._dispatch(obj)

    def _dispatch(self, obj: dict[str, Any]) -> list[bytes]:
        kind = obj.get("type")
        if kind == "message_start":
            self._start(obj.get("message"))
        elif kind == "content_block_start":
            return self._block_start(obj.get("index"), obj.get("content_block"))
        elif kind == "content_block_delta":
            return self._block_delta(obj.get("index"), obj.get("delta"))
        elif kind == "content_block_stop":
            return self._block_stop(obj.get("index"))
        elif kind == "message_delta":
            return self._message_delta(obj)
        elif kind == "message_stop":
            self.done = True
        return []  # ping and event types added later

    def _start(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        self._id = str(message.get("id") or self._id)
        self._model = message.get("model") if isinstance(message.get("model"), str) else None
        if isinstance(message.get("usage"), dict):
            self._usage = dict(message["usage"])

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        chunk = {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        self._events += 1
        return b"data: " + orjson.dumps(chunk)

    def _block_start(self, index: Any, block: Any) -> list[bytes]:
        if not isinstance(block, dict):
            return []
        if block.get("type") == "text":
            text = str(block.get("text") or "")
            self._text.append(text)
            return [self._chunk({"content": text})] if text or not self._role_sent else []
        if block.get("type") != "tool_use" or not isinstance(index, int):
            return []  # thinking, server tools: not relayed
        position = len(self._tools)
        self._tools[index] = [position, block.get("input"), False]
        name = str(block.get("name") or "")
        self._text.append(name)
        return [self._chunk({"content": None, "tool_calls": [{"index": position, "id": block.get("id"), "type": "function",
                                                             "function": {"name": name, "arguments": ""}}]})]

    def _block_delta(self, index: Any, delta: Any) -> list[bytes]:
        if not isinstance(delta, dict):
            return []
        if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
            self._text.append(delta["text"])
            return [self._chunk({"content": delta["text"]})]
        tool = self._tools.get(index) if isinstance(index, int) else None
        fragment = delta.get("partial_json")
        if delta.get("type") == "input_json_delta" and tool is not None and isinstance(fragment, str) and fragment:
            tool[2] = True
            return [self._arguments(tool[0], fragment)]
        return []

    def _block_stop(self, index: Any) -> list[bytes]:
        tool = self._tools.get(index) if isinstance(index, int) else None
        if tool is None or tool[2]:
            return []
        tool[2] = True
        return [self._arguments(tool[0], orjson.dumps(tool[1] or {}).decode())]

    def _arguments(self, position: int, fragment: str) -> bytes:
        self._text.append(fragment)
        return self._chunk({"tool_calls": [{"index": position, "function": {"arguments": fragment}}]})

    def _message_delta(self, obj: dict[str, Any]) -> list[bytes]:
        usage = obj.get("usage")
        if isinstance(usage, dict):
            # Cumulative: every figure it names replaces the one from message_start.
            self._usage = {**(self._usage or {}), **{k: v for k, v in usage.items() if v is not None}}
            self._output_reported = True
        self._set_usage_chunk()
        delta = obj.get("delta")
        reason = finish_reason(delta.get("stop_reason")) if isinstance(delta, dict) else None
        return [self._chunk({}, reason)] if reason is not None else []

    def _set_usage_chunk(self) -> None:
        canonical = usage_from(self._usage)
        if canonical is not None and self._usage is not None:
            self.usage_chunk = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                                "model": self._model, "choices": [], "usage": openai_usage(canonical, self._usage)}

    def usage(self) -> Usage | None:
        """See ``StreamDecoder.usage``: Anthropic's figures mapped as ``wire.usage_from`` does, once a
        ``message_delta`` reported the output. Before that (a stream cut or failed mid-answer)
        ``message_start``'s output figure is a placeholder, so None: the relay counts what was
        generated locally rather than bill one output token."""
        return usage_from(self._usage) if self._output_reported else None

    def generated_text(self) -> str:
        """See ``StreamDecoder.generated_text``: text, tool names and argument fragments."""
        return "".join(self._text)

    def produced(self) -> bool:
        """See ``StreamDecoder.produced``: message_start alone produces nothing."""
        return self._events > 0
