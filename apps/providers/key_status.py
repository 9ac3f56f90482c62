"""Supplier-key status changes the proxy decided on, written to the database off the hot path.

When a provider refuses a key (401/403) or its account is out of quota or money (402,
``insufficient_quota``), the proxy marks the key in the shared health records at once (every
worker stops using it within a poll) and queues the change in the Redis list
``key_health.STATUS_QUEUE``. ``apply_key_status_changes`` drains that list into
``SupplierKey.status`` / ``status_reason``; the proxy's snapshot loader thread calls it when its
poll sees the queue non-empty. Saving the key bumps the config version (``apps/proxy/signals.py``),
so every worker reloads its routes without the key.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson
import redis
from django.conf import settings
from django.db import transaction

from apps.providers.key_health import EXHAUSTED, INVALID, STATUS_QUEUE
from apps.providers.models import SupplierKey, SupplierKeyStatus

logger = logging.getLogger("jetstream.providers")

_STATUSES = {INVALID: SupplierKeyStatus.INVALID, EXHAUSTED: SupplierKeyStatus.EXHAUSTED}
_BATCH = 100


def apply_key_status_changes(*, client: redis.Redis | None = None) -> int:
    """Write the queued status changes to their keys; returns how many keys changed.

    A change applies only to a key that is still ``active`` and was not saved after the failure
    (a person who re-enabled it meanwhile has the last word); the reason is the provider's
    answer as the proxy recorded it (already scrubbed), cut to the column. Entries are taken off
    the queue before they are written; if the database fails they are put back and the error is
    raised. Raises ``redis.RedisError`` and database errors.
    """
    own = client is None
    client = client or redis.Redis.from_url(settings.REDIS_URL)
    changed = 0
    try:
        while True:
            entries = client.lpop(STATUS_QUEUE, _BATCH)
            if not entries:
                return changed
            try:
                changed += sum(_apply(entry) for entry in entries)
            except Exception:
                client.lpush(STATUS_QUEUE, *reversed(entries))
                raise
    finally:
        if own:
            client.close()


def _apply(raw: bytes) -> bool:
    try:
        change = orjson.loads(raw)
        key_id, status, at = int(change["id"]), _STATUSES[change["status"]], float(change["at"])
        reason = str(change.get("reason") or "")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        logger.error("a supplier-key status change that is not one was dropped from %s", STATUS_QUEUE)
        return False
    failed_at = datetime.fromtimestamp(at, UTC)
    with transaction.atomic():
        # Lock: an admin saving the same key at this moment.
        key = SupplierKey.objects.select_for_update().filter(pk=key_id).first()
        if key is None or key.status != SupplierKeyStatus.ACTIVE or key.updated_at > failed_at:
            return False
        key.status = status
        key.status_reason = reason[: SupplierKey._meta.get_field("status_reason").max_length or 300]
        # ``updated_at`` stays the person's last save: the key's health record keeps telling why it is out
        # (``KeyHealth.parked`` compares the failure's time with it). The save still bumps the config version.
        key.save(update_fields=["status", "status_reason"])
    logger.warning("supplier key %s set %s by the proxy: %s", key_id, status, key.status_reason)
    return True
