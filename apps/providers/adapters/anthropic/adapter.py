"""``AnthropicAdapter``: canonical chat requests to Anthropic's Messages API and back.

Wire format: https://docs.anthropic.com/en/api/messages; the maps are in ``wire.py`` (request,
response, usage, errors) and ``stream.py`` (the named-event stream). Authentication is a static
``x-api-key`` header; ``anthropic-version`` is ``2023-06-01`` unless the provider's options say
otherwise (``anthropic_version``), and ``anthropic_beta`` adds an ``anthropic-beta`` header.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from apps.providers.adapters.anthropic.stream import AnthropicStreamDecoder
from apps.providers.adapters.anthropic.wire import (
    API_VERSION,
    DEFAULT_MAX_TOKENS,
    ERROR_STATUSES,
    RequestNotMappable,
    completion,
    error_object,
    generated_text,
    messages_url,
    request_body,
    upstream_error,
)
from apps.providers.adapters.base import (
    COOLDOWN_AUTH_FAILED,
    COOLDOWN_RATE_LIMITED,
    COOLDOWN_SERVER_ERROR,
    Adapter,
    Auth,
    CanonicalRequest,
    Credential,
    Parsed,
    Target,
    UpstreamFailure,
    UpstreamRequest,
    malformed,
    rejected,
)
from lib.scrub import scrub

logger = logging.getLogger("jetstream.providers")

# Statuses after which the same request may succeed with another key or a moment later
# (409 conflict_error, 529 overloaded_error and every other 5xx).
_SERVER_TROUBLE = (408, 409)
# Client errors passed on with their own status; any other 4xx is answered as 400.
_CLIENT_STATUSES = (400, 404, 413, 422)
# Anthropic's error types that say something a client can act on, in the gateway's codes.
_REQUEST_CODES = {"invalid_request_error": "invalid_request", "not_found_error": "model_not_found"}


class ApiKeyAuth(Auth):
    """Anthropic's authentication header: ``x-api-key: <secret>``."""

    async def headers(self, credential: Credential, http: aiohttp.ClientSession | None) -> dict[str, str]:
        """See ``Auth.headers``."""
        return {"x-api-key": credential.secret}


def _retry_after(headers: Mapping[str, str]) -> float:
    """Seconds a rate-limited key rests: ``retry-after-ms`` or ``retry-after`` (whole seconds), capped
    at ``COOLDOWN_AUTH_FAILED`` so one answer cannot bench a key for days; else ``COOLDOWN_RATE_LIMITED``."""
    millis, seconds = headers.get("retry-after-ms", ""), headers.get("retry-after", "")
    if millis.isdigit():
        return min(int(millis) / 1000, COOLDOWN_AUTH_FAILED)
    if seconds.isdigit():
        return min(float(seconds), COOLDOWN_AUTH_FAILED)
    return COOLDOWN_RATE_LIMITED


class AnthropicAdapter(Adapter):
    """Anthropic's Messages API (chat only: Anthropic has no completions or embeddings endpoint).

    ``Target.options``: ``anthropic_version`` or ``api_version`` (header, default ``2023-06-01``; from ``2026-10-21`` on,
    ``temperature`` and ``top_p`` are not sent, as that version refuses them), ``anthropic_beta``
    (header, a comma-separated string or a list), ``default_max_tokens`` (``max_tokens`` when the
    client gave none: the lower of this and the request's ``output_cap`` — the output the gateway
    reserved for —, else ``DEFAULT_MAX_TOKENS``).
    """

    kind = "anthropic"
    auth = ApiKeyAuth()

    def build_request(self, request: CanonicalRequest, target: Target, auth_headers: Mapping[str, str]) -> UpstreamRequest:
        """See ``Adapter.build_request``: ``POST {base_url}/messages``. Raises ``UpstreamFailure`` 400
        (no upstream call) for a completions or embeddings request, or a chat request Anthropic's
        format cannot carry (``wire.RequestNotMappable``)."""
        if request.endpoint != "chat":
            raise rejected(400, f"The model '{request.model}' is served by Anthropic, which has no {request.endpoint} "
                                "endpoint; use /v1/chat/completions.", code="invalid_request")
        options = target.options
        # ``api_version`` is where the configuration's kind-independent field of that name lands.
        version = str(options.get("anthropic_version") or options.get("api_version") or API_VERSION)
        # The required max_tokens when the client gave none: the output the gateway reserved for, or the
        # operator's lower default.
        caps = [cap for cap in (request.output_cap, _positive(options.get("default_max_tokens"))) if cap]
        try:
            body = request_body(request.body, upstream_model=target.upstream_model, stream=request.stream,
                                max_tokens=min(caps) if caps else DEFAULT_MAX_TOKENS,
                                api_version=version)
        except RequestNotMappable as exc:
            raise rejected(400, str(exc), code="invalid_request") from None
        headers = {**auth_headers, "anthropic-version": version, "content-type": "application/json",
                   "Accept-Encoding": "identity"}
        beta = options.get("anthropic_beta")
        if beta:
            headers["anthropic-beta"] = ",".join(beta) if isinstance(beta, list) else str(beta)
        return UpstreamRequest(messages_url(target.base_url), headers, body)

    def parse_body(self, body: bytes, request: CanonicalRequest) -> Parsed:
        """See ``Adapter.parse_body``: a ``message`` object → a ``chat.completion`` (``wire.completion``);
        anything else is ``malformed()``."""
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict) or message.get("type") != "message":
            raise malformed()
        canonical, usage = completion(message)
        return Parsed(orjson.dumps(canonical), usage, None if usage else generated_text(canonical))

    def stream_decoder(self, request: CanonicalRequest) -> AnthropicStreamDecoder:
        """See ``Adapter.stream_decoder``."""
        return AnthropicStreamDecoder()

    def map_error(self, status: int, body: bytes, headers: Mapping[str, str], secrets: Sequence[str]) -> UpstreamFailure:
        """See ``Adapter.map_error`` (statuses: https://docs.anthropic.com/en/api/errors).

        401/403 (and 402 billing_error) → 502, fail over, the key rests ``COOLDOWN_AUTH_FAILED``; 429 →
        429, fail over, rests ``retry-after-ms`` / ``retry-after`` (capped) or ``COOLDOWN_RATE_LIMITED``;
        529 overloaded, other 5xx, 408, 409 → 502, fail over; a 3xx → 502 ``upstream_redirect``. 400,
        404, 413, 422 are passed on and any other 4xx answered 400, no failover, the message scrubbed,
        the code ``invalid_request`` / ``model_not_found`` from the error's type (else
        ``upstream_rejected``). The upstream's text, scrubbed, goes to the log."""
        return self._failure(status, body, headers, secrets, origin=f"HTTP {status}")

    def body_failure(self, body: bytes, secrets: Sequence[str]) -> UpstreamFailure | None:
        """See ``Adapter.body_failure``: a 2xx body that is an Anthropic error object."""
        if b'"error"' not in body:
            return None
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        return self.in_band_error(body, secrets) if error_object(obj) is not None else None

    def in_band_error(self, payload: bytes, secrets: Sequence[str]) -> UpstreamFailure:
        """See ``Adapter.in_band_error``: mapped as ``map_error`` maps the status the error's type
        stands for (``wire.ERROR_STATUSES``: overloaded_error → 529, …), a 502 for an unknown type."""
        kind, _ = upstream_error(payload)
        return self._failure(ERROR_STATUSES.get(kind or "", 502), payload, {}, secrets,
                             origin="an error inside a 2xx answer")

    def _failure(self, status: int, body: bytes, headers: Mapping[str, str], secrets: Sequence[str], *,
                 origin: str) -> UpstreamFailure:
        kind, message = upstream_error(body)
        if status in (401, 402, 403):
            failure = UpstreamFailure(502, "The upstream provider rejected the gateway's credentials or account.",
                                      code="upstream_auth_failed", failover=True, cooldown=COOLDOWN_AUTH_FAILED)
        elif status == 429:
            failure = UpstreamFailure(429, "The upstream provider is rate limiting; retry later.", type="rate_limit_error",
                                      code="upstream_rate_limited", failover=True, cooldown=_retry_after(headers))
        elif status >= 500 or status in _SERVER_TROUBLE:
            failure = UpstreamFailure(502, f"The upstream provider failed (HTTP {status}).", code="upstream_error",
                                      failover=True, cooldown=COOLDOWN_SERVER_ERROR)
        elif status < 400:
            failure = UpstreamFailure(502, "The upstream provider answered with a redirect, which the gateway does not follow.",
                                      code="upstream_redirect")
        else:
            failure = rejected(status if status in _CLIENT_STATUSES else 400, scrub(message, secrets) if message else None,
                               code=_REQUEST_CODES.get(kind or ""))
        detail = scrub(message if message is not None else body.decode("utf-8", "replace"), secrets, limit=300)
        # For the key balancer: a refused key is disabled, an account out of credit parked (both until
        # a person re-enables the key), with what the provider said as the reason.
        failure.disable, failure.park = status in (401, 403), status == 402
        failure.detail = f"HTTP {status}: {detail}"
        logger.log(logging.INFO if failure.type == "invalid_request_error" else logging.WARNING,
                   "upstream answered %s -> %s %s: %s", origin, failure.status, failure.code, detail)
        return failure


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
