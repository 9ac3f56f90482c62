"""The balancer's parts one by one: smooth weighted round-robin, the order over shared health, the
health script against a real Redis, and the status changes written to PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import orjson
import pytest
import redis as redis_lib
from django.conf import settings

from apps.providers.adapters.base import UpstreamFailure
from apps.providers.key_health import (
    CLOSED,
    EXHAUSTED,
    HALF_OPEN,
    HEALTH_KEY,
    INVALID,
    OPEN,
    PROBE_PREFIX,
    STATUS_QUEUE,
    VERSION_KEY,
    KeyHealth,
    parse_health,
    read_health,
    reset_health,
)
from apps.proxy.health import BreakerSettings, KeyBalancer, smooth_pick
from apps.proxy.redis_scripts import KEY_HEALTH
from apps.proxy.snapshot import KeyRoute
from lib.resp import Redis


def key(key_id: int, *, weight: int = 1, priority: int = 0, updated_at: float = 0.0) -> KeyRoute:
    return KeyRoute(key_id, 1, f"secret-{key_id}", weight, priority, 10_000, updated_at=updated_at)


# ------------------------------------------------------------------ smooth weighted round-robin


def test_smooth_round_robin_is_exact_and_spread_out():
    group = [key(1, weight=5), key(2), key(3)]
    picks = [smooth_pick(group).id for _ in range(700)]
    assert picks[:7] == [1, 1, 2, 1, 3, 1, 1]  # nginx's sequence for 5, 1, 1
    assert Counter(picks) == Counter({1: 500, 2: 100, 3: 100})
    assert all(Counter(picks[i:i + 7]) == Counter({1: 5, 2: 1, 3: 1}) for i in range(0, 700, 7))


def test_order_is_by_priority_then_weighted_with_the_rest_as_fallbacks():
    balancer = KeyBalancer(None)
    keys = [key(1, weight=1, priority=1), key(2, weight=3), key(3, weight=1), key(4, weight=9, priority=2)]
    orders = [[k.id for k in balancer.order(keys)] for _ in range(4)]
    assert orders == [[2, 3, 1, 4], [2, 3, 1, 4], [3, 2, 1, 4], [2, 3, 1, 4]]  # 3:1 is a a b a


def test_order_skips_unhealthy_keys_and_puts_half_open_probes_first():
    now = time.time()
    keys = [key(1), key(2), key(3), key(4), key(5, updated_at=now), key(6)]
    balancer = KeyBalancer(None)
    balancer.health = {
        1: KeyHealth(state=INVALID, at=now - 5),
        2: KeyHealth(cool_until=now + 10),
        3: KeyHealth(state=OPEN, open_until=now + 10, failures=3),
        4: KeyHealth(state=OPEN, open_until=now - 1, failures=3),  # cool-off over: half-open
        5: KeyHealth(state=EXHAUSTED, at=now - 5),  # parked before a person's save: serves again
    }
    assert [k.id for k in balancer.order(keys, now)] == [4, 5, 6]
    assert balancer.is_probe(keys[3], now) and not balancer.is_probe(keys[4], now)
    assert balancer.retry_in(keys[:3], now) == pytest.approx(10, abs=0.01)
    assert balancer.retry_in(keys[:1], now) is None  # only parked keys: nothing to wait for


def test_a_key_resting_in_this_worker_is_tried_last_not_skipped():
    keys = [key(1, weight=5), key(2)]
    keys[0].cooldown_until = time.monotonic() + 30
    assert [k.id for k in KeyBalancer(None).order(keys)] == [2, 1]


@pytest.mark.parametrize("failure, counted", [
    (UpstreamFailure(502, "x", failover=True), True),
    (UpstreamFailure(504, "x", code="upstream_timeout", failover=True), True),
    (UpstreamFailure(429, "x", code="upstream_rate_limited", failover=True), False),
    (UpstreamFailure(502, "x", failover=True, disable=True), False),
    (UpstreamFailure(502, "x", failover=True, park=True), False),
    (UpstreamFailure(400, "x"), False),
])
def test_what_counts_towards_the_breaker(failure, counted):
    assert KeyBalancer.counts_for_breaker(failure) is counted


def test_a_health_record_that_cannot_be_read_is_a_healthy_one():
    assert KeyHealth.decode(b"not json") == KeyHealth()
    assert KeyHealth.decode(b"[1]") == KeyHealth()
    assert KeyHealth.decode(b'{"s": "open", "f": "many"}') == KeyHealth()
    assert parse_health([b"7", b'{"s": "open", "ou": 5}', b"x", b"{}"]) == {7: KeyHealth(state=OPEN, open_until=5.0)}


# ------------------------------------------------------------------ the shared record in Redis


@pytest.fixture
def client():
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    for name in client.scan_iter("js:keys:*"):
        client.delete(name)
    yield client
    for name in client.scan_iter("js:keys:*"):
        client.delete(name)
    client.close()


def run(client, op: str, key_id: int, now: float, *args) -> KeyHealth | None:
    reply = client.eval(KEY_HEALTH, 4, HEALTH_KEY, VERSION_KEY, STATUS_QUEUE, f"{PROBE_PREFIX}{key_id}", op, key_id, repr(now),
                        *args)
    return KeyHealth.decode(reply) if reply else None


def test_the_breaker_opens_after_n_failures_and_closes_after_m_probes(client):
    now = 1_800_000_000.0
    assert run(client, "ok", 7, now, 2) is None  # a healthy key's success writes nothing
    assert client.get(VERSION_KEY) is None
    assert run(client, "fail", 7, now, 3, 30.0, "upstream_error", 502, "HTTP 500: boom").state == CLOSED
    assert run(client, "ok", 7, now, 2).failures == 0  # a success resets the count
    for _ in range(2):
        assert run(client, "fail", 7, now, 3, 30.0, "upstream_error", 502, "HTTP 500").state == CLOSED
    opened = run(client, "fail", 7, now, 3, 30.0, "upstream_timeout", 504, "")
    assert (opened.state, opened.failures, opened.open_until, opened.code) == (OPEN, 3, now + 30, "upstream_timeout")
    assert opened.circuit(now + 29) == OPEN and opened.circuit(now + 30) == HALF_OPEN
    client.set(f"{PROBE_PREFIX}7", 1)
    probe = run(client, "ok", 7, now + 31, 2)
    assert (probe.state, probe.successes) == (HALF_OPEN, 1)
    assert not client.exists(f"{PROBE_PREFIX}7")  # the probe's lease is handed back
    closed = run(client, "ok", 7, now + 32, 2)
    assert (closed.state, closed.failures, closed.successes) == (CLOSED, 0, 0)
    assert closed.error == "" and closed.code == "upstream_timeout"  # the last error stays for the admin
    assert int(client.get(VERSION_KEY)) == 7  # every change told the workers; the no-op did not


def test_a_failed_probe_opens_the_breaker_for_another_cool_off(client):
    now = 1_800_000_000.0
    for _ in range(3):
        run(client, "fail", 7, now, 3, 30.0, "upstream_error", 502, "")
    run(client, "ok", 7, now + 31, 2)
    again = run(client, "fail", 7, now + 32, 3, 30.0, "upstream_error", 502, "")
    assert (again.state, again.open_until, again.successes) == (OPEN, now + 62, 0)


def test_a_rate_limit_cools_the_key_for_the_longest_wait_asked(client):
    now = 1_800_000_000.0
    run(client, "cool", 7, now, 20.0, "upstream_rate_limited", 429, "HTTP 429: slow down")
    cooled = run(client, "cool", 7, now + 1, 1.5, "upstream_rate_limited", 429, "")
    assert (cooled.state, cooled.cool_until, cooled.failures) == (CLOSED, now + 20, 0)


def test_parking_queues_the_status_change_and_survives_other_failures(client):
    now = 1_800_000_000.0
    parked = run(client, "park", 7, now, INVALID, "upstream_auth_failed", 502, "HTTP 401: Incorrect API key provided")
    assert parked.state == INVALID and parked.parked(now - 60) and not parked.parked(now + 1)
    assert run(client, "fail", 7, now + 1, 1, 30.0, "upstream_error", 502, "").state == INVALID
    assert run(client, "ok", 7, now + 2, 1).state == INVALID
    assert [orjson.loads(e) for e in client.lrange(STATUS_QUEUE, 0, -1)] == [
        {"id": 7, "status": INVALID, "reason": "HTTP 401: Incorrect API key provided", "at": now}]
    assert set(read_health(client)) == {7} and read_health(client, [8]) == {}
    reset_health(client, 7)
    assert read_health(client) == {}


def test_an_unknown_operation_is_refused(client):
    with pytest.raises(redis_lib.ResponseError):
        run(client, "explode", 7, 1.0)


def test_a_worker_shares_its_reports_and_reads_the_others(client):
    async def scenario():
        mine, theirs = Redis(settings.REDIS_URL), Redis(settings.REDIS_URL)
        breaker = BreakerSettings(failures=1, successes=1, cooloff=5)
        me, other = KeyBalancer(mine, breaker), KeyBalancer(theirs, breaker)
        k = key(7)
        await me.failed(k, UpstreamFailure(502, "x", failover=True, detail="HTTP 500: boom"))
        assert me.health[7].state == OPEN  # this worker knows at once
        assert await other.refresh(await theirs.execute("GET", VERSION_KEY)) == 0
        assert other.order([k]) == [] and other.retry_in([k]) == pytest.approx(5, abs=0.1)
        await me.failed(k, UpstreamFailure(502, "x", failover=True, park=True))
        assert await other.refresh(b"any") == 1  # one status change waits for the database
        assert await other.admit_probe(k) and not await me.admit_probe(k)  # one probe lease
        await mine.close()
        await theirs.close()

    asyncio.run(scenario())


# ------------------------------------------------------------------ status changes into PostgreSQL


@pytest.fixture
def supplier_key(db):
    from apps.accounts.models import Supplier
    from apps.providers.models import Provider, SupplierKey

    supplier = Supplier.objects.create(slug="north-keys", name="North Keys")
    provider = Provider.objects.create(slug="openai-main", kind="openai", base_url="https://api.openai.com/v1")
    key = SupplierKey(supplier=supplier, provider=provider, name="nk-1")
    key.set_secret("sk-test-0123456789")
    key.save()
    return key


def queue(client, *changes) -> None:
    for change in changes:
        client.rpush(STATUS_QUEUE, change if isinstance(change, bytes) else orjson.dumps(change))


def test_a_queued_change_sets_the_status_and_reason_but_not_updated_at(client, supplier_key):
    from apps.providers.key_status import apply_key_status_changes

    updated = supplier_key.updated_at
    queue(client, {"id": supplier_key.pk, "status": EXHAUSTED, "reason": "HTTP 402: Insufficient Balance", "at": time.time()},
          b"garbage", {"id": 999_999, "status": INVALID, "reason": "", "at": time.time()})
    assert apply_key_status_changes(client=client) == 1
    supplier_key.refresh_from_db()
    assert (supplier_key.status, supplier_key.status_reason) == ("exhausted", "HTTP 402: Insufficient Balance")
    assert supplier_key.updated_at == updated
    assert client.llen(STATUS_QUEUE) == 0


def test_a_person_who_saved_the_key_after_the_failure_has_the_last_word(client, supplier_key):
    from apps.providers.key_status import apply_key_status_changes

    queue(client, {"id": supplier_key.pk, "status": INVALID, "reason": "HTTP 401", "at": time.time() - 60})
    assert apply_key_status_changes(client=client) == 0
    supplier_key.refresh_from_db()
    assert supplier_key.status == "active"
    supplier_key.status = "disabled"
    supplier_key.save()
    queue(client, {"id": supplier_key.pk, "status": INVALID, "reason": "HTTP 401", "at": time.time() + 1})
    assert apply_key_status_changes(client=client) == 0  # a key a person took out stays as they left it
    supplier_key.refresh_from_db()
    assert supplier_key.status == "disabled"
