"""Gemini's errors → the gateway's ``UpstreamFailure``.

Google's APIs answer errors as a ``google.rpc.Status``: ``{"error": {"code": 429, "message": "…",
"status": "RESOURCE_EXHAUSTED", "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
"retryDelay": "12s"}, …]}}`` (https://ai.google.dev/gemini-api/docs/troubleshooting,
https://cloud.google.com/apis/design/errors). Google's OpenAI-compatible endpoint wraps it in a list;
both shapes are read.

Quirk: a wrong or expired API key is a **400** ``INVALID_ARGUMENT`` whose details carry
``ErrorInfo.reason`` ``API_KEY_INVALID`` (or another ``API_KEY_*``), not a 401. It is the key's fault,
so it fails over like a 401. ``FAILED_PRECONDITION`` (400) is the key's project: billing not enabled,
the free tier not offered in the caller's region — also the key's, also failed over.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from apps.providers.adapters.base import (
    COOLDOWN_AUTH_FAILED,
    COOLDOWN_RATE_LIMITED,
    COOLDOWN_SERVER_ERROR,
    UpstreamFailure,
    rejected,
)
from lib.scrub import scrub

logger = logging.getLogger("jetstream.providers")

# Statuses after which the same request may succeed with another key (or a moment later).
_SERVER_TROUBLE = (408, 409)
# Client errors passed on with their own status; any other 4xx is answered as 400.
_CLIENT_STATUSES = (400, 404, 413, 422)
# google.rpc canonical codes → the gateway's request error codes (``base.REQUEST_ERROR_CODES``).
_CODES = {"INVALID_ARGUMENT": "invalid_request", "OUT_OF_RANGE": "invalid_value", "NOT_FOUND": "model_not_found"}
_DELAY = re.compile(r"^(\d+(?:\.\d+)?)s$")


def google_error(body: bytes | Any) -> dict[str, Any] | None:
    """The ``error`` object of an error body (raw bytes or decoded JSON), or None when it is not one."""
    if isinstance(body, bytes | bytearray):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return error
    return {"message": error} if isinstance(error, str) else None


def _details(error: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    details = error.get("details")
    return [d for d in details if isinstance(d, dict) and str(d.get("@type", "")).endswith(kind)] \
        if isinstance(details, list) else []


def _key_refused(error: dict[str, Any]) -> bool:
    reasons = [str(d.get("reason") or "") for d in _details(error, "google.rpc.ErrorInfo")]
    return any(reason.startswith("API_KEY_") for reason in reasons) or error.get("status") == "FAILED_PRECONDITION"


def retry_delay(error: dict[str, Any] | None, headers: Mapping[str, str]) -> float:
    """Seconds a rate-limited key rests: ``Retry-After`` (whole seconds) or ``RetryInfo.retryDelay``
    ("12s", "0.5s"), capped at ``COOLDOWN_AUTH_FAILED`` so one answer cannot bench a key for days;
    ``COOLDOWN_RATE_LIMITED`` when neither is given."""
    retry_after = headers.get("retry-after", "")
    if retry_after.isdigit():
        return min(float(retry_after), COOLDOWN_AUTH_FAILED)
    for info in _details(error or {}, "google.rpc.RetryInfo"):
        match = _DELAY.match(str(info.get("retryDelay") or ""))
        if match:
            return min(float(match.group(1)), COOLDOWN_AUTH_FAILED)
    return COOLDOWN_RATE_LIMITED


def failure(status: int, body: bytes, headers: Mapping[str, str], secrets: Sequence[str], *, origin: str) -> UpstreamFailure:
    """What Gemini's answer ``status`` + ``body`` means (see ``GeminiAdapter.map_error``); the upstream's
    text, scrubbed, goes to the log."""
    error = google_error(body)
    message = error.get("message") if error and isinstance(error.get("message"), str) else None
    if status in (401, 403) or (status == 400 and error is not None and _key_refused(error)):
        result = UpstreamFailure(502, "The upstream provider rejected the gateway's credentials.",
                                 code="upstream_auth_failed", failover=True, cooldown=COOLDOWN_AUTH_FAILED)
    elif status == 429:
        result = UpstreamFailure(429, "The upstream provider is rate limiting; retry later.", type="rate_limit_error",
                                 code="upstream_rate_limited", failover=True, cooldown=retry_delay(error, headers))
    elif status >= 500 or status in _SERVER_TROUBLE:
        result = UpstreamFailure(502, f"The upstream provider failed (HTTP {status}).", code="upstream_error",
                                 failover=True, cooldown=COOLDOWN_SERVER_ERROR)
    elif status < 400:
        result = UpstreamFailure(502, "The upstream provider answered with a redirect, which the gateway does not follow.",
                                 code="upstream_redirect")
    else:
        code = _CODES.get(str(error.get("status"))) if error else None
        result = rejected(status if status in _CLIENT_STATUSES else 400, scrub(message, secrets) if message else None, code=code)
    detail = scrub(message if message is not None else body.decode("utf-8", "replace"), secrets, limit=300)
    # For the key balancer: a refused key (401/403, or Google's 400 for a bad key) is disabled until a
    # person re-enables it, with what Google said as the reason.
    result.disable = result.code == "upstream_auth_failed"
    result.detail = f"HTTP {status}: {detail}"
    logger.log(logging.INFO if result.type == "invalid_request_error" else logging.WARNING,
               "upstream answered %s -> %s %s: %s", origin, result.status, result.code, detail)
    return result


def blocked(reason: str) -> UpstreamFailure:
    """The prompt itself was blocked (``promptFeedback.blockReason``): a 400 ``content_filter``, no
    failover (every key would be refused the same)."""
    name = re.sub(r"[^A-Z_]", "", reason)[:40] or "OTHER"  # an enum name; anything else in it is dropped
    return rejected(400, f"The upstream provider blocked the prompt ({name}).", code="content_filter")
