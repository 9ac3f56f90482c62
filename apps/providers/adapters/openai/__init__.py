"""The OpenAI wire adapter: OpenAI itself and every upstream that speaks its format (vLLM, Ollama,
llama.cpp, TGI), and the family's members with their differences (``variants``: Azure OpenAI,
DeepSeek, Mistral, Qwen's compatible mode). Wire format: https://platform.openai.com/docs/api-reference/chat."""

from __future__ import annotations

from apps.providers.adapters.openai.adapter import OpenAIAdapter
from apps.providers.adapters.openai.stream import OpenAIStreamDecoder
from apps.providers.adapters.openai.variants import AzureOpenAIAdapter, DeepSeekAdapter, MistralAdapter, QwenAdapter

__all__ = ["AzureOpenAIAdapter", "DeepSeekAdapter", "MistralAdapter", "OpenAIAdapter", "OpenAIStreamDecoder", "QwenAdapter"]
