"""The fixed bodies every bench upstream returns, and the request bodies clients send.

One place, so nginx (zero-cost upstream), the slow upstream and the response checks agree on
what a correct completion and a correct stream look like: OpenAI's (the plain path), and for issue
8's paths Anthropic's Messages answers (a ``message`` and a named-event stream), OpenAI's 429 for
the failover path's first key, Anthropic request bodies, and the checks of Anthropic answers.
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


# --- issue 8's paths: failover, and the Anthropic dialect on either side --------------------------

# Routed to nginx's failover locations: the provider's first key (priority 0) is answered 429, its
# second gets the same fixed completion / stream as bench-chat / bench-stream.
FAILOVER_CHAT_MODEL = "bench-failover-chat"
FAILOVER_STREAM_MODEL = "bench-failover-stream"
# Routed to nginx's fixed Anthropic Messages answers (a provider of kind ``anthropic``).
CLAUDE_CHAT_MODEL = "bench-claude-chat"
CLAUDE_STREAM_MODEL = "bench-claude-stream"
# The supplier keys of the failover providers; nginx answers 429 when it receives the first.
RATE_LIMITED_KEY = "sk-bench-failover-first-key-answered-429"
FAILOVER_KEY = "sk-bench-failover-second-key-answered-200"
ANTHROPIC_VERSION = "2023-06-01"

ALL_MODELS = (CHAT_MODEL, STREAM_MODEL, SLOW_MODEL, FAILOVER_CHAT_MODEL, FAILOVER_STREAM_MODEL, CLAUDE_CHAT_MODEL,
              CLAUDE_STREAM_MODEL)


def rate_limit_error() -> dict:
    """OpenAI's 429 body (https://platform.openai.com/docs/guides/error-codes: ``rate_limit_exceeded``)."""
    return {"error": {"message": "Rate limit reached for requests per min (RPM): Limit 1, Used 1, Requested 1. "
                                 "Please try again in 0s.",
                      "type": "requests", "param": None, "code": "rate_limit_exceeded"}}


def anthropic_request_body(*, model: str, stream: bool) -> dict:
    """The same prompt as ``request_body`` as an Anthropic Messages request
    (https://docs.anthropic.com/en/api/messages: ``max_tokens`` is required)."""
    body: dict = {
        "model": model,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
    }
    if stream:
        body["stream"] = True
    return body


def _anthropic_usage(output_tokens: int) -> dict:
    return {"input_tokens": PROMPT_TOKENS, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "output_tokens": output_tokens}


def anthropic_message(*, model: str) -> dict:
    """A fixed non-streamed Anthropic ``message`` with usage (https://docs.anthropic.com/en/api/messages)."""
    return {
        "id": "msg_01BenchUpstream0001",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "".join(CONTENT_PIECES)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(len(CONTENT_PIECES)),
    }


def anthropic_events(*, model: str) -> list[tuple[str, dict]]:
    """The named events of one fixed Anthropic stream (https://docs.anthropic.com/en/api/messages-streaming):
    message_start (usage with the input side), one text block (start, a ping, a delta per piece, stop),
    message_delta (stop_reason, output_tokens), message_stop."""
    start = {**anthropic_message(model=model), "content": [], "stop_reason": None, "usage": _anthropic_usage(1)}
    events: list[tuple[str, dict]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
    ]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
               for piece in CONTENT_PIECES]
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": len(CONTENT_PIECES)}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


def anthropic_sse_body(*, model: str) -> str:
    """A whole fixed Anthropic stream: ``event: <name>`` + ``data: <json>`` + a blank line per event."""
    return "".join(f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
                   for name, data in anthropic_events(model=model))


def check_anthropic_message(status: int, content_type: str, body: bytes) -> None:
    """A well-formed Anthropic ``message`` with text and usage, or ``BadResponse``."""
    if status != 200:
        raise BadResponse(f"HTTP {status}: {body[:300]!r}")
    if "application/json" not in content_type:
        raise BadResponse(f"content-type {content_type!r}, expected application/json")
    try:
        data = json.loads(body)
        text = "".join(block["text"] for block in data["content"] if block["type"] == "text")
        tokens = data["usage"]["input_tokens"] + data["usage"]["output_tokens"]
        kind, stop = data["type"], data["stop_reason"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadResponse(f"not an Anthropic message ({exc.__class__.__name__}): {body[:300]!r}") from exc
    if kind != "message" or stop != "end_turn" or not text or not tokens:
        raise BadResponse(f"not a whole message (type, stop_reason, text or usage): {body[:300]!r}")


def _named_events(body: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in body.decode("utf-8", "replace").replace("\r\n", "\n").split("\n\n"):
        name, data = "", ""
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
        if not data:
            continue
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise BadResponse(f"event {name!r} is not JSON: {data[:200]!r}") from exc
        if name != obj.get("type"):
            raise BadResponse(f"event name {name!r} does not match its data's type {obj.get('type')!r}")
        events.append((name, obj))
    return events


def check_anthropic_stream(status: int, content_type: str, body: bytes) -> int:
    """Validate a whole Anthropic named-event stream; return the number of text deltas seen."""
    if status != 200:
        raise BadResponse(f"HTTP {status}: {body[:300]!r}")
    if "text/event-stream" not in content_type:
        raise BadResponse(f"content-type {content_type!r}, expected text/event-stream")
    events = _named_events(body)
    names = [name for name, _ in events]
    if "error" in names:
        raise BadResponse(f"error event: {body[-300:]!r}")
    if not names or names[0] != "message_start" or names[-1] != "message_stop":
        raise BadResponse(f"stream does not run from message_start to message_stop: {names}")
    deltas = sum(1 for name, obj in events if name == "content_block_delta" and obj["delta"].get("text"))
    final = next((obj for name, obj in events if name == "message_delta"), None)
    if not deltas:
        raise BadResponse("stream carried no text")
    if not final or not (final.get("usage") or {}).get("output_tokens"):
        raise BadResponse("stream carried no message_delta with output usage")
    return deltas
