"""The supplier-key balancer end to end: real gateways (two "processes" sharing Redis where it
matters), a real PostgreSQL, the official openai SDK, and a fake upstream that answers each key
on its own account (tests/fakes/keyed_upstream.py)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from decimal import Decimal

import openai
import pytest
import redis as redis_lib
from django.conf import settings
from django.test import override_settings

from apps.billing.models import UsageRecord
from apps.providers.key_health import CLOSED, EXHAUSTED, HALF_OPEN, INVALID, OPEN
from apps.providers.models import SupplierKey, SupplierKeyStatus
from apps.proxy.snapshot import VERSION_KEY
from tests.fakes import keyed_upstream
from tests.fakes.keyed_upstream import KEY_A, KEY_B, KEY_C
from tests.fakes.openai_upstream import openai_error
from tests.proxy.conftest import Gateway, ServerThread, build_world, flush_gateway_keys, free_port
from tests.proxy.helpers import expected_cost
from tests.proxy.keyhealth import health_of, queued_status_changes

keyed_fake_server = keyed_upstream.keyed_fake_server  # fixtures
keyed_fake = keyed_upstream.keyed_fake

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def world(transactional_db, keyed_fake):
    """The shared world with its two keys on their own secrets: A (priority 0, weight 2), B (priority 1)."""
    flush_gateway_keys()
    world = build_world(keyed_fake)
    for key, secret in ((world.key, KEY_A), (world.key2, KEY_B)):
        key.set_secret(secret)
        key.save()
    yield world
    flush_gateway_keys()


@pytest.fixture
def gateways(world):
    """Start gateways (each its own ProxyApp: Redis connection, snapshots, balancer — a process of
    its own but for the address space) with these ``settings.JETSTREAM`` values."""
    from apps.proxy.pipeline.app import ProxyApp
    from jetstream.asgi import build_application

    servers: list[ServerThread] = []

    def start(**jetstream) -> Gateway:
        with override_settings(JETSTREAM={**settings.JETSTREAM, **jetstream}):
            app = ProxyApp()
        server = ServerThread(build_application(app), free_port()).__enter__()
        servers.append(server)
        gateway = Gateway(world, server)
        gateway.app = app
        return gateway

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def ask(gateway: Gateway, **extra):
    return gateway.client().chat.completions.create(**CHAT, **extra)


def records() -> list[UsageRecord]:
    return list(UsageRecord.objects.order_by("started_at"))


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
    return value


def add_key(world, secret: str, *, name: str, weight: int = 1, priority: int = 0) -> SupplierKey:
    key = SupplierKey(supplier=world.supplier, provider=world.provider, name=name, weight=weight, priority=priority,
                      buy_coefficient=Decimal("1.10"))
    key.set_secret(secret)
    key.save()
    return key


# ------------------------------------------------------------------ order


def test_it_spreads_calls_over_a_priority_exactly_by_weight(world, gateways, keyed_fake):
    world.key.weight = 3
    world.key.save()
    world.key2.priority, world.key2.weight = 0, 2
    world.key2.save()
    add_key(world, KEY_C, name="nk-3", weight=1)
    gateway = gateways()
    for _ in range(12):
        ask(gateway)
    # Smooth weighted round-robin: exact shares, and spread out (never three of A in a row).
    assert keyed_fake.key_counts() == Counter({KEY_A: 6, KEY_B: 4, KEY_C: 2})
    assert keyed_fake.keys_used()[:6] == [KEY_A, KEY_B, KEY_A, KEY_C, KEY_B, KEY_A]
    gateway.drain(expect=12)
    by_key = Counter(r.supplier_key_id for r in records())
    assert by_key == Counter({world.key.pk: 6, world.key2.pk: 4, SupplierKey.objects.get(name="nk-3").pk: 2})


def test_a_lower_priority_serves_only_when_the_first_fails_and_the_record_lists_the_attempts(world, gateways, keyed_fake):
    gateway = gateways()
    for _ in range(4):
        ask(gateway)
    assert keyed_fake.keys_used() == [KEY_A] * 4
    keyed_fake.key_behavior(KEY_A, status=500, fail_times=1)
    answer = ask(gateway)
    assert answer.choices[0].message.content
    assert keyed_fake.keys_used()[4:] == [KEY_A, KEY_B]
    gateway.drain(expect=5)
    record = records()[-1]
    assert (record.status, record.supplier_key_id) == ("ok", world.key2.pk)
    assert [(a["key"], a["status"], a["code"]) for a in record.attempts] == [
        (world.key.pk, 502, "upstream_error"), (world.key2.pk, 200, "")]
    assert all(isinstance(a["ms"], int) and a["ms"] >= 0 for a in record.attempts)
    # The money is the answering key's: tokens as the upstream reported, the company's price, the supplier paid.
    assert (record.input_tokens, record.output_tokens) == (answer.usage.prompt_tokens, answer.usage.completion_tokens)
    assert record.sell_cost == expected_cost(answer.usage.prompt_tokens, answer.usage.completion_tokens) > 0
    assert record.buy_cost > 0
    assert [a["key"] for a in records()[0].attempts] == [world.key.pk]


# ------------------------------------------------------------------ 429: shared cooldown


def test_a_key_rate_limited_in_one_process_is_not_used_by_a_second(world, gateways, keyed_fake):
    first, second = gateways(), gateways()
    keyed_fake.key_behavior(KEY_A, status=429, fail_times=1, error_headers={"Retry-After": "30"})
    chunks = list(ask(first, stream=True))  # streaming: the failover happens before the first byte
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert keyed_fake.keys_used() == [KEY_A, KEY_B]
    health = health_of(world.key.pk)
    assert health.code == "upstream_rate_limited" and 29 <= health.cool_until - time.time() <= 30.5
    time.sleep(0.5)  # the second process's poll (0.2 s) reads the health version
    for _ in range(3):
        ask(second)
    assert keyed_fake.keys_used()[2:] == [KEY_B] * 3  # the second process never tried the resting key
    gateway_records = second.drain(expect=4)
    assert gateway_records == 4
    assert [[a["key"] for a in r.attempts] for r in records()[1:]] == [[world.key2.pk]] * 3


def test_retry_after_ms_is_honoured_to_the_millisecond_and_then_the_key_serves_again(world, gateways, keyed_fake):
    gateway = gateways()
    keyed_fake.key_behavior(KEY_A, status=429, fail_times=1, error_headers={"retry-after-ms": "2500", "Retry-After": "60"})
    ask(gateway)
    health = health_of(world.key.pk)
    assert 2.3 <= health.cool_until - health.at <= 2.5  # retry-after-ms wins over the coarser Retry-After
    ask(gateway)
    assert keyed_fake.keys_used() == [KEY_A, KEY_B, KEY_B]
    time.sleep(2.6)
    ask(gateway)
    assert keyed_fake.keys_used()[-1] == KEY_A


def test_a_retry_after_http_date_is_honoured(world, gateways, keyed_fake):
    from email.utils import formatdate

    gateway = gateways()
    keyed_fake.key_behavior(KEY_A, status=429, fail_times=1, error_headers={"Retry-After": formatdate(time.time() + 20, usegmt=True)})
    ask(gateway)
    health = health_of(world.key.pk)
    assert 18 <= health.cool_until - time.time() <= 21


def test_every_key_resting_is_503_with_retry_after_and_no_upstream_call(world, gateways, keyed_fake):
    gateway = gateways()
    keyed_fake.behavior(status=429, error_headers={"Retry-After": "40"})
    with pytest.raises(openai.RateLimitError):
        ask(gateway)
    assert len(keyed_fake.requests) == 2
    with pytest.raises(openai.InternalServerError) as refused:
        ask(gateway)
    assert refused.value.status_code == 503 and refused.value.code == "no_upstream_key"
    assert 38 <= int(refused.value.response.headers["retry-after"]) <= 40
    assert len(keyed_fake.requests) == 2


# ------------------------------------------------------------------ 401/403, 402: out until a person says so


def test_a_refused_key_is_disabled_in_the_database_with_the_reason_and_dropped_everywhere(world, gateways, keyed_fake):
    first, second = gateways(), gateways()
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    version = int(client.get(VERSION_KEY) or 0)
    keyed_fake.key_behavior(KEY_A, status=401, error_body=openai_error(f"Incorrect API key provided: {KEY_A}.",
                                                                        code="invalid_api_key"))
    ask(first)
    assert keyed_fake.keys_used() == [KEY_A, KEY_B]
    key = wait_for(lambda: SupplierKey.objects.filter(pk=world.key.pk, status=SupplierKeyStatus.INVALID).first())
    assert key.status_reason.startswith("HTTP 401: Incorrect API key provided") and KEY_A not in key.status_reason
    assert wait_for(lambda: int(client.get(VERSION_KEY)) > version)  # every worker reloads its routes without the key (the bump follows the commit)
    assert queued_status_changes() == 0
    assert health_of(world.key.pk).state == INVALID
    time.sleep(0.5)
    for gateway in (first, second, first):
        ask(gateway)
    assert keyed_fake.keys_used()[2:] == [KEY_B] * 3
    client.close()


def test_a_key_re_enabled_by_a_person_serves_again(world, gateways, keyed_fake, client):
    from django.contrib.auth import get_user_model

    gateway = gateways()
    keyed_fake.key_behavior(KEY_A, status=403, fail_times=1)
    ask(gateway)
    wait_for(lambda: SupplierKey.objects.filter(pk=world.key.pk, status=SupplierKeyStatus.INVALID).exists())
    admin = get_user_model().objects.create_superuser("root@example.com", "pw-root-1234567")
    client.force_login(admin)
    key = SupplierKey.objects.get(pk=world.key.pk)
    time.sleep(1.1)  # the admin reads every key's health at most once a second
    listing = client.get("/admin/providers/supplierkey/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "disabled by the proxy" in listing and "upstream_auth_failed" in listing
    form = {"supplier": key.supplier_id, "provider": key.provider_id, "name": key.name, "secret": "", "weight": key.weight,
            "priority": key.priority, "status": "active", "status_reason": "", "buy_coefficient": "1.10"}
    response = client.post(f"/admin/providers/supplierkey/{key.pk}/change/", form)
    assert response.status_code == 302
    assert health_of(world.key.pk) is None
    time.sleep(0.5)
    ask(gateway)
    assert keyed_fake.keys_used()[-1] == KEY_A


@pytest.mark.parametrize("status, body", [
    (402, openai_error("Insufficient Balance", type="unknown_error", code="invalid_request_error")),
    (429, openai_error("You exceeded your current quota, please check your plan and billing details.",
                       type="insufficient_quota", code="insufficient_quota")),
], ids=["402", "insufficient_quota"])
def test_an_account_out_of_funds_parks_the_key(world, gateways, keyed_fake, status, body):
    gateway = gateways()
    keyed_fake.key_behavior(KEY_A, status=status, error_body=body)
    ask(gateway)
    key = wait_for(lambda: SupplierKey.objects.filter(pk=world.key.pk, status=SupplierKeyStatus.EXHAUSTED).first())
    assert key.status_reason.startswith(f"HTTP {status}:")
    assert health_of(world.key.pk).state == EXHAUSTED
    time.sleep(0.5)
    ask(gateway)
    assert keyed_fake.keys_used() == [KEY_A, KEY_B, KEY_B]


# ------------------------------------------------------------------ the circuit breaker

BREAKER = {"BREAKER_FAILURES": 2, "BREAKER_CLOSE_AFTER": 2, "BREAKER_COOLOFF_SECONDS": 1}


def test_the_breaker_opens_after_n_failures_probes_when_half_open_and_closes_after_m(world, gateways, keyed_fake):
    SupplierKey.objects.filter(pk=world.key2.pk).update(status=SupplierKeyStatus.DISABLED)  # one key: A
    gateway = gateways(**BREAKER)
    keyed_fake.key_behavior(KEY_A, status=500)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as failed:
            ask(gateway)
        assert failed.value.status_code == 502
    assert health_of(world.key.pk).state == OPEN
    with pytest.raises(openai.InternalServerError) as refused:
        ask(gateway)
    assert refused.value.status_code == 503 and refused.value.response.headers["retry-after"] == "1"
    assert len(keyed_fake.requests) == 2  # an open breaker lets nothing through
    time.sleep(1.1)
    keyed_fake.reset()
    ask(gateway)  # the probe
    assert health_of(world.key.pk).state == HALF_OPEN
    ask(gateway)
    health = health_of(world.key.pk)
    assert (health.state, health.failures) == (CLOSED, 0)
    assert health.code == "upstream_error" and "HTTP 500" in health.error  # the last error stays visible
    assert len(keyed_fake.requests) == 2


def test_a_failed_probe_opens_the_breaker_again(world, gateways, keyed_fake):
    SupplierKey.objects.filter(pk=world.key2.pk).update(status=SupplierKeyStatus.DISABLED)
    gateway = gateways(**BREAKER)
    keyed_fake.key_behavior(KEY_A, status=503)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            ask(gateway)
    opened = health_of(world.key.pk).open_until
    time.sleep(1.1)
    with pytest.raises(openai.InternalServerError):
        ask(gateway)  # the probe fails
    health = health_of(world.key.pk)
    assert health.state == OPEN and health.open_until > opened
    assert len(keyed_fake.requests) == 3


def test_a_half_open_key_admits_one_probe_at_a_time_across_processes(world, gateways, keyed_fake):
    SupplierKey.objects.filter(pk=world.key2.pk).update(status=SupplierKeyStatus.DISABLED)
    first, second = gateways(**BREAKER), gateways(**BREAKER)
    keyed_fake.key_behavior(KEY_A, status=500)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            ask(first)
    time.sleep(1.2)  # cool-off over; the second process has seen the open breaker
    keyed_fake.reset()
    keyed_fake.behavior(latency_ms=2000)  # every request of the burst arrives while the probe runs

    async def burst():
        clients = [gateway.async_client() for gateway in (first, second, first, second)]
        try:
            return await asyncio.gather(*(c.chat.completions.create(**CHAT) for c in clients), return_exceptions=True)
        finally:
            for c in clients:
                await c.close()

    outcomes = asyncio.run(burst())
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, openai.APIStatusError)]
    assert len(answered) == 1 and len(refused) == 3 and {r.status_code for r in refused} == {503}
    assert len(keyed_fake.requests) == 1


# ------------------------------------------------------------------ cheap when healthy


def test_the_healthy_path_makes_no_redis_call_of_its_own(world, gateways, keyed_fake):
    gateway = gateways()
    app = gateway.app
    ask(gateway)  # warm: counters seeded, routes loaded
    # A key that failed once and recovered is healthy too: its success is not reported again.
    keyed_fake.key_behavior(KEY_A, status=500, fail_times=1)
    ask(gateway)
    time.sleep(5.2)  # COOLDOWN_SERVER_ERROR: key A is first again in this worker
    ask(gateway)
    assert health_of(world.key.pk).failures == 0  # that success was reported (once): the count is reset
    time.sleep(0.5)  # the worker's poll reads the new health version
    commands: list[tuple] = []
    execute = app.redis.execute

    async def counting(*args):
        commands.append(args)
        return await execute(*args)

    app.redis.execute = counting
    try:
        for _ in range(10):
            ask(gateway)
    finally:
        app.redis.execute = execute
    assert keyed_fake.keys_used()[-10:] == [KEY_A] * 10
    per_request = [c for c in commands if c[0] != "MGET"]  # MGET: the config poll, per worker and not per request
    assert Counter(c[0] for c in per_request) == Counter({"EVALSHA": 20})  # reserve + settle, nothing else
    assert {c[1] for c in per_request} == {app.counters._reserve, app.counters._settle}
