"""The meter writer: the usage stream in Redis → billing's door (UsageRecord rows and ledger transfers).

Durable and idempotent by request id:
* the proxy appends each request's event to ``js:usage`` before its response ends;
* the writer reads through a consumer group, hands a batch to
  ``apps.billing.usage_records.record_usage_batch`` (ONE PostgreSQL transaction; records
  ``ON CONFLICT (request_id)``, transfers ``ON CONFLICT (idempotency_id)``), and only after the
  commit acknowledges the entries — in the same Redis step that lowers the
  companies' outstanding spend (redis_scripts.ACK). A writer killed at any point leaves its entries
  pending; the next writer (or itself on restart) reclaims and rewrites them, and the
  conflicts make the rewrite a no-op.
* the same loop sweeps expired reservations (a proxy that died mid-request) into failed records.

One bad entry never stops the meter. Events are normalised to what their columns hold where they
are made and again when read (``UsageEvent.normalised``); a batch the database still refuses is
split until the refused events stand alone (``record_usage_batch``), and an entry that is not an
event, or an event the database refuses on its own, is set aside: copied as it was into the
dead-letter stream ``js:usage:dead`` (with the error's class name and the original entry id),
acknowledged on ``js:usage`` and counted in ``js:metrics:usage_dead_letter`` — one Redis
transaction — and logged at ERROR. Everything else lands.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from django.conf import settings
from django.db import connection

from apps.billing.usage import MalformedUsageEvent, UsageEvent
from apps.billing.usage_records import posted_sell_cost, record_usage_batch
from apps.billing.wallets import wallet_sums
from apps.moderation.reports import write_report_batch

from . import redis_scripts

logger = logging.getLogger("jetstream.meter")

GROUP = "meter"
RECLAIM_IDLE_MS = 15_000
# Entries set aside: the raw fields of the js:usage entry plus ``dead_error`` (the exception's class
# name, never its message) and ``dead_source_id`` (the entry's id in js:usage). Trimmed to about
# DEAD_LETTER_MAXLEN entries so a flood cannot fill Redis; DEAD_LETTER_METRIC keeps counting.
DEAD_LETTER_KEY = "js:usage:dead"
DEAD_LETTER_MAXLEN = 100_000
# The number of entries ever set aside (an integer string; alert when it grows).
DEAD_LETTER_METRIC = "js:metrics:usage_dead_letter"


@dataclass(slots=True)
class StreamEntry:
    """One decoded entry of ``js:usage``: its stream id (for the ACK), its usage event and the
    entry's raw fields (what the dead-letter stream keeps if the database refuses the event)."""

    stream_id: bytes
    event: UsageEvent
    fields: dict[bytes, bytes] = field(default_factory=dict)


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


def _set_aside(pipe: redis.client.Pipeline, stream_id: bytes, fields: dict[bytes, bytes], *, error: str) -> None:
    """Queue on ``pipe`` the copy of one ``js:usage`` entry into the dead-letter stream (its raw
    fields, the error's class name, its id) and the metric's increment."""
    entry: dict[Any, Any] = {**fields, b"dead_error": error, b"dead_source_id": stream_id}
    pipe.xadd(DEAD_LETTER_KEY, entry, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
    pipe.incr(DEAD_LETTER_METRIC)


class MeterWriter:
    """Drains ``js:usage`` through the consumer group ``meter`` into billing, one batch at a time;
    sets aside (``DEAD_LETTER_KEY``) what cannot be written. ``written`` and ``dead_lettered``
    count entries since it started.

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
        self.dead_lettered = 0

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
                decoded.append(StreamEntry(stream_id, UsageEvent.decode(fields[b"e"]), fields))
            except (KeyError, MalformedUsageEvent) as exc:
                # Not an event at all: nothing to write or to lower `out` by; kept for the operator.
                pipe = self.redis.pipeline(transaction=True)
                _set_aside(pipe, stream_id, fields, error=type(exc).__name__)
                pipe.xack(redis_scripts.STREAM_KEY, GROUP, stream_id)
                pipe.execute()
                self._report_set_aside(stream_id, "?", type(exc).__name__)
        return decoded

    def _report_set_aside(self, stream_id: bytes, request_id: str, error: str) -> None:
        self.dead_lettered += 1
        logger.error("usage entry %s (request %s) set aside in %s: %s", stream_id.decode(), request_id,
                     DEAD_LETTER_KEY, error)

    def process(self, entries: list[StreamEntry]) -> int:
        """Write the entries through billing's door, then acknowledge them and lower the
        companies' outstanding spend in one Redis step (``redis_scripts.ACK``); return how many
        entries were handled (written, or set aside because the database refused them).

        An event the database refuses on its own is copied to ``DEAD_LETTER_KEY`` and counted in
        ``DEAD_LETTER_METRIC`` in the same Redis transaction as the acknowledgement; its charge
        (micro-RUB) leaves ``out`` like any acknowledged entry's, as a refused charge does, and
        stays in the dead-letter copy for the operator. Raises what the write raises when it is
        not about the events (the entries stay pending and are retried)."""
        if not entries:
            return 0
        outcome = record_usage_batch(events=[entry.event for entry in entries])  # every event written or refused
        sums = wallet_sums(list({e.event.company_id for e in entries if e.event.company_id}))
        companies = list(sums)
        position = {company: index for index, company in enumerate(companies, start=1)}
        args: list = [GROUP, len(companies)]
        for company in companies:
            args += sums[company]
        for entry in entries:
            # What billing posts is what leaves `out` (not an absurd cost clamped to bigint's ceiling,
            # which no proxy counted and which would overflow the counter).
            args += [position.get(entry.event.company_id or 0, 0), posted_sell_cost(entry.event), entry.stream_id]
        keys = [redis_scripts.STREAM_KEY, *(redis_scripts.company_key(c) for c in companies)]
        if outcome.refused:
            # One transaction (MULTI): a writer that dies before it leaves every entry pending and
            # nothing set aside; after it, every entry is acknowledged and each refused one copied once.
            pipe = self.redis.pipeline(transaction=True)
            for refused in outcome.refused:
                _set_aside(pipe, entries[refused.index].stream_id, entries[refused.index].fields, error=refused.error)
            self._ack(keys=keys, args=args, client=pipe)
            pipe.execute()
            for refused in outcome.refused:
                self._report_set_aside(entries[refused.index].stream_id, refused.request_id, refused.error)
        else:
            self._ack(keys=keys, args=args)
        self.written += len(entries) - len(outcome.refused)
        return len(entries)

    def housekeeping(self, now: float) -> None:
        """Every second sweep expired reservations and write the moderation reports; every 5 s reclaim dead consumers' entries and
        merge the ledger's wallet sums into Redis. ``now`` is Unix seconds."""
        if now - self._last_sweep >= 1.0:
            self._last_sweep = now
            self._sweep(keys=[redis_scripts.RESERVATIONS_KEY, redis_scripts.STREAM_KEY], args=[int(now), 500])
            write_report_batch(self.redis)  # the moderation stage's reports (apps/moderation/reports.py)
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
