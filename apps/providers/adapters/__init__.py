"""Provider adapters, one per folder (``adapters/<kind>/``), chosen by provider kind.

``ADAPTERS`` maps a ``ProviderKind`` to the dotted path of its adapter class, imported on first use
(healthchecks' ``TRANSPORTS`` is the model). Adding a provider that speaks OpenAI's format is one
line here; one that speaks its own is a folder with an ``Adapter`` subclass (see ``base.py``) and
one line here. A kind with no entry has no adapter yet: the proxy answers 501
``provider_not_supported``.
"""

from __future__ import annotations

from django.utils.module_loading import import_string

from apps.providers.adapters.base import Adapter
from apps.providers.models import ProviderKind

ADAPTERS: dict[str, str] = {
    ProviderKind.OPENAI: "apps.providers.adapters.openai.OpenAIAdapter",
    ProviderKind.ANTHROPIC: "apps.providers.adapters.anthropic.AnthropicAdapter",
    ProviderKind.OPENAI_COMPATIBLE: "apps.providers.adapters.openai.OpenAIAdapter",
    ProviderKind.AZURE_OPENAI: "apps.providers.adapters.openai.AzureOpenAIAdapter",
    ProviderKind.DEEPSEEK: "apps.providers.adapters.openai.DeepSeekAdapter",
    ProviderKind.MISTRAL: "apps.providers.adapters.openai.MistralAdapter",
    ProviderKind.QWEN: "apps.providers.adapters.openai.QwenAdapter",
    ProviderKind.GEMINI: "apps.providers.adapters.gemini.GeminiAdapter",
    ProviderKind.YANDEXGPT: "apps.providers.adapters.yandexgpt.YandexGPTAdapter",
    ProviderKind.GIGACHAT: "apps.providers.adapters.gigachat.GigaChatAdapter",
    ProviderKind.MOCK: "apps.providers.adapters.mock.MockAdapter",
}

_instances: dict[str, Adapter] = {}


def adapter_for(kind: str) -> Adapter | None:
    """The adapter serving provider ``kind`` (one shared instance per kind), or None if it has none."""
    adapter = _instances.get(kind)
    if adapter is None:
        path = ADAPTERS.get(kind)
        if path is None:
            return None
        adapter = _instances[kind] = import_string(path)()
    return adapter
