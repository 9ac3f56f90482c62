"""Reading the canonical answer (OpenAI chat completions) for dialects that render their own shape.

A non-streamed ``chat.completion`` (https://platform.openai.com/docs/api-reference/chat/object) is
read into an ``Answer``; a ``chat.completion.chunk`` event
(https://platform.openai.com/docs/api-reference/chat-streaming) into ``Piece``s. Only the first
choice is read: the Anthropic and Responses dialects never ask for ``n`` > 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(slots=True)
class ToolCall:
    """A function call the model made: its id, function name and arguments (a JSON text)."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Answer:
    """The first choice of a canonical non-streamed answer."""

    text: str = ""
    refusal: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass(slots=True)
class Piece:
    """One thing a chunk says. ``kind`` "text" (``text``), "tool" (a call's ``index`` in the answer,
    with its ``id``/``name`` on the first piece and ``text`` = an arguments fragment) or "finish"
    (``text`` = the OpenAI ``finish_reason``)."""

    kind: str
    text: str = ""
    index: int = 0
    id: str | None = None
    name: str | None = None


def _first_choice(obj: Any) -> dict[str, Any]:
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list):
        return {}
    return next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), {})


def read_answer(body: bytes) -> Answer:
    """The first choice of a ``chat.completion`` body (an empty ``Answer`` for anything else)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Answer()
    choice = _first_choice(obj)
    message: dict[str, Any] = choice["message"] if isinstance(choice.get("message"), dict) else {}
    answer = Answer(finish_reason=choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None)
    content = message.get("content")
    answer.text = content if isinstance(content, str) else ""
    refusal = message.get("refusal")
    answer.refusal = refusal if isinstance(refusal, str) else ""
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            answer.tool_calls.append(ToolCall(str(call.get("id") or f"call_{index}"), str(function.get("name") or ""),
                                              str(function.get("arguments") or "")))
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        answer.tool_calls.append(ToolCall("call_0", str(legacy.get("name") or ""), str(legacy.get("arguments") or "")))
    return answer


def read_pieces(event: bytes) -> Iterator[Piece]:
    """The pieces of one canonical stream event (``b"data: {chunk}"``); nothing for anything else."""
    payload = event[5:] if event.startswith(b"data:") else b""
    try:
        obj = orjson.loads(payload) if payload.strip() else None
    except orjson.JSONDecodeError:
        return
    choice = _first_choice(obj)
    delta = choice.get("delta")
    if isinstance(delta, dict):
        yield from _delta_pieces(delta)
    finish = choice.get("finish_reason")
    if isinstance(finish, str) and finish:
        yield Piece("finish", finish)


def _delta_pieces(delta: dict[str, Any]) -> Iterator[Piece]:
    for name in ("content", "refusal"):
        text = delta.get(name)
        if isinstance(text, str) and text:
            yield Piece("text", text)
    for position, call in enumerate(delta.get("tool_calls") or []):
        if not isinstance(call, dict):
            continue
        function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
        index = call.get("index", position)
        yield Piece("tool", str(function.get("arguments") or ""), index=index if isinstance(index, int) else position,
                    id=call.get("id") if isinstance(call.get("id"), str) else None,
                    name=function.get("name") if isinstance(function.get("name"), str) else None)
    legacy = delta.get("function_call")
    if isinstance(legacy, dict):
        yield Piece("tool", str(legacy.get("arguments") or ""), index=0, id=None,
                    name=legacy.get("name") if isinstance(legacy.get("name"), str) else None)


def sse(event: str, payload: dict[str, Any]) -> bytes:
    """One named SSE event (``event: …`` + ``data: {json}`` + the blank line)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
