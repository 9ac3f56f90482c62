"""The meter writer: the usage stream in Redis → billing's door (UsageRecord rows and ledger transfers).

Durable and idempotent by request id:
* the proxy appends each request's event to ``js:usage`` before its response ends;
* the writer reads through a consumer group, hands a batch to
  ``apps.billing.usage.record_usage_batch`` (ONE PostgreSQL transaction; records
  ``ON CONFLICT (request_id)``, transfers ``ON CONFLICT (idempotency_id)``), and only after the
  commit acknowledges the entries — in the same Redis step that lowers the
  companies' outstanding spend (redis_scripts.ACK). A writer killed at any point leaves its entries
  pending; the next writer (or itself on restart) reclaims and rewrites them, and the
  conflicts make the rewrite a no-op.
* the same loop sweeps expired reservations (a proxy that died mid-request) into failed records.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import cast

import redis
from django.conf import settings
from django.db import connection

from apps.billing.usage import MalformedUsageEvent, UsageEvent, record_usage_batch
from apps.billing.wallets import wallet_sums

from . import redis_scripts

logger = logging.getLogger("jetstream.meter")

GROUP = "meter"
RECLAIM_IDLE_MS = 15_000


@dataclass(slots=True)
class StreamEntry:
    """One decoded entry of ``js:usage``: its stream id (for the ACK) and its usage event."""

    stream_id: bytes
    event: UsageEvent


def sync_company_funds(company_ids: list[int] | None, *, client: redis.Redis | None = None) -> None:
    """Merge ledger changes made outside usage (top-ups, corrections, credit limits) into the
    proxy's Redis counters (max-merge: a stale read can never roll them back).

    ``company_ids`` None means every company with a wallet. Amounts are micro-RUB. Raises
    ``redis.RedisError`` when Redis cannot be reached."""
    own = client is None
    client = client or redis.Redis.from_url(settings.REDIS_URL)
    try:
        sums = wallet_sums(company_ids)
        script = client.register_script(redis_scripts.SYNC_FUNDS)
        for company, (cr, db, lim) in sums.items():
            script(keys=[redis_scripts.company_key(company)], args=[cr, db, lim])
    finally:
        if own:
            client.close()


class MeterWriter:
    """Drains ``js:usage`` through the consumer group ``meter`` into billing, one batch at a time.

    ``batch_size`` entries per read, ``block_ms`` milliseconds of blocking read, ``consumer`` its
    name in the group (default host-pid), ``reclaim_idle_ms`` how long another consumer's entry
    may stay unacknowledged before this one takes it over (that consumer died).
    """

    def __init__(self, *, batch_size: int = 1000, block_ms: int = 100, consumer: str | None = None,
                 reclaim_idle_ms: int = RECLAIM_IDLE_MS) -> None:
        self.reclaim_idle_ms = reclaim_idle_ms
        self.redis = redis.Redis.from_url(settings.REDIS_URL)
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._ack = self.redis.register_script(redis_scripts.ACK)
        self._sweep = self.redis.register_script(redis_scripts.SWEEP)
        self._last_sweep = 0.0
        self._last_reclaim = 0.0
        self._last_sync = 0.0
        self.written = 0

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing; an existing group is kept."""
        try:
            # From the start of the stream: events appended before the first writer ever ran count too.
            self.redis.xgroup_create(redis_scripts.STREAM_KEY, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _decode(self, entries) -> list[StreamEntry]:
        decoded = []
        for stream_id, fields in entries:
            if not fields:  # deleted while pending
                self.redis.xack(redis_scripts.STREAM_KEY, GROUP, stream_id)
                continue
            try:
                decoded.append(StreamEntry(stream_id, UsageEvent.decode(fields[b"e"])))
            except (KeyError, MalformedUsageEvent):
                logger.error("malformed usage event %s dropped: %r", stream_id, fields)
                self.redis.xack(redis_scripts.STREAM_KEY, GROUP, stream_id)
        return decoded

    def process(self, entries: list[StreamEntry]) -> int:
        """Write the entries through billing's door, then acknowledge them and lower the
        companies' outstanding spend in one Redis step (``redis_scripts.ACK``); return how many.

        Raises what the write raises (the entries stay pending and are retried)."""
        if not entries:
            return 0
        record_usage_batch(events=[entry.event for entry in entries])  # writes every event or raises
        sums = wallet_sums(list({e.event.company_id for e in entries if e.event.company_id}))
        companies = list(sums)
        position = {company: index for index, company in enumerate(companies, start=1)}
        args: list = [GROUP, len(companies)]
        for company in companies:
            args += sums[company]
        for entry in entries:
            args += [position.get(entry.event.company_id or 0, 0), entry.event.sell_cost or 0, entry.stream_id]
        self._ack(keys=[redis_scripts.STREAM_KEY, *(redis_scripts.company_key(c) for c in companies)], args=args)
        self.written += len(entries)
        return len(entries)

    def housekeeping(self, now: float) -> None:
        """Every second sweep expired reservations; every 5 s reclaim dead consumers' entries and
        merge the ledger's wallet sums into Redis. ``now`` is Unix seconds."""
        if now - self._last_sweep >= 1.0:
            self._last_sweep = now
            self._sweep(keys=[redis_scripts.RESERVATIONS_KEY, redis_scripts.STREAM_KEY], args=[int(now), 500])
        if now - self._last_reclaim >= 5.0:
            self._last_reclaim = now
            # Redis 6.2 answers [cursor, entries]; 7.x adds the ids of deleted entries.
            reply = self.redis.xautoclaim(redis_scripts.STREAM_KEY, GROUP, self.consumer, self.reclaim_idle_ms, "0-0",
                                          count=self.batch_size)
            self.process(self._decode(reply[1]))
        if now - self._last_sync >= 5.0:
            self._last_sync = now
            self.sync_funds()

    def sync_funds(self) -> None:
        """Merge every wallet's ledger sums into the Redis counters (``sync_company_funds``)."""
        sync_company_funds(None, client=self.redis)

    def run_once(self, *, pending_first: bool = False) -> int:
        """Read one batch (this consumer's own pending entries first if asked), write it, do the
        housekeeping; return how many entries were written."""
        start = "0" if pending_first else ">"
        response = cast(list, self.redis.xreadgroup(GROUP, self.consumer, {redis_scripts.STREAM_KEY: start},
                                                     count=self.batch_size, block=None if pending_first else self.block_ms))
        count = 0
        for _, entries in response or []:
            count += self.process(self._decode(entries))
        self.housekeeping(time.time())
        return count

    def run(self, *, stop_after: float | None = None) -> None:
        """Loop until stopped (or for ``stop_after`` seconds); Redis outages and failed batches are
        logged and retried after 1 s, never dropped."""
        self.ensure_group()
        # Entries this consumer took before a restart and never acknowledged come first.
        while self.run_once(pending_first=True):
            pass
        deadline = time.monotonic() + stop_after if stop_after else None
        while deadline is None or time.monotonic() < deadline:
            try:
                self.run_once()
            except (redis.ConnectionError, redis.TimeoutError):
                logger.exception("Redis unavailable; retrying in 1 s")
                time.sleep(1)
            except Exception:
                # The entries stay pending and are retried; never spin hot on a poison batch.
                logger.exception("meter batch failed; retrying in 1 s")
                connection.close()
                time.sleep(1)
