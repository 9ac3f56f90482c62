"""The OpenAI wire adapter: OpenAI itself and every upstream that speaks its format (vLLM, Ollama,
DeepSeek, Mistral, Qwen's compatible mode). Wire format: https://platform.openai.com/docs/api-reference/chat."""

from __future__ import annotations

from apps.providers.adapters.openai.adapter import OpenAIAdapter
from apps.providers.adapters.openai.stream import OpenAIStreamDecoder

__all__ = ["OpenAIAdapter", "OpenAIStreamDecoder"]
