"""A usage event's upstream attempts: normalised to what the record's JSON column holds, written."""

from __future__ import annotations

import time

import orjson

from apps.billing.usage import MAX_ATTEMPTS_RECORDED, UsageEvent


def event(attempts) -> UsageEvent:
    return UsageEvent(request_id="req_1", endpoint="chat", status="ok", http_status=200, started_at=time.time(),
                      finished_at=time.time(), attempts=attempts)


def test_well_formed_attempts_pass_as_they_are():
    attempts = [{"key": 3, "status": 429, "code": "upstream_rate_limited", "ms": 12}, {"key": 4, "status": 200, "code": "", "ms": 80}]
    assert UsageEvent.decode(event(attempts).encode()).attempts == attempts


def test_odd_attempts_are_made_writable_not_refused():
    odd = [{"key": "3", "status": 10_000, "code": "x\x00" * 100, "ms": -5, "extra": 1}, "not an object",
           {"key": 2**70, "status": 200, "code": 5, "ms": 2**40}]
    fixed = UsageEvent.decode(event(odd).encode()).attempts
    assert fixed == [{"key": None, "status": 999, "code": ("x\ufffd" * 32), "ms": 0},
                     {"key": None, "status": 200, "code": "5", "ms": 2**31 - 1}]
    assert UsageEvent.decode(event([{"key": 1, "status": 200, "code": "", "ms": 1}] * 50).encode()).attempts == [
        {"key": 1, "status": 200, "code": "", "ms": 1}] * MAX_ATTEMPTS_RECORDED
    assert event("many").normalised().attempts == []


def test_an_event_from_before_attempts_existed_has_none():
    raw = orjson.dumps({"request_id": "req_old", "endpoint": "chat", "status": "ok", "http_status": 200, "started_at": 1.8e9})
    assert UsageEvent.decode(raw).attempts == []


def test_the_record_keeps_the_attempts(db):
    from apps.billing.models import UsageRecord
    from apps.billing.usage_records import record_usage_batch

    attempts = [{"key": None, "status": 502, "code": "upstream_error", "ms": 31}]
    record_usage_batch(events=[event(attempts), UsageEvent(request_id="req_2", endpoint="chat", status="ok", http_status=200,
                                                           started_at=time.time(), finished_at=time.time())])
    assert UsageRecord.objects.get(request_id="req_1").attempts == attempts
    assert UsageRecord.objects.get(request_id="req_2").attempts == []
