"""``GeminiAdapter``: Google's Gemini API (generativelanguage ``v1beta``) behind the canonical OpenAI form.

Wire format: https://ai.google.dev/api/generate-content and https://ai.google.dev/api/embeddings.
Chat → ``POST {base_url}/models/{model}:generateContent``, streams →
``:streamGenerateContent?alt=sse``, embeddings → ``:batchEmbedContents``; the key travels in the
``x-goog-api-key`` header and never in the URL (Google also accepts ``?key=``, which would put the
supplier's key into every access log and error message that quotes a URL).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from apps.providers.adapters.base import (
    COOLDOWN_SERVER_ERROR,
    COOLDOWN_UNREACHABLE,
    Adapter,
    Auth,
    CanonicalRequest,
    Credential,
    Parsed,
    Target,
    UpstreamFailure,
    UpstreamRequest,
    malformed,
)
from apps.providers.adapters.gemini import errors, response
from apps.providers.adapters.gemini import request as wire
from apps.providers.adapters.gemini.stream import TRUNCATED, GeminiStreamDecoder
from apps.providers.adapters.openai.wire import generated_text
from lib import tokenizer


class GeminiAuth(Auth):
    """``x-goog-api-key: <key>`` (https://ai.google.dev/gemini-api/docs/api-key)."""

    async def headers(self, credential: Credential, http: aiohttp.ClientSession | None) -> dict[str, str]:
        """See ``Auth.headers``."""
        return {"x-goog-api-key": credential.secret}


def model_path(upstream_model: str) -> str:
    """The resource name in the URL: ``models/<id>`` (a ``tunedModels/…`` or ``models/…`` id is kept)."""
    name = upstream_model if upstream_model.startswith(("models/", "tunedModels/")) else f"models/{upstream_model}"
    return quote(name, safe="/-._")


class GeminiAdapter(Adapter):
    """Gemini's native wire format (see the module docstring). ``Target.options`` may carry
    ``safety_settings``: Gemini's ``safetySettings`` list, sent with every chat request as it is."""

    kind = "gemini"
    auth: Auth = GeminiAuth()

    def build_request(self, request: CanonicalRequest, target: Target, auth_headers: Mapping[str, str]) -> UpstreamRequest:
        """See ``Adapter.build_request``. Raises ``UpstreamFailure`` (400) for a legacy completions request
        and for a body Gemini cannot carry (``gemini.request``)."""
        headers = {**auth_headers, "Content-Type": "application/json", "Accept-Encoding": "identity"}
        base = f"{target.base_url}/{model_path(target.upstream_model)}"
        if request.endpoint == "embedding":
            body = wire.embed_request(request.body, upstream_model=target.upstream_model)
            return UpstreamRequest(f"{base}:batchEmbedContents", headers, orjson.dumps(body))
        if request.endpoint != "chat":
            raise wire.invalid("Gemini models serve /v1/chat/completions and /v1/embeddings, not legacy /v1/completions.")
        body = wire.chat_request(request.body, upstream_model=target.upstream_model)
        if request.output_cap and "maxOutputTokens" not in body.get("generationConfig", {}):
            # Gemini's own default may exceed what the gateway reserved for: cap it there.
            body.setdefault("generationConfig", {})["maxOutputTokens"] = request.output_cap
        safety = target.options.get("safety_settings")
        if isinstance(safety, list):
            body["safetySettings"] = safety
        url = f"{base}:streamGenerateContent?alt=sse" if request.stream else f"{base}:generateContent"
        return UpstreamRequest(url, headers, orjson.dumps(body))

    def parse_body(self, body: bytes, request: CanonicalRequest) -> Parsed:
        """See ``Adapter.parse_body``: a ``GenerateContentResponse`` as a ``chat.completion`` with its usage
        (``response.usage_from``), or a ``BatchEmbedContentsResponse`` as an embeddings list whose usage is
        counted locally (Gemini reports none; ``Parsed.usage`` stays None so the gateway counts it the same
        way and marks the record counted locally). Raises ``UpstreamFailure``: ``malformed``, or a 400
        ``content_filter`` for a blocked prompt."""
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise malformed()
        if request.endpoint == "embedding":
            listed = response.embeddings(obj, model=request.model, encoding=request.body.get("encoding_format"),
                                         input_tokens=tokenizer.count_embedding_input(request.body.get("input")))
            if listed is None:
                raise malformed()
            return Parsed(orjson.dumps(listed), None, None)
        reason = response.block_reason(obj)
        if reason is not None:
            raise errors.blocked(reason)
        if not obj.get("candidates"):
            raise malformed()
        completion, usage = response.completion(obj, model=request.model,
                                                response_id=response.response_id(obj, f"chatcmpl-{secrets.token_hex(12)}"))
        return Parsed(orjson.dumps(completion), usage, None if usage else generated_text(completion, "chat"))

    def stream_decoder(self, request: CanonicalRequest) -> GeminiStreamDecoder:
        """See ``Adapter.stream_decoder``."""
        return GeminiStreamDecoder(request)

    def map_error(self, status: int, body: bytes, headers: Mapping[str, str], secrets: Sequence[str]) -> UpstreamFailure:
        """See ``Adapter.map_error`` (statuses: https://ai.google.dev/gemini-api/docs/troubleshooting).

        401/403, and a 400 that names the key (``ErrorInfo.reason`` ``API_KEY_*``) or its project
        (``FAILED_PRECONDITION``) → 502 ``upstream_auth_failed``, fail over, the key rests
        ``COOLDOWN_AUTH_FAILED``; 429 ``RESOURCE_EXHAUSTED`` → 429, fail over, the key rests for
        ``Retry-After`` or ``RetryInfo.retryDelay`` (capped); 5xx, 408, 409 → 502, fail over; a redirect
        → 502, no failover; any other 4xx → ``rejected`` with the scrubbed message (404 and 413/422 keep
        their status), ``INVALID_ARGUMENT`` → ``invalid_request``, ``NOT_FOUND`` → ``model_not_found``."""
        return errors.failure(status, body, headers, secrets, origin=f"HTTP {status}")

    def body_failure(self, body: bytes, secrets: Sequence[str]) -> UpstreamFailure | None:
        """See ``Adapter.body_failure``: a 200 body that is an error object, or a prompt Gemini blocked
        (no candidates, ``promptFeedback.blockReason``: a 400 ``content_filter``, not a 5xx)."""
        if b'"error"' not in body and b'"blockReason"' not in body:
            return None
        try:
            obj: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if errors.google_error(obj) is not None:
            return self.in_band_error(body, secrets)
        reason = response.block_reason(obj) if isinstance(obj, dict) else None
        return errors.blocked(reason) if reason is not None else None

    def in_band_error(self, payload: bytes, secrets: Sequence[str]) -> UpstreamFailure:
        """See ``Adapter.in_band_error``: a stream cut off before its ``finishReason`` → 502
        ``upstream_broken``; a blocked prompt → 400 ``content_filter``; an error object → as ``map_error``
        maps the HTTP status in its ``code`` (502 when it names none); anything else → 502, fail over."""
        if payload == TRUNCATED:
            return UpstreamFailure(502, "The upstream stream broke off before the answer was finished.", code="upstream_broken",
                                   failover=True, cooldown=COOLDOWN_UNREACHABLE)
        try:
            obj: Any = orjson.loads(payload)
        except orjson.JSONDecodeError:
            obj = None
        reason = response.block_reason(obj) if isinstance(obj, dict) else None
        if reason is not None:
            return errors.blocked(reason)
        error = errors.google_error(obj)
        if error is None:
            return UpstreamFailure(502, "The upstream provider failed.", code="upstream_error", failover=True,
                                   cooldown=COOLDOWN_SERVER_ERROR)
        code = error.get("code")
        status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else 502
        return errors.failure(status, payload, {}, secrets, origin="an error inside a 2xx answer")
