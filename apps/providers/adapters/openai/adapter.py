"""``OpenAIAdapter``: the canonical form is OpenAI's, so requests and answers pass through with the
upstream model id swapped in; only errors are translated."""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from apps.providers.adapters.base import (
    COOLDOWN_AUTH_FAILED,
    COOLDOWN_RATE_LIMITED,
    COOLDOWN_SERVER_ERROR,
    Adapter,
    CanonicalRequest,
    Parsed,
    Target,
    UpstreamFailure,
    UpstreamRequest,
    malformed,
)
from apps.providers.adapters.openai.stream import OpenAIStreamDecoder
from apps.providers.adapters.openai.wire import error_message, generated_text, request_body, request_url, usage_from

# Statuses after which the same request may succeed with another key (or a moment later).
_SERVER_TROUBLE = (408, 409)
# Client errors passed on with their own status; any other 4xx is answered as 400.
_CLIENT_STATUSES = (400, 404, 413, 422)


class OpenAIAdapter(Adapter):
    """OpenAI's wire format (https://platform.openai.com/docs/api-reference), static Bearer keys."""

    kind = "openai"

    def build_request(self, request: CanonicalRequest, target: Target, auth_headers: Mapping[str, str]) -> UpstreamRequest:
        """See ``Adapter.build_request``: ``wire.request_body`` (upstream model id; streams ask for usage) as JSON, uncompressed."""
        headers = {**auth_headers, "Content-Type": "application/json", "Accept-Encoding": "identity"}
        return UpstreamRequest(request_url(target.base_url, request.endpoint), headers,
                               request_body(request.body, upstream_model=target.upstream_model, stream=request.stream))

    def parse_body(self, body: bytes, request: CanonicalRequest) -> Parsed:
        """See ``Adapter.parse_body``: the body passes through as it came; a body that is not a JSON object is ``malformed()``."""
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise malformed()
        usage = usage_from(obj)
        return Parsed(body, usage, None if usage else generated_text(obj, request.endpoint))

    def stream_decoder(self, request: CanonicalRequest) -> OpenAIStreamDecoder:
        """See ``Adapter.stream_decoder``."""
        return OpenAIStreamDecoder(request.endpoint)

    def map_error(self, status: int, body: bytes, headers: Mapping[str, str], secret: str | None) -> UpstreamFailure:
        """See ``Adapter.map_error`` (statuses: https://platform.openai.com/docs/guides/error-codes).

        401/403 → 502, fail over, key rests ``COOLDOWN_AUTH_FAILED``; 429 → 429, fail over, rests for a
        whole-seconds ``Retry-After`` or ``COOLDOWN_RATE_LIMITED``; 5xx, 408, 409 → 502, fail over; a 3xx
        redirect → 502 ``upstream_redirect``, no failover; 400, 404, 413, 422 are passed on and any other
        4xx answered 400, with no failover.
        """
        message, type_, code = error_message(body, secret)
        if status in (401, 403):
            return UpstreamFailure(502, "The upstream provider rejected the gateway's credentials.",
                                   code="upstream_auth_failed", failover=True, cooldown=COOLDOWN_AUTH_FAILED)
        if status == 429:
            retry_after = headers.get("retry-after", "")
            return UpstreamFailure(429, f"The upstream provider is rate limiting: {message}", type="rate_limit_error",
                                   code="upstream_rate_limited", failover=True,
                                   cooldown=float(retry_after) if retry_after.isdigit() else COOLDOWN_RATE_LIMITED)
        if status >= 500 or status in _SERVER_TROUBLE:
            return UpstreamFailure(502, f"The upstream provider failed: {message}", code="upstream_error", failover=True,
                                   cooldown=COOLDOWN_SERVER_ERROR)
        if status < 400:
            # A redirect (never followed: the target was not checked against SSRF and would get the
            # key) is the provider's configuration, not the client's request; every key meets it.
            return UpstreamFailure(502, "The upstream provider answered with a redirect, which the gateway does not follow.",
                                   code="upstream_redirect")
        # Any other 4xx is about the request itself: the same on every key.
        return UpstreamFailure(status if status in _CLIENT_STATUSES else 400, message,
                               type=type_ or "invalid_request_error", code=code or "upstream_rejected")
