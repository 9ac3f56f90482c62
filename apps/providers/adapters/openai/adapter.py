"""``OpenAIAdapter``: the canonical form is OpenAI's, so requests and answers pass through with the
upstream model id swapped in; errors are translated (scrubbed by ``lib.scrub``, their type and
code mapped into the gateway's vocabulary) — including errors sent with HTTP 200.

What is repaired on the way (the family's protocol faults, see ``stream`` for streams): the output
cap's name for reasoning models (``max_tokens`` → ``max_completion_tokens``, ``wire.max_tokens_field``),
a provider's ``finish_reason`` words, and an SSE stream where a JSON answer belonged (assembled
into one completion). Subclasses set what differs per kind (``variants``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import ClassVar

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
    rejected,
    retry_after,
)
from apps.providers.adapters.openai.stream import EMPTY, FAILED_FINISH, TRUNCATED, OpenAIStreamDecoder
from apps.providers.adapters.openai.wire import (
    FINISH_ERROR,
    assemble_completion,
    canonical_choices,
    generated_text,
    load_error,
    max_tokens_field,
    request_body,
    request_url,
    upstream_error,
    usage_from,
    with_cache_details,
)
from lib.scrub import scrub

logger = logging.getLogger("jetstream.providers")

# Statuses after which the same request may succeed with another key (or a moment later).
_SERVER_TROUBLE = (408, 409)
# Client errors passed on with their own status; any other 4xx is answered as 400.
_CLIENT_STATUSES = (400, 404, 413, 422)
# The faults the stream decoder found itself: (message, code) of the client's 502.
_DECODER_FAULTS = {
    TRUNCATED: ("The upstream stream ended before the answer was complete.", "upstream_truncated"),
    EMPTY: ("The upstream provider returned an empty answer.", "upstream_empty"),
    FAILED_FINISH: ("The upstream provider stopped generating with an error.", "upstream_error"),
}
# Codes of a 429 that is no rate limit but an account out of quota or money
# (https://platform.openai.com/docs/guides/error-codes: "You exceeded your current quota").
_OUT_OF_FUNDS_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})


class OpenAIAdapter(Adapter):
    """OpenAI's wire format (https://platform.openai.com/docs/api-reference), static Bearer keys."""

    kind = "openai"
    # Streams ask for the usage chunk with ``stream_options.include_usage`` (False: the upstream
    # refuses the field and sends usage unasked).
    asks_stream_usage: ClassVar[bool] = True
    # The output cap's name for models that are not reasoning models (None: as the client sent it).
    max_tokens_param: ClassVar[str | None] = None

    def build_request(self, request: CanonicalRequest, target: Target, auth_headers: Mapping[str, str]) -> UpstreamRequest:
        """See ``Adapter.build_request``: ``wire.request_body`` (upstream model id; streams ask for
        usage; the output cap named as ``wire.max_tokens_field`` says) as JSON, uncompressed."""
        headers = {**auth_headers, "Content-Type": "application/json", "Accept-Encoding": "identity"}
        return UpstreamRequest(self.url(request, target), headers, self.body(request, target))

    def url(self, request: CanonicalRequest, target: Target) -> str:
        """The endpoint's URL: ``base_url`` + ``/chat/completions`` (``/completions``, ``/embeddings``)."""
        return request_url(target.base_url, request.endpoint)

    def body(self, request: CanonicalRequest, target: Target) -> bytes:
        """The upstream body (see ``build_request``)."""
        cap = max_tokens_field(target.upstream_model, target.options, self.max_tokens_param) if request.endpoint == "chat" else None
        return request_body(request.body, upstream_model=target.upstream_model, stream=request.stream,
                            ask_usage=self.asks_stream_usage, max_tokens_as=cap)

    def parse_body(self, body: bytes, request: CanonicalRequest) -> Parsed:
        """See ``Adapter.parse_body``: the body passes through as it came, unless a ``finish_reason``
        is not OpenAI's word (rewritten) or the upstream streamed where JSON belonged (the SSE
        assembled into one completion). ``finish_reason: "error"`` is a 502 ``upstream_error``, an
        answer with no text and no usage a 502 ``upstream_empty``; a body that is neither a JSON object
        nor SSE is ``malformed()``. ``text`` is filled whenever
        usage is missing or reports no output (the relay counts it then)."""
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = self._assembled(body, request)
        if not isinstance(obj, dict):
            raise malformed()
        if with_cache_details(obj):
            body = orjson.dumps(obj)
        if b'"finish_reason"' in body or not body.lstrip().startswith(b"{"):
            choices = obj.get("choices") or []
            if any(isinstance(c, dict) and c.get("finish_reason") == FINISH_ERROR for c in choices):
                raise self.in_band_error(FAILED_FINISH, ())
            if canonical_choices(obj) or not body.lstrip().startswith(b"{"):
                body = orjson.dumps(obj)
        usage = usage_from(obj)
        text = generated_text(obj, request.endpoint) if usage is None or not usage.output_tokens else None
        if usage is None and not text and request.endpoint != "embedding":
            raise self.in_band_error(EMPTY, ())  # nothing generated, nothing billed (docs/billing.md, "empty")
        return Parsed(body, usage, text)

    def _assembled(self, body: bytes, request: CanonicalRequest) -> dict | None:
        # An SSE stream where one JSON answer belonged: decoded as a stream, put back together.
        if b"data:" not in body:
            return None
        decoder = self.stream_decoder(request)
        events = decoder.feed(body) + decoder.finish()
        if decoder.error is not None:  # no secrets at hand here: an upstream's own text is not passed on
            raise self.in_band_error(decoder.error if decoder.error in _DECODER_FAULTS else FAILED_FINISH, ())
        return assemble_completion(events, request.endpoint, decoder.usage_chunk)

    def stream_decoder(self, request: CanonicalRequest) -> OpenAIStreamDecoder:
        """See ``Adapter.stream_decoder``."""
        return OpenAIStreamDecoder(request.endpoint)

    def map_error(self, status: int, body: bytes, headers: Mapping[str, str], secrets: Sequence[str]) -> UpstreamFailure:
        """See ``Adapter.map_error`` (statuses: https://platform.openai.com/docs/guides/error-codes).

        401/403 → 502, fail over, the key is disabled (``disable``); 402, or 429 ``insufficient_quota`` →
        502 ``upstream_quota_exhausted``, fail over, the key is parked (``park``); 429 → 429, fail over,
        rests for ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms`` (``base.retry_after``; at most
        ``COOLDOWN_AUTH_FAILED``) or ``COOLDOWN_RATE_LIMITED``;
        5xx, 408, 409 → 502, fail over; a 3xx redirect → 502 ``upstream_redirect``, no failover. These say nothing of the upstream's text: it is about the
        supplier's account or servers, not the client's request. 400, 404, 413, 422 are passed on and
        any other 4xx answered 400, with no failover: the message scrubbed, the code kept only from
        ``REQUEST_ERROR_CODES`` (see ``rejected``). The upstream's text, scrubbed, goes to the log.
        """
        return self._failure(status, body, headers, secrets, origin=f"HTTP {status}")

    def body_failure(self, body: bytes, secrets: Sequence[str]) -> UpstreamFailure | None:
        """See ``Adapter.body_failure``: a 200 body that is an error object (``wire.error_object``)."""
        if b'"error"' not in body:  # cheap: in an answer the word is only ever inside an escaped string
            return None
        return self.in_band_error(body, secrets) if load_error(body) is not None else None

    def in_band_error(self, payload: bytes, secrets: Sequence[str]) -> UpstreamFailure:
        """See ``Adapter.in_band_error``: mapped as ``map_error`` maps the HTTP status the error names
        in its ``code`` or ``status`` (vLLM, OpenRouter), or as a 502 when it names none."""
        fault = _DECODER_FAULTS.get(payload)
        if fault is not None:  # found by the stream decoder: no upstream text to pass on
            logger.warning("upstream answer: %s", fault[1])
            return UpstreamFailure(502, fault[0], code=fault[1], failover=True, cooldown=COOLDOWN_SERVER_ERROR)
        _, _, status = upstream_error(payload)
        return self._failure(status or 502, payload, {}, secrets, origin="an error inside a 2xx answer")

    def _failure(self, status: int, body: bytes, headers: Mapping[str, str], secrets: Sequence[str], *,
                 origin: str) -> UpstreamFailure:
        message, code, _ = upstream_error(body)
        detail = scrub(message if message is not None else body.decode("utf-8", "replace"), secrets, limit=300)
        if status in (401, 403):
            # The key itself is refused: the balancer disables it (``disable``) until a person re-enables it.
            failure = UpstreamFailure(502, "The upstream provider rejected the gateway's credentials.",
                                      code="upstream_auth_failed", failover=True, cooldown=COOLDOWN_AUTH_FAILED,
                                      disable=True, detail=f"HTTP {status}: {detail}")
        elif status == 402 or (status == 429 and code in _OUT_OF_FUNDS_CODES):
            # The key's account is out of quota or money: parked until a person re-enables it.
            failure = UpstreamFailure(502, "The upstream provider refused the gateway's account (quota or balance).",
                                      code="upstream_quota_exhausted", failover=True, cooldown=COOLDOWN_AUTH_FAILED,
                                      park=True, detail=f"HTTP {status}: {detail}")
        elif status == 429:
            # Retry-After (seconds or a date) or retry-after-ms is the upstream's word: capped, so one
            # answer cannot bench a key for days.
            wait = retry_after(headers)
            cooldown = min(wait, COOLDOWN_AUTH_FAILED) if wait is not None else COOLDOWN_RATE_LIMITED
            failure = UpstreamFailure(429, "The upstream provider is rate limiting; retry later.", type="rate_limit_error",
                                      code="upstream_rate_limited", failover=True, cooldown=cooldown,
                                      detail=f"HTTP 429: {detail}")
        elif status >= 500 or status in _SERVER_TROUBLE:
            failure = UpstreamFailure(502, f"The upstream provider failed (HTTP {status}).", code="upstream_error",
                                      failover=True, cooldown=COOLDOWN_SERVER_ERROR, detail=f"HTTP {status}: {detail}")
        elif status < 400:
            # A redirect (never followed: the target was not checked against SSRF and would get the
            # key) is the provider's configuration, not the client's request; every key meets it.
            failure = UpstreamFailure(502, "The upstream provider answered with a redirect, which the gateway does not follow.",
                                      code="upstream_redirect")
        else:
            # Any other 4xx is about the request itself: the same on every key.
            failure = rejected(status if status in _CLIENT_STATUSES else 400, scrub(message, secrets) if message else None,
                               code=code)
        logger.log(logging.INFO if failure.type == "invalid_request_error" else logging.WARNING,
                   "upstream answered %s -> %s %s: %s", origin, failure.status, failure.code, detail)
        return failure
