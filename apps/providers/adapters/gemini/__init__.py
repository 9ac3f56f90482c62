"""The Google Gemini adapter: the native ``generativelanguage`` API (``generateContent``,
``streamGenerateContent?alt=sse``, ``batchEmbedContents``) behind the canonical OpenAI form.
Wire format: https://ai.google.dev/api. Pieces: ``request`` (request map), ``schema`` (tool schemas),
``response`` (response and usage map), ``stream`` (stream map), ``errors``, ``ids`` (tool call ids)."""

from __future__ import annotations

from apps.providers.adapters.gemini.adapter import GeminiAdapter
from apps.providers.adapters.gemini.stream import GeminiStreamDecoder

__all__ = ["GeminiAdapter", "GeminiStreamDecoder"]
