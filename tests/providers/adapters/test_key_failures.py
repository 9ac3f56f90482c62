"""What an upstream failure means for the supplier key: ``base.retry_after`` and the OpenAI
adapter's ``disable`` / ``park`` / ``detail`` (the balancer acts on them: apps/proxy/health.py)."""

from __future__ import annotations

from email.utils import formatdate

import orjson
import pytest
from multidict import CIMultiDict

from apps.providers.adapters.base import COOLDOWN_RATE_LIMITED, retry_after
from apps.providers.adapters.openai.adapter import OpenAIAdapter

KEY = "sk-live-0123456789abcdefXYZ"
NOW = 1_800_000_000.0


@pytest.mark.parametrize("headers, seconds", [
    ({"retry-after-ms": "1500"}, 1.5),
    ({"retry-after-ms": "250", "retry-after": "60"}, 0.25),  # the finer one wins
    ({"retry-after": "7"}, 7.0),
    ({"retry-after": formatdate(NOW + 20, usegmt=True)}, 20.0),
    ({"retry-after": formatdate(NOW - 20, usegmt=True)}, 0.0),
    ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),
    ({"retry-after-ms": "-5"}, None),
    ({"retry-after-ms": "nan"}, None),
    ({"retry-after": "-1"}, None),
    ({"retry-after": "1.5"}, None),  # delay-seconds is a whole number (RFC 9110)
    ({"retry-after": "tomorrow"}, None),
    ({}, None),
])
def test_retry_after_reads_milliseconds_seconds_and_http_dates(headers, seconds):
    assert retry_after(CIMultiDict(headers), now=NOW) == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_after_header_names_are_case_insensitive():
    assert retry_after(CIMultiDict({"Retry-After-Ms": "100"})) == 0.1


def body(message: str, *, code: str | None = None, type: str = "invalid_request_error") -> bytes:  # noqa: A002
    return orjson.dumps({"error": {"message": message, "type": type, "param": None, "code": code}})


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_to_be_disabled_with_what_the_provider_said_scrubbed(status):
    failure = OpenAIAdapter().map_error(status, body(f"Incorrect API key provided: {KEY}.", code="invalid_api_key"), {}, (KEY,))
    assert (failure.status, failure.code, failure.failover, failure.disable, failure.park) == (
        502, "upstream_auth_failed", True, True, False)
    assert failure.detail.startswith(f"HTTP {status}: Incorrect API key provided") and KEY not in failure.detail


@pytest.mark.parametrize("status, error", [
    (402, body("Insufficient Balance", code="invalid_request_error", type="unknown_error")),
    (429, body("You exceeded your current quota, please check your plan and billing details.", code="insufficient_quota",
               type="insufficient_quota")),
    (429, body("Billing hard limit has been reached", code="billing_hard_limit_reached")),
])
def test_an_account_out_of_funds_parks_the_key(status, error):
    failure = OpenAIAdapter().map_error(status, error, {}, (KEY,))
    assert (failure.status, failure.code, failure.failover, failure.park, failure.disable) == (
        502, "upstream_quota_exhausted", True, True, False)
    assert failure.detail.startswith(f"HTTP {status}: ")


def test_a_rate_limit_rests_the_key_for_retry_after_ms_or_a_date():
    adapter = OpenAIAdapter()
    limited = body("Rate limit reached", code="rate_limit_exceeded")
    assert adapter.map_error(429, limited, CIMultiDict({"retry-after-ms": "1200"}), ()).cooldown == pytest.approx(1.2)
    dated = adapter.map_error(429, limited, CIMultiDict({"Retry-After": formatdate(usegmt=True, timeval=None)}), ())
    assert 0 <= dated.cooldown <= 1
    plain = adapter.map_error(429, limited, {}, ())
    assert (plain.cooldown, plain.park, plain.disable, plain.code) == (COOLDOWN_RATE_LIMITED, False, False, "upstream_rate_limited")


def test_a_server_error_neither_disables_nor_parks():
    failure = OpenAIAdapter().map_error(503, b"<html>overloaded</html>", {}, ())
    assert (failure.failover, failure.disable, failure.park, failure.detail) == (True, False, False, "HTTP 503: <html>overloaded</html>")
