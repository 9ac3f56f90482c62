"""Test helpers for the supplier keys' shared health (apps/proxy/health.py)."""

from __future__ import annotations

import time

import redis as redis_lib
from django.conf import settings

from apps.providers.key_health import STATUS_QUEUE, VERSION_KEY, read_health


def redis_client() -> redis_lib.Redis:
    return redis_lib.Redis.from_url(settings.REDIS_URL)


def reset_key_health() -> None:
    """Every supplier key healthy and active again, in Redis and the database, and every worker told.

    For tests that make one gateway meet many failures in turn: a 401 disables a key and a 429 rests
    it in every process now, so each case starts from healthy keys. Waits a poll first, so a status
    change still queued is applied before it is undone."""
    from apps.providers.models import SupplierKey, SupplierKeyStatus

    time.sleep(0.3)
    client = redis_client()
    try:
        for key in client.scan_iter("js:keys:*", count=1000):
            client.delete(key)
        for key in SupplierKey.objects.exclude(status=SupplierKeyStatus.ACTIVE):
            key.status, key.status_reason = SupplierKeyStatus.ACTIVE, ""
            key.save()  # bumps the config version: workers reload their routes
        client.incr(VERSION_KEY)
    finally:
        client.close()
    time.sleep(0.5)  # one poll of every worker (0.2 s) and its route reload


def health_of(key_id: int):
    """The key's shared health record, or None."""
    client = redis_client()
    try:
        return read_health(client, [key_id]).get(key_id)
    finally:
        client.close()


def queued_status_changes() -> int:
    client = redis_client()
    try:
        return client.llen(STATUS_QUEUE)
    finally:
        client.close()

