"""YandexGPT (Yandex AI Studio / Foundation Models): the native API — ``modelUri`` ``gpt://<folder>/<model>``,
string token counts, a newline-delimited stream repeating the whole text so far — and Yandex's
OpenAI-compatible endpoint. Wire format: https://yandex.cloud/en/docs/ai-studio/text-generation/api-ref/TextGeneration/completion."""

from __future__ import annotations

from apps.providers.adapters.yandexgpt.adapter import YandexGPTAdapter, YandexOptions
from apps.providers.adapters.yandexgpt.stream import NativeStreamDecoder, YandexStreamDecoder

__all__ = ["NativeStreamDecoder", "YandexGPTAdapter", "YandexOptions", "YandexStreamDecoder"]
