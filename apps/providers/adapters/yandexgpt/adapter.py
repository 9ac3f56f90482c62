"""``YandexGPTAdapter``: Yandex AI Studio (Foundation Models) in either of its APIs.

Provider options (``Provider.options``; ``jetstream_apply`` puts a provider's YAML fields there):

- ``folder_id`` (required): the Yandex Cloud folder the models are billed to; it makes the model
  URIs (``gpt://<folder_id>/<upstream_model>``, ``emb://…`` for embeddings) and, with IAM tokens
  only, is sent as ``x-folder-id``.
- ``auth``: ``api_key`` (default) or ``iam`` — see ``auth.py``.
- ``api``: ``native`` (default) — ``POST {base_url}/completion`` and ``/textEmbedding`` with
  base_url ``https://llm.api.cloud.yandex.net/foundationModels/v1``, mapped by ``wire.py`` and
  ``stream.py`` — or ``openai``: Yandex's OpenAI-compatible endpoint (base_url
  ``https://llm.api.cloud.yandex.net/v1``), spoken by ``OpenAIAdapter``'s code with the model URI as
  ``model`` and the folder in ``OpenAI-Project``.

``parse_body`` and ``stream_decoder`` are not told the provider's options: they recognise the
answer's format (a native answer is ``{"result": …}`` or an embedding, a native stream starts with
``{``, the compatible endpoint's is SSE). Errors of both APIs go through ``OpenAIAdapter``'s mapping,
Yandex's gRPC-gateway error shape translated first (``wire.as_openai_error``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from apps.providers.adapters.base import (
    CanonicalRequest,
    Credential,
    Parsed,
    Target,
    UpstreamFailure,
    UpstreamRequest,
    UpstreamResponse,
    malformed,
    rejected,
)
from apps.providers.adapters.openai import OpenAIAdapter
from apps.providers.adapters.yandexgpt import wire
from apps.providers.adapters.yandexgpt.auth import IAM_URL, IamTokenAuth, authorized_key
from apps.providers.adapters.yandexgpt.stream import YandexStreamDecoder


@dataclass(slots=True, frozen=True)
class YandexOptions:
    """A YandexGPT provider's options, checked (see the module docstring)."""

    folder_id: str
    auth: str = "api_key"
    api: str = "native"
    iam_url: str = IAM_URL

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> YandexOptions:
        """From ``Target.options``. Raises ``UpstreamFailure`` (``wire.misconfigured``) for a missing
        ``folder_id`` or an unknown ``auth`` / ``api``."""
        folder = options.get("folder_id")
        if not isinstance(folder, str) or not folder.strip():
            raise wire.misconfigured("the option 'folder_id' is missing")
        auth, api = str(options.get("auth") or "api_key"), str(options.get("api") or "native")
        if auth not in ("api_key", "iam"):
            raise wire.misconfigured("the option 'auth' must be 'api_key' or 'iam'")
        if api not in ("native", "openai"):
            raise wire.misconfigured("the option 'api' must be 'native' or 'openai'")
        return cls(folder.strip(), auth, api, str(options.get("iam_url") or IAM_URL))


class _NdjsonResponse:
    """A native stream's 2xx response, presented as a stream. Yandex sends its newline-delimited JSON
    as ``Content-Type: application/json`` (gRPC-gateway's default), which the upstream client would
    otherwise read whole as a non-streamed JSON body."""

    __slots__ = ("_response", "headers", "status")
    headers: Mapping[str, str]

    def __init__(self, response: UpstreamResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = {**response.headers, "Content-Type": "application/x-ndjson"}

    async def read(self) -> bytes:
        """See ``UpstreamResponse.read``."""
        return await self._response.read()

    def chunks(self) -> AsyncIterator[bytes]:
        """See ``UpstreamResponse.chunks``."""
        return self._response.chunks()

    def release(self) -> None:
        """See ``UpstreamResponse.release``."""
        self._response.release()


class YandexGPTAdapter(OpenAIAdapter):
    """YandexGPT, native or OpenAI-compatible (see the module docstring)."""

    kind = "yandexgpt"

    def __init__(self) -> None:
        self.iam = IamTokenAuth()

    async def auth_headers(self, options: YandexOptions, credential: Credential,
                           http: aiohttp.ClientSession | None) -> dict[str, str]:
        """``Authorization`` for ``credential`` under ``options`` (see ``auth.py``). Raises ``UpstreamFailure``."""
        if options.auth == "iam" and authorized_key(credential.secret) is not None:
            return await self.iam.bearer(credential, http, iam_url=options.iam_url)
        scheme = "Api-Key" if options.auth == "api_key" and options.api == "native" else "Bearer"
        return {"Authorization": f"{scheme} {credential.secret}"}

    async def open(self, http: aiohttp.ClientSession, request: CanonicalRequest, target: Target, credential: Credential | None,
                   *, proxy: str | None) -> UpstreamResponse:
        """See ``Adapter.open``: authenticated by the provider's ``auth`` option (a 401 drops the key's
        cached IAM token); a native 2xx stream is handed back as a stream whatever its ``Content-Type``
        (``_NdjsonResponse``)."""
        options = YandexOptions.of(target.options)
        auth_headers = await self.auth_headers(options, credential, http) if credential is not None else {}
        response = await self.send(http, self.build_request(request, target, auth_headers), proxy=proxy)
        if response.status == 401 and credential is not None:
            self.iam.forget(credential.key_id)  # an exchanged IAM token that was revoked: the next call exchanges anew
        if options.api == "native" and request.stream and 200 <= response.status < 300:
            return _NdjsonResponse(response)
        return response

    def build_request(self, request: CanonicalRequest, target: Target, auth_headers: Mapping[str, str]) -> UpstreamRequest:
        """See ``Adapter.build_request``. Native: ``/completion`` (chat) or ``/textEmbedding`` (embedding)
        with ``wire.completion_body`` / ``wire.embedding_body``; the legacy completions endpoint is
        refused (400). ``api: openai``: ``OpenAIAdapter``'s request with the model URI. Raises
        ``UpstreamFailure`` (misconfigured provider; a request the API cannot take)."""
        options = YandexOptions.of(target.options)
        scheme = "emb" if request.endpoint == "embedding" else "gpt"
        uri = wire.model_uri(options.folder_id, target.upstream_model, scheme=scheme)
        # The folder travels in the model URI. x-folder-id goes only with IAM tokens: Yandex's docs say
        # not to send it with an API key, and one naming another folder than the service account's is
        # refused (400 "Specified folder ID … does not match with service account folder ID …").
        folder = {"x-folder-id": options.folder_id} if options.auth == "iam" else {}
        if options.api == "openai":
            prepared = super().build_request(request, Target(target.base_url, uri, target.options), auth_headers)
            prepared.headers.update({"OpenAI-Project": options.folder_id, **folder})
            return prepared
        headers = {**auth_headers, "Content-Type": "application/json", "Accept-Encoding": "identity", **folder}
        if request.endpoint == "embedding":
            return UpstreamRequest(target.base_url + wire.EMBEDDING_PATH, headers, wire.embedding_body(request.body, uri=uri))
        if request.endpoint != "chat":
            raise rejected(400, "YandexGPT's native API has no legacy completions endpoint: use /v1/chat/completions.",
                           code="invalid_request")
        return UpstreamRequest(target.base_url + wire.COMPLETION_PATH, headers,
                               wire.completion_body(request.body, uri=uri, stream=request.stream))

    def parse_body(self, body: bytes, request: CanonicalRequest) -> Parsed:
        """See ``Adapter.parse_body``: a native ``{"result": CompletionResponse}`` (or a
        ``TextEmbeddingResponse``) becomes OpenAI's ``chat.completion`` (or embeddings list) with string
        token counts as integers; anything else is the compatible endpoint's OpenAI body (``OpenAIAdapter``).
        Raises ``UpstreamFailure`` (``malformed``)."""
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise malformed() from None
        if isinstance(obj, dict) and isinstance(obj.get("result"), dict):
            result = obj["result"]
            usage = wire.usage_of(result)
            completion = wire.chat_completion(result, model=request.model)
            return Parsed(orjson.dumps(completion), usage, None if usage else wire.generated_text(completion))
        if isinstance(obj, dict) and "embedding" in obj and "data" not in obj:
            try:
                listing, usage = wire.embedding_list(obj, model=request.model,
                                                     encoding_format=request.body.get("encoding_format"))
            except (ValueError, TypeError):
                raise malformed() from None
            return Parsed(orjson.dumps(listing), usage)
        if not (isinstance(obj, dict) and ("choices" in obj or "data" in obj)):
            raise malformed()
        return super().parse_body(body, request)

    def stream_decoder(self, request: CanonicalRequest) -> YandexStreamDecoder:  # type: ignore[override]
        """See ``Adapter.stream_decoder``: ``stream.YandexStreamDecoder`` (native NDJSON or SSE)."""
        return YandexStreamDecoder(request.endpoint, request.model)

    def map_error(self, status: int, body: bytes, headers: Mapping[str, str], secrets: Sequence[str]) -> UpstreamFailure:
        """See ``OpenAIAdapter.map_error`` (401/403 fail over with ``COOLDOWN_AUTH_FAILED``, 429 honours
        ``Retry-After``, 5xx fail over, other 4xx rejected, text scrubbed); a Yandex error body
        (https://yandex.cloud/en/docs/ai-studio/troubleshooting/error-codes) is read by ``wire.as_openai_error``."""
        return super().map_error(status, wire.as_openai_error(body), headers, secrets)

    def in_band_error(self, payload: bytes, secrets: Sequence[str]) -> UpstreamFailure:
        """See ``OpenAIAdapter.in_band_error``: an error line in a native stream or a 200 error body is
        mapped by its ``httpCode`` (a line that is no error object at all: 502, fail over)."""
        return super().in_band_error(wire.as_openai_error(payload), secrets)
