"""Nothing an upstream writes reaches a client, a usage record or a log unscrubbed.

FakeOpenAI echoes the key it was sent, its own URL, an internal host, a bare host name, IPv4 and
IPv6 addresses and a postgres:// DSN in every field of every error shape: 4xx/5xx JSON errors,
plain-text bodies, 200 answers whose body is an error, and stream error events before and after
content. The supplier keys have no recognisable shape, so only the route's keys can catch them.
"""

from __future__ import annotations

import logging

import httpx
import orjson
import pytest

from apps.billing.models import Transfer, UsageRecord
from apps.providers.adapters.base import REQUEST_ERROR_CODES
from lib import tokenizer
from tests.fakes.openai_upstream import BARE_HOST, INTERNAL_HOST, INTERNAL_IP, INTERNAL_IPV6, LEAKY_TEXT, leaky_error
from tests.proxy.helpers import GOOD, expected_cost, post
from tests.proxy.keyhealth import reset_key_health

USED = "q7Zt!first-supplier-key"
SIBLING = "w9Xy!second-supplier-key"
TEXT = f"{LEAKY_TEXT}; keys {USED} {SIBLING}"
ERROR = {"error": {"message": TEXT, "type": TEXT, "param": TEXT, "code": TEXT}}
HEADERS = {"X-Upstream-Host": TEXT, "Openai-Organization": TEXT, "Retry-After": TEXT}
GATEWAY_TYPES = {"invalid_request_error", "api_error", "rate_limit_error"}
GATEWAY_CODES = {"upstream_rejected", "upstream_error", "upstream_auth_failed", "upstream_rate_limited", *REQUEST_ERROR_CODES}
STREAM = {**GOOD, "stream": True}


@pytest.fixture
def world(world, fake_openai):
    """The shared world with two supplier keys of no known shape (the fake accepts both)."""
    world.key.set_secret(USED)
    world.key.save()
    world.key2.set_secret(SIBLING)
    world.key2.save()
    accepted = fake_openai.expected_keys
    fake_openai.expected_keys = {USED, SIBLING}
    yield world
    fake_openai.expected_keys = accepted


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO)
    return caplog


def leaks(fake) -> list[str]:
    return [USED, SIBLING, fake.base_url, f"127.0.0.1:{fake.port}", INTERNAL_HOST, BARE_HOST, INTERNAL_IP, INTERNAL_IPV6,
            "postgres://", "hunter2", "pg-main.svc"]


def assert_clean(fake, response: httpx.Response, logs) -> None:
    seen = {"body": response.text, "headers": str(list(response.headers.items())), "log": logs.text}
    found = {where: [leak for leak in leaks(fake) if leak in text] for where, text in seen.items()}
    assert found == {"body": [], "headers": [], "log": []}
    assert "x-upstream-host" not in response.headers and "openai-organization" not in response.headers


def record_of(gateway, fake, response: httpx.Response) -> UsageRecord:
    gateway.drain(expect=1)
    record = UsageRecord.objects.get(request_id=response.headers["x-request-id"])
    assert record.error_type in GATEWAY_TYPES and record.error_code in GATEWAY_CODES
    assert not [leak for leak in leaks(fake) if leak in record.error_type + record.error_code]
    return record


# (what the upstream does, the client's status, type and code, upstream requests made)
ERROR_CASES = [
    ({"status": 400, "error_body": ERROR}, 400, "invalid_request_error", "upstream_rejected", 1),
    ({"status": 400, "error_body": leaky_error(code="context_length_exceeded")}, 400, "invalid_request_error",
     "context_length_exceeded", 1),
    ({"status": 404, "error_body": ERROR}, 404, "invalid_request_error", "upstream_rejected", 1),
    ({"status": 422, "error_body": TEXT}, 422, "invalid_request_error", "upstream_rejected", 1),
    ({"status": 418, "error_body": ERROR}, 400, "invalid_request_error", "upstream_rejected", 1),
    ({"status": 401, "error_body": ERROR}, 502, "api_error", "upstream_auth_failed", 2),
    ({"status": 429, "error_body": ERROR}, 429, "rate_limit_error", "upstream_rate_limited", 2),
    ({"status": 500, "error_body": ERROR}, 502, "api_error", "upstream_error", 2),
    ({"status": 503, "error_body": TEXT}, 502, "api_error", "upstream_error", 2),
    # HTTP 200 whose body is an error: a failure like the status would have said, with failover.
    ({"status": 200, "error_body": ERROR}, 502, "api_error", "upstream_error", 2),
    ({"status": 200, "error_body": leaky_error(code=400)}, 400, "invalid_request_error", "upstream_rejected", 1),
    ({"status": 200, "error_body": {"object": "error", "message": TEXT, "type": TEXT, "code": 503}}, 502, "api_error",
     "upstream_error", 2),
]


@pytest.mark.parametrize("body", [GOOD, STREAM], ids=["answer", "stream"])
def test_no_error_shape_reaches_the_client_the_record_or_the_log(gateway, fake_openai, logs, body):
    # One gateway for every shape (a gateway test's set-up and tear-down cost more than its requests).
    for behavior, status, type_, code, attempts in ERROR_CASES:
        reset_key_health()  # a 401 disables the keys and a 429 rests them, in every process: each case starts healthy
        fake_openai.reset()
        logs.clear()
        fake_openai.behavior(**behavior, error_headers=HEADERS, response_headers=HEADERS)
        response = post(gateway, body)
        case = f"{behavior['status']} {str(behavior['error_body'])[:40]}"
        assert response.status_code == status, case
        error = response.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (type_, code, None), case
        assert len(fake_openai.requests) == attempts, case
        assert_clean(fake_openai, response, logs)
        assert "upstream answered" in logs.text, case  # operators still see what happened, scrubbed
        gateway.drain()
        record = record_of(gateway, fake_openai, response)
        assert (record.status, record.http_status, record.error_type, record.error_code) == (
            "upstream_error", status, type_, code), case
        assert (record.sell_cost, record.buy_cost) == (0, 0), case
    assert UsageRecord.objects.count() == len(ERROR_CASES)
    assert not Transfer.objects.filter(kind__in=["usage", "usage_cost"]).exists()


def test_a_200_error_body_fails_over_to_the_next_key_that_answers(gateway, fake_openai, logs):
    fake_openai.behavior(status=200, error_body=ERROR, fail_times=1)
    response = post(gateway, GOOD)
    assert response.status_code == 200 and response.json()["choices"]
    assert [r.headers["authorization"] for r in fake_openai.requests] == [f"Bearer {USED}", f"Bearer {SIBLING}"]
    assert_clean(fake_openai, response, logs)
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert (record.status, record.supplier_key_id) == ("ok", gateway.world.key2.pk) and record.sell_cost > 0


def test_a_successful_answer_relays_no_upstream_header(gateway, fake_openai, logs):
    fake_openai.behavior(response_headers=HEADERS)
    for body in (GOOD, STREAM):
        response = post(gateway, body)
        assert response.status_code == 200
        assert_clean(fake_openai, response, logs)


def events(response: httpx.Response) -> list[dict | str]:
    out: list[dict | str] = []
    for block in response.text.split("\n\n"):
        if block.startswith("data: "):
            payload = block[6:]
            out.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return out


@pytest.mark.parametrize(("error_body", "named"), [(ERROR, 502), (TEXT, 502), ({"object": "error", "message": TEXT, "code": 500}, 500)],
                         ids=["openai", "plain-text", "vllm"])
def test_a_stream_error_event_before_any_content_is_the_gateways_and_costs_nothing(gateway, fake_openai, logs, error_body, named):
    fake_openai.behavior(stream_error_after=0, stream_error_body=error_body)
    response = post(gateway, STREAM)
    # Nothing reached the client yet (its response starts with the first event or keep-alive): the
    # error is the answer's own status and body.
    assert response.status_code == 502
    assert response.json() == {"error": {"message": f"The upstream provider failed (HTTP {named}).", "type": "api_error",
                                         "param": None, "code": "upstream_error"}}
    assert len(fake_openai.requests) == 2  # nothing reached the client: the other key was tried (issue 8, item 3)
    assert_clean(fake_openai, response, logs)
    record = record_of(gateway, fake_openai, response)
    assert (record.status, record.http_status, record.error_code, record.sell_cost, record.buy_cost) == (
        "upstream_error", 502, "upstream_error", 0, 0)
    assert not Transfer.objects.filter(kind__in=["usage", "usage_cost"]).exists()


@pytest.mark.parametrize("error_body", [ERROR, TEXT], ids=["openai", "plain-text"])
def test_a_stream_error_event_after_content_ends_the_stream_and_bills_what_was_generated(gateway, fake_openai, logs, error_body):
    fake_openai.behavior(stream_error_after=4, stream_error_body=error_body, words=40)
    response = post(gateway, {**STREAM, "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    received = events(response)
    chunks, tail = received[:-2], received[-2:]
    assert len(chunks) == 4 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert tail == [{"error": {"message": "The upstream provider failed (HTTP 502).", "type": "api_error", "param": None,
                               "code": "upstream_error"}}, "[DONE]"]
    assert_clean(fake_openai, response, logs)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text
    record = record_of(gateway, fake_openai, response)
    assert (record.status, record.http_status, record.error_code) == ("upstream_error", 502, "upstream_error")
    assert record.usage_counted_locally and record.output_tokens == tokenizer.count_text(text)
    sell = expected_cost(record.input_tokens, record.output_tokens)
    assert record.sell_cost == sell
    assert Transfer.objects.get(idempotency_id=f"usage:{record.request_id}:sell").amount == sell


def test_a_stream_error_event_naming_a_client_error_is_answered_as_one(gateway, fake_openai, logs):
    fake_openai.behavior(stream_error_after=2, stream_error_body=leaky_error(code=400))
    response = post(gateway, STREAM)
    error = events(response)[-2]["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "upstream_rejected")
    assert error["message"].startswith("key *** failed at *** via host *** and ***")
    assert_clean(fake_openai, response, logs)
    record = record_of(gateway, fake_openai, response)
    assert (record.status, record.http_status, record.error_code) == ("upstream_error", 400, "upstream_rejected")
