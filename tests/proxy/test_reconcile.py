"""Reconciliation of the Redis counters with PostgreSQL: quiet when they agree, loud when not."""

from __future__ import annotations

import redis
from django.conf import settings

from apps.proxy import redis_scripts
from apps.proxy.reconcile import reconcile
from tests.proxy.helpers import chat


def test_it_finds_nothing_after_real_traffic(gateway):
    for _ in range(5):
        assert chat(gateway).status_code == 200
    assert reconcile() == []  # some events are still unwritten: counted as in flight
    gateway.drain(expect=5)
    assert reconcile() == []


def test_it_reports_a_drifted_counter(gateway):
    assert chat(gateway).status_code == 200
    gateway.drain(expect=1)
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.incrby(redis_scripts.total_key(gateway.world.token.pk), 1234)
    client.hincrby(redis_scripts.company_key(gateway.world.company.pk), "out", 99)
    found = {d.what: (d.redis_value - d.expected) for d in reconcile()}
    assert found == {f"token {gateway.world.token.pk} total spend": 1234,
                     f"company {gateway.world.company.pk} outstanding spend": 99}
