"""The Anthropic Messages adapter: canonical (OpenAI chat) requests to ``POST /v1/messages`` and its
answers, named-event streams and errors back. Wire format: https://docs.anthropic.com/en/api/messages."""

from __future__ import annotations

from apps.providers.adapters.anthropic.adapter import AnthropicAdapter
from apps.providers.adapters.anthropic.stream import AnthropicStreamDecoder

__all__ = ["AnthropicAdapter", "AnthropicStreamDecoder"]
