"""The OpenAI-wire family's members that differ from OpenAI itself, each a small ``OpenAIAdapter``.

- Azure OpenAI: the deployment in the path, ``api-version`` in the query, the key in ``api-key``
  (https://learn.microsoft.com/azure/ai-services/openai/reference#chat-completions).
- DeepSeek: ``reasoning_content`` passes through; usage's ``prompt_cache_hit_tokens`` is the cached
  part (``wire.usage_from``); ``: keep-alive`` comments in streams and blank lines before a JSON
  answer are skipped (https://api-docs.deepseek.com/quick_start/rate_limit).
- Mistral: refuses ``stream_options`` and ``max_completion_tokens`` with a 422 ("Extra inputs are not
  permitted") and sends usage unasked on the last content chunk (https://docs.mistral.ai/api/).
- Qwen (DashScope compatible mode): regional base URLs (``QWEN_BASE_URLS``); OpenAI's format otherwise
  (https://www.alibabacloud.com/help/en/model-studio/compatibility-of-openai-with-dashscope).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar
from urllib.parse import quote

import aiohttp

from apps.providers.adapters.base import Auth, CanonicalRequest, Credential, Target
from apps.providers.adapters.openai.adapter import OpenAIAdapter
from apps.providers.adapters.openai.wire import PATHS

# Azure's latest GA data-plane inference version when this adapter was written (a provider's
# ``options.api_version`` overrides it).
AZURE_API_VERSION = "2024-10-21"

# DashScope compatible mode per region (a region's keys work only there: another region answers 401).
QWEN_BASE_URLS = {
    "intl": "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",  # Singapore
    "cn": "https://dashscope.aliyuncs.com/compatible-mode/v1",  # Beijing
    "us": "https://dashscope-us.aliyuncs.com/compatible-mode/v1",  # Virginia
    "hk": "https://cn-hongkong.dashscope.aliyuncs.com/compatible-mode/v1",  # Hong Kong
}


class ApiKeyAuth(Auth):
    """The supplier key as is in one header (Azure's ``api-key: <key>``)."""

    def __init__(self, header: str) -> None:
        self.header = header

    async def headers(self, credential: Credential, http: aiohttp.ClientSession | None) -> dict[str, str]:
        """See ``Auth.headers``."""
        return {self.header: credential.secret}


class AzureOpenAIAdapter(OpenAIAdapter):
    """Azure OpenAI deployments: ``{base_url}/openai/deployments/{deployment}/chat/completions?api-version=…``.

    ``base_url`` is the resource's endpoint (``https://<resource>.openai.azure.com``); the deployment
    is the model's ``upstream_model`` (or ``options.deployment``); ``options.api_version`` defaults to
    ``AZURE_API_VERSION``. The body keeps ``model`` (Azure ignores it)."""

    kind = "azure_openai"
    auth: Auth = ApiKeyAuth("api-key")

    def url(self, request: CanonicalRequest, target: Target) -> str:
        """See ``OpenAIAdapter.url``."""
        options: Mapping = target.options if isinstance(target.options, Mapping) else {}
        deployment = str(options.get("deployment") or target.upstream_model)
        version = str(options.get("api_version") or AZURE_API_VERSION)
        return (f"{target.base_url}/openai/deployments/{quote(deployment, safe='')}{PATHS[request.endpoint]}"
                f"?api-version={quote(version, safe='')}")


class DeepSeekAdapter(OpenAIAdapter):
    """DeepSeek (``https://api.deepseek.com``): OpenAI's format; see the module docstring."""

    kind = "deepseek"


class MistralAdapter(OpenAIAdapter):
    """Mistral (``https://api.mistral.ai/v1``): no ``stream_options`` (usage comes unasked on the last
    content chunk) and the output cap is always ``max_tokens``."""

    kind = "mistral"
    asks_stream_usage: ClassVar[bool] = False
    max_tokens_param: ClassVar[str | None] = "max_tokens"

    def body(self, request: CanonicalRequest, target: Target) -> bytes:
        """See ``OpenAIAdapter.body``; ``max_tokens`` whatever the model id looks like."""
        options = dict(target.options) if isinstance(target.options, Mapping) else {}
        options.setdefault("max_tokens_param", "max_tokens")
        return super().body(request, Target(target.base_url, target.upstream_model, options))


class QwenAdapter(OpenAIAdapter):
    """Qwen through DashScope's compatible mode: OpenAI's format. ``base_url`` is the key's region's
    (``QWEN_BASE_URLS``) or a workspace's own domain: a provider needs a base URL, so a region is
    chosen by entering its URL."""

    kind = "qwen"
