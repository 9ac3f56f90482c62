"""The GigaChat adapter (Sber): OAuth-exchanged tokens per supplier key, ``functions`` ↔ OpenAI tools,
usage on the last content chunk, per-item embeddings usage, a CA bundle for the Russian root
certificate. Wire format: https://developers.sber.ru/docs/ru/gigachat/api/overview."""

from __future__ import annotations

from apps.providers.adapters.gigachat.adapter import GigaChatAdapter
from apps.providers.adapters.gigachat.auth import GigaChatAuth
from apps.providers.adapters.gigachat.stream import GigaChatStreamDecoder

__all__ = ["GigaChatAdapter", "GigaChatAuth", "GigaChatStreamDecoder"]
