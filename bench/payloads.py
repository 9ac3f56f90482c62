"""The fixed OpenAI-shaped bodies every bench upstream returns, and the request bodies clients send.

One place, so nginx (zero-cost upstream), the slow upstream and the response checks agree on
what a correct completion and a correct stream look like.
"""

from __future__ import annotations

import json

CHAT_MODEL = "bench-chat"  # routed to nginx's fixed JSON completion
STREAM_MODEL = "bench-stream"  # routed to nginx's fixed SSE stream
SLOW_MODEL = "bench-slow"  # routed to bench/slow_upstream.py (one chunk per interval)

CREATED = 1_700_000_000
PROMPT_TOKENS = 12
CONTENT_PIECES = ("Hello", " from", " the", " bench", " upstream", ".")
MAX_TOKENS = 64


def usage() -> dict:
    completion = len(CONTENT_PIECES)
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion, "total_tokens": PROMPT_TOKENS + completion}


def request_body(*, model: str, stream: bool) -> dict:
    body: dict = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        "max_tokens": MAX_TOKENS,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def completion(*, model: str) -> dict:
    return {
        "id": "chatcmpl-bench-0001",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(CONTENT_PIECES)},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage(),
        "system_fingerprint": "fp_bench",
    }


def _chunk(*, model: str, delta: dict, finish_reason: str | None) -> dict:
    return {
        "id": "chatcmpl-bench-0002",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def stream_chunks(*, model: str, pieces: tuple[str, ...] = CONTENT_PIECES) -> list[dict]:
    """The chunk objects of one stream, without the usage chunk and [DONE]."""
    chunks = [_chunk(model=model, delta={"role": "assistant", "content": ""}, finish_reason=None)]
    chunks += [_chunk(model=model, delta={"content": piece}, finish_reason=None) for piece in pieces]
    chunks.append(_chunk(model=model, delta={}, finish_reason="stop"))
    return chunks


def usage_chunk(*, model: str, completion_tokens: int = len(CONTENT_PIECES)) -> dict:
    return {
        "id": "chatcmpl-bench-0002",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": completion_tokens,
            "total_tokens": PROMPT_TOKENS + completion_tokens,
        },
    }


def sse_event(obj: dict | str) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n"


def sse_body(*, model: str) -> str:
    """A whole fixed stream: chunks, a usage chunk with choices: [], then data: [DONE]."""
    events = [sse_event(chunk) for chunk in stream_chunks(model=model)]
    events.append(sse_event(usage_chunk(model=model)))
    events.append(sse_event("[DONE]"))
    return "".join(events)


class BadResponse(Exception):
    """A target answered, but not with a well-formed completion or stream."""


def check_completion(status: int, content_type: str, body: bytes) -> None:
    if status != 200:
        raise BadResponse(f"HTTP {status}: {body[:300]!r}")
    if "application/json" not in content_type:
        raise BadResponse(f"content-type {content_type!r}, expected application/json")
    try:
        data = json.loads(body)
        text = data["choices"][0]["message"]["content"]
        tokens = data["usage"]["total_tokens"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise BadResponse(f"not a chat.completion ({exc.__class__.__name__}): {body[:300]!r}") from exc
    if not text or not tokens:
        raise BadResponse(f"empty completion or usage: {body[:300]!r}")


def _stream_events(body: bytes) -> tuple[list[dict], bool]:
    """The JSON events of an SSE body and whether it ended with ``data: [DONE]``."""
    events, saw_done = [], False
    for line in body.decode("utf-8", "replace").splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if saw_done:
            raise BadResponse("data after [DONE]")
        if data == "[DONE]":
            saw_done = True
            continue
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise BadResponse(f"event is not JSON: {data[:200]!r}") from exc
        if "error" in event:
            raise BadResponse(f"error event: {data[:300]!r}")
        events.append(event)
    return events, saw_done


def check_stream(status: int, content_type: str, body: bytes) -> int:
    """Validate a whole SSE body; return the number of content deltas seen."""
    if status != 200:
        raise BadResponse(f"HTTP {status}: {body[:300]!r}")
    if "text/event-stream" not in content_type:
        raise BadResponse(f"content-type {content_type!r}, expected text/event-stream")
    events, saw_done = _stream_events(body)
    deltas = sum(1 for event in events for choice in event.get("choices") or [] if (choice.get("delta") or {}).get("content"))
    if not saw_done:
        raise BadResponse(f"stream did not end with data: [DONE]: {body[-300:]!r}")
    if not deltas:
        raise BadResponse("stream carried no content")
    if not any(event.get("usage") for event in events):
        raise BadResponse("stream carried no usage chunk (stream_options.include_usage was asked)")
    return deltas
