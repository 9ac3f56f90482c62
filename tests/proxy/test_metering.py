"""The meter writer on its own: redelivered entries are written and acknowledged once; a refused
charge never blocks a batch; an entry that cannot be written is set aside in the dead-letter
stream and counted, and everything else lands. What billing's door writes is tested in
tests/billing/test_usage.py; poison events through the real gateway in tests/proxy/test_poison_events.py."""

from __future__ import annotations

import logging
import time

import orjson
import pytest
import redis
from django.conf import settings

from apps.billing import services as ledger
from apps.billing.models import Transfer, UsageRecord, UsageStatus
from apps.billing.usage import UsageEvent
from apps.billing.usage_records import record_usage_batch
from apps.proxy import redis_scripts
from apps.proxy.metering import DEAD_LETTER_KEY, DEAD_LETTER_METRIC, GROUP, MeterWriter, StreamEntry
from tests.proxy.conftest import build_world, flush_gateway_keys


@pytest.fixture
def world(db, fake_openai):
    flush_gateway_keys()
    yield build_world(fake_openai, top_up=1_000)
    flush_gateway_keys()


def event(world, rid: str, sell: int, **fields) -> bytes:
    now = time.time()
    return UsageEvent(**{"request_id": rid, "endpoint": "chat", "status": UsageStatus.OK, "http_status": 200, "started_at": now,
                         "finished_at": now, "token_id": world.token.pk, "company_id": world.company.pk,
                         "model_name": "gpt-4o-mini", "model_id": world.model.pk, "provider_id": world.provider.pk,
                         "supplier_key_id": world.key.pk, "supplier_id": world.supplier.pk, "input_tokens": 10,
                         "output_tokens": 5, "sell_cost": sell, "buy_cost": sell, **fields}).encode()


def outstanding(client, world) -> int:
    return int(client.hget(redis_scripts.company_key(world.company.pk), "out") or 0)


def test_a_redelivered_entry_is_written_and_counted_once(world):
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.hset(redis_scripts.company_key(world.company.pk), mapping={"cr": 1_000, "db": 0, "lim": 0, "out": 300})
    writer = MeterWriter(consumer="first", block_ms=10)
    writer.ensure_group()
    client.xadd(redis_scripts.STREAM_KEY, {"e": event(world, "req_a", 300)})
    entries = client.xreadgroup(GROUP, "first", {redis_scripts.STREAM_KEY: ">"})[0][1]
    # The first writer commits but dies before acknowledging…
    record_usage_batch(events=[UsageEvent.decode(entries[0][1][b"e"])])
    # …so a second writer takes the entry over and processes it again.
    second = MeterWriter(consumer="second", block_ms=10, reclaim_idle_ms=0)
    second.housekeeping(time.time())
    assert UsageRecord.objects.filter(request_id="req_a").count() == 1
    assert Transfer.objects.filter(idempotency_id="usage:req_a:sell").count() == 1
    assert outstanding(client, world) == 0
    assert client.xpending(redis_scripts.STREAM_KEY, GROUP)["pending"] == 0
    # A late acknowledgement by the first writer would subtract nothing more.
    writer.process([StreamEntry(entries[0][0], UsageEvent.decode(entries[0][1][b"e"]))])
    assert outstanding(client, world) == 0


def test_a_charge_the_ledger_refuses_is_recorded_without_blocking_the_batch(world):
    client = redis.Redis.from_url(settings.REDIS_URL)
    writer = MeterWriter(consumer="w", block_ms=10)
    writer.ensure_group()
    # Counters drifted: the wallet holds 1000 micro-RUB but a charge of 5000 arrives between two good ones.
    # (What the door writes for each of them: tests/billing/test_usage.py.)
    for rid, sell in (("req_ok_1", 100), ("req_too_big", 5_000), ("req_ok_2", 200)):
        client.xadd(redis_scripts.STREAM_KEY, {"e": event(world, rid, sell)})
    assert writer.run_once() == 3
    records = {r.request_id: r for r in UsageRecord.objects.all()}
    assert set(records) == {"req_ok_1", "req_too_big", "req_ok_2"}
    assert records["req_too_big"].error_code == "charge_refused_by_ledger"
    assert client.xpending(redis_scripts.STREAM_KEY, GROUP)["pending"] == 0
    assert ledger.verify_ledger() == []


def test_a_lone_charge_the_ledger_refuses_does_not_stall_the_stream(world):
    client = redis.Redis.from_url(settings.REDIS_URL)
    writer = MeterWriter(consumer="w", block_ms=10)
    writer.ensure_group()
    client.xadd(redis_scripts.STREAM_KEY, {"e": event(world, "req_alone_too_big", 5_000)})
    assert writer.run_once() == 1
    assert UsageRecord.objects.get(request_id="req_alone_too_big").error_code == "charge_refused_by_ledger"
    assert not Transfer.objects.filter(idempotency_id="usage:req_alone_too_big:sell").exists()
    assert client.xpending(redis_scripts.STREAM_KEY, GROUP)["pending"] == 0


# --- poison entries: set aside, never in the way ----------------------------------------------

def dead_letters(client) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in client.xrange(DEAD_LETTER_KEY)]


def test_an_event_the_database_refuses_is_set_aside_and_counted_and_the_rest_lands(world, caplog):
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.hset(redis_scripts.company_key(world.company.pk), mapping={"cr": 1_000, "db": 0, "lim": 0, "out": 360})
    writer = MeterWriter(consumer="w", block_ms=10)
    writer.ensure_group()
    ghost = event(world, "req_ghost_token", 50, token_id=987_654)  # no such token: the foreign key refuses it
    ids = {}
    for rid, raw in (("req_ok_1", event(world, "req_ok_1", 100)), ("req_ghost_token", ghost),
                     ("req_ok_2", event(world, "req_ok_2", 200))):
        ids[rid] = client.xadd(redis_scripts.STREAM_KEY, {"e": raw, "v": "1"})
    with caplog.at_level(logging.ERROR, logger="jetstream.meter"):
        assert writer.run_once() == 3
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == {"req_ok_1", "req_ok_2"}
    assert ledger.verify_ledger() == []
    assert client.xpending(redis_scripts.STREAM_KEY, GROUP)["pending"] == 0
    # The raw entry as it was, the error's class and where it came from; never the error's message.
    assert dead_letters(client) == [{b"e": ghost, b"v": b"1", b"dead_error": b"IntegrityError",
                                     b"dead_source_id": ids["req_ghost_token"]}]
    assert int(client.get(DEAD_LETTER_METRIC)) == 1
    assert (writer.written, writer.dead_lettered) == (2, 1)
    # Every acknowledged entry leaves `out` (the refused one's charge is kept in the dead letter).
    assert outstanding(client, world) == 10
    assert any("req_ghost_token" in r.getMessage() and DEAD_LETTER_KEY in r.getMessage() for r in caplog.records)
    # The next batch is not held up by it.
    client.xadd(redis_scripts.STREAM_KEY, {"e": event(world, "req_ok_3", 10)})
    assert writer.run_once() == 1 and UsageRecord.objects.filter(request_id="req_ok_3").exists()


def test_an_entry_that_is_no_event_is_set_aside_and_counted(world):
    client = redis.Redis.from_url(settings.REDIS_URL)
    writer = MeterWriter(consumer="w", block_ms=10)
    writer.ensure_group()
    client.xadd(redis_scripts.STREAM_KEY, {"e": b"{not json"})
    client.xadd(redis_scripts.STREAM_KEY, {"x": b"no e field"})
    client.xadd(redis_scripts.STREAM_KEY, {"e": event(world, "req_ok", 10)})
    assert writer.run_once() == 1
    assert UsageRecord.objects.get().request_id == "req_ok"
    assert [(d.get(b"e"), d[b"dead_error"]) for d in dead_letters(client)] == [
        (b"{not json", b"MalformedUsageEvent"), (None, b"KeyError")]
    assert int(client.get(DEAD_LETTER_METRIC)) == 2
    assert client.xpending(redis_scripts.STREAM_KEY, GROUP)["pending"] == 0


def test_an_old_proxys_entry_with_what_postgresql_refuses_is_recorded(world):
    # Written before normalisation existed (not through UsageEvent.encode): NUL, int32 overflow, a bad address.
    client = redis.Redis.from_url(settings.REDIS_URL)
    writer = MeterWriter(consumer="w", block_ms=10)
    writer.ensure_group()
    raw = orjson.dumps({"request_id": "req_old", "endpoint": "chat", "status": "ok", "http_status": 200,
                        "started_at": time.time(), "company_id": world.company.pk, "model_name": "demo\u0000chat",
                        "output_tokens": 2**31, "error_code": "x\u0000", "client_ip": "unknown"})
    client.xadd(redis_scripts.STREAM_KEY, {"e": raw})
    client.xadd(redis_scripts.STREAM_KEY, {"e": event(world, "req_ok", 10)})
    assert writer.run_once() == 2
    record = UsageRecord.objects.get(request_id="req_old")
    assert (record.model_name, record.output_tokens, record.error_code, record.client_ip, record.usage_clamped) == (
        "demo\ufffdchat", 2**31 - 1, "x\ufffd", None, True)
    assert UsageRecord.objects.filter(request_id="req_ok").exists()
    assert dead_letters(client) == [] and client.get(DEAD_LETTER_METRIC) is None
