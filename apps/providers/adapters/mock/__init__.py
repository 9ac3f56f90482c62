"""The ``mock`` provider kind: a local upstream that answers in OpenAI's exact wire format.

Deterministic text (same prompt → same answer), honest usage counted with ``lib.tokenizer``, and
optional latency, so a new installation can make a first call with no upstream keys and tests and
benchmarks have an upstream. Provider ``options`` it reads: ``latency_ms``, ``chunk_delay_ms``,
``chunks``, ``words``, ``language``, ``dimensions``, ``cached_tokens``, ``omit_usage``,
``always_stream_usage`` (see ``generator``).
"""

from __future__ import annotations

from apps.providers.adapters.mock.adapter import MockAdapter
from apps.providers.adapters.mock.generator import (
    chat_completion,
    chat_completion_chunks,
    completion,
    completion_chunks,
    embeddings,
    respond,
    stream,
)

__all__ = ["MockAdapter", "chat_completion", "chat_completion_chunks", "completion", "completion_chunks", "embeddings", "respond", "stream"]
