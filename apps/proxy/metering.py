"""The meter writer: the usage stream in Redis → UsageRecord rows and ledger transfers.

Durable and idempotent by request id:
* the proxy appends each request's event to ``js:usage`` before its response ends;
* the writer reads through a consumer group, writes a batch in ONE PostgreSQL transaction
  (records ``ON CONFLICT (request_id)``; transfers ``ON CONFLICT (idempotency_id)``), and only
  after the commit acknowledges the entries — in the same Redis step that lowers the
  companies' outstanding spend (redis_scripts.ACK). A writer killed at any point leaves its entries
  pending; the next writer (or itself on restart) reclaims and rewrites them, and the
  conflicts make the rewrite a no-op.
* the same loop sweeps expired reservations (a proxy that died mid-request) into failed records.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from django.conf import settings
from django.db import IntegrityError, connection, transaction

from apps.billing.usage import MalformedUsageEvent, UsageEvent

from . import redis_scripts

logger = logging.getLogger("jetstream.meter")

GROUP = "meter"
RECLAIM_IDLE_MS = 15_000

_RECORD_COLUMNS = (
    ("request_id", "text"), ("token_id", "bigint"), ("company_id", "bigint"), ("department_id", "bigint"),
    ("endpoint", "text"), ("model_name", "text"), ("model_id", "bigint"), ("provider_id", "bigint"),
    ("supplier_key_id", "bigint"), ("price_id", "bigint"), ("fx_rub_per_unit", "bigint"), ("stream", "boolean"),
    ("input_tokens", "integer"), ("output_tokens", "integer"), ("cached_tokens", "integer"),
    ("usage_counted_locally", "boolean"), ("sell_cost", "bigint"), ("buy_cost", "bigint"), ("status", "text"),
    ("http_status", "smallint"), ("error_type", "text"), ("error_code", "text"), ("latency_ms", "integer"),
    ("ttft_ms", "integer"), ("client_ip", "inet"), ("started_at", "timestamptz"), ("finished_at", "timestamptz"),
)
_INSERT_RECORDS = f"""
INSERT INTO billing_usagerecord ({", ".join(c for c, _ in _RECORD_COLUMNS)}, recorded_at)
SELECT *, now() FROM unnest({", ".join(f"%s::{t}[]" for _, t in _RECORD_COLUMNS)})
ON CONFLICT (request_id) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c, _ in _RECORD_COLUMNS if c != "request_id")}, recorded_at = now()
    -- only a placeholder the sweeper wrote for a request it thought lost may be replaced
    WHERE billing_usagerecord.error_code = 'gateway_lost' AND EXCLUDED.error_code <> 'gateway_lost'
"""
_INSERT_TRANSFERS = """
INSERT INTO billing_transfer (idempotency_id, debit_account_id, credit_account_id, amount, status, kind,
                              description, metadata, created_at)
SELECT i, d, c, a, 'posted', k, '', jsonb_build_object('request_id', r), now()
FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::text[], %s::text[]) AS t(i, d, c, a, k, r)
ON CONFLICT (idempotency_id) DO NOTHING
"""


@dataclass(slots=True)
class Event:
    stream_id: bytes
    data: UsageEvent


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


class AccountCache:
    """Ledger account ids for wallets, payables and the platform accounts (created on first use)."""

    def __init__(self) -> None:
        self._wallets: dict[int, int] = {}
        self._payables: dict[int, int] = {}
        self._platform: dict[str, int] = {}

    def wallet(self, company_id: int) -> int:
        if company_id not in self._wallets:
            from apps.accounts.models import Company
            from apps.billing import services as ledger

            self._wallets[company_id] = ledger.company_wallet(Company.objects.get(pk=company_id)).pk
        return self._wallets[company_id]

    def payable(self, supplier_id: int) -> int:
        if supplier_id not in self._payables:
            from apps.accounts.models import Supplier
            from apps.billing import services as ledger

            self._payables[supplier_id] = ledger.supplier_payable(Supplier.objects.get(pk=supplier_id)).pk
        return self._payables[supplier_id]

    def platform(self, kind: str) -> int:
        if kind not in self._platform:
            from apps.billing import services as ledger

            self._platform[kind] = ledger.platform_account(kind).pk
        return self._platform[kind]


def _record_rows(events: list[Event]) -> list[list]:
    columns: list[list] = [[] for _ in _RECORD_COLUMNS]
    for event in events:
        e = event.data
        values = (
            e.request_id, e.token_id, e.company_id, e.department_id, e.endpoint or "", (e.model_name or "")[:128], e.model_id,
            e.provider_id, e.supplier_key_id, e.price_id, e.fx_rub_per_unit, bool(e.stream), e.input_tokens or 0,
            e.output_tokens or 0, e.cached_tokens or 0, bool(e.usage_counted_locally), e.sell_cost or 0, e.buy_cost or 0,
            e.status or "failed", e.http_status or 0, (e.error_type or "")[:64], (e.error_code or "")[:64], e.latency_ms or 0,
            e.ttft_ms, e.client_ip, _ts(e.started_at), _ts(e.finished_at or e.started_at),
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def _transfer_rows(events: list[Event], accounts: AccountCache) -> list[list]:
    from apps.billing.models import AccountKind, TransferKind

    ids, debits, credits, amounts, kinds, rids = [], [], [], [], [], []
    for event in events:
        e = event.data
        if e.sell_cost and e.company_id:
            ids.append(f"usage:{e.request_id}:sell")
            debits.append(accounts.wallet(e.company_id))
            credits.append(accounts.platform(AccountKind.PLATFORM_REVENUE))
            amounts.append(e.sell_cost)
            kinds.append(TransferKind.USAGE)
            rids.append(e.request_id)
        if e.buy_cost and e.supplier_id:
            ids.append(f"usage:{e.request_id}:buy")
            debits.append(accounts.platform(AccountKind.UPSTREAM_COST))
            credits.append(accounts.payable(e.supplier_id))
            amounts.append(e.buy_cost)
            kinds.append(TransferKind.USAGE_COST)
            rids.append(e.request_id)
    return [ids, debits, credits, amounts, kinds, rids]


def write_batch(events: list[Event], accounts: AccountCache) -> None:
    """One transaction for the whole batch; on a ledger refusal, event by event."""
    # Accounts first, outside the batch's transaction: one created inside it would vanish with a
    # rolled-back batch while its id stayed in the cache.
    transfers = _transfer_rows(events, accounts)
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_INSERT_RECORDS, _record_rows(events))
            if transfers[0]:
                cursor.execute(_INSERT_TRANSFERS, transfers)
        return
    except IntegrityError:
        if len(events) == 1:
            raise
        logger.warning("batch of %d usage events refused by the ledger; writing them one by one", len(events))
    for event in events:
        try:
            write_batch([event], accounts)
        except IntegrityError:
            # The wallet cannot take this charge (Redis counters drifted from the ledger). The
            # record is kept (never lost) and the charge is left for the operator, loudly.
            logger.error("ledger refused the charge for request %s (company %s, %s micro-RUB); recording usage without it",
                         event.data.request_id, event.data.company_id, event.data.sell_cost)
            with transaction.atomic(), connection.cursor() as cursor:
                data = dataclasses.replace(event.data, error_code="charge_refused_by_ledger")
                cursor.execute(_INSERT_RECORDS, _record_rows([Event(event.stream_id, data)]))


def company_sums(company_ids: list[int]) -> dict[int, tuple[int, int, int]]:
    """Wallet (posted credits, posted debits, credit limit − open holds) read after a commit."""
    from apps.billing.models import Account, AccountKind

    rows = Account.objects.filter(kind=AccountKind.COMPANY_WALLET, company_id__in=company_ids).values_list(
        "company_id", "posted_credits", "posted_debits", "credit_limit", "pending_debits")
    return {c: (cr, db, lim - pend) for c, cr, db, lim, pend in rows}


def sync_company_funds(company_ids: list[int] | None, *, client: redis.Redis | None = None) -> None:
    """Merge ledger changes made outside usage (top-ups, corrections, credit limits) into the
    proxy's Redis counters (max-merge: a stale read can never roll them back)."""
    from apps.billing.models import Account, AccountKind

    own = client is None
    client = client or redis.Redis.from_url(settings.REDIS_URL)
    try:
        if company_ids is None:
            company_ids = list(Account.objects.filter(kind=AccountKind.COMPANY_WALLET).values_list("company_id", flat=True))
        script = client.register_script(redis_scripts.SYNC_FUNDS)
        for company, (cr, db, lim) in company_sums(company_ids).items():
            script(keys=[redis_scripts.company_key(company)], args=[cr, db, lim])
    finally:
        if own:
            client.close()


class MeterWriter:
    def __init__(self, *, batch_size: int = 1000, block_ms: int = 100, consumer: str | None = None,
                 reclaim_idle_ms: int = RECLAIM_IDLE_MS) -> None:
        self.reclaim_idle_ms = reclaim_idle_ms
        self.redis = redis.Redis.from_url(settings.REDIS_URL)
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.accounts = AccountCache()
        self._ack = self.redis.register_script(redis_scripts.ACK)
        self._sweep = self.redis.register_script(redis_scripts.SWEEP)
        self._last_sweep = 0.0
        self._last_reclaim = 0.0
        self._last_sync = 0.0
        self.written = 0

    def ensure_group(self) -> None:
        try:
            # From the start of the stream: events appended before the first writer ever ran count too.
            self.redis.xgroup_create(redis_scripts.STREAM_KEY, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _decode(self, entries) -> list[Event]:
        events = []
        for stream_id, fields in entries:
            if not fields:  # deleted while pending
                self.redis.xack(redis_scripts.STREAM_KEY, GROUP, stream_id)
                continue
            try:
                events.append(Event(stream_id, UsageEvent.decode(fields[b"e"])))
            except (KeyError, MalformedUsageEvent):
                logger.error("malformed usage event %s dropped: %r", stream_id, fields)
                self.redis.xack(redis_scripts.STREAM_KEY, GROUP, stream_id)
        return events

    def process(self, events: list[Event]) -> int:
        if not events:
            return 0
        write_batch(events, self.accounts)
        sums = company_sums(list({e.data.company_id for e in events if e.data.company_id}))
        companies = list(sums)
        position = {company: index for index, company in enumerate(companies, start=1)}
        args: list = [GROUP, len(companies)]
        for company in companies:
            args += sums[company]
        for event in events:
            args += [position.get(event.data.company_id, 0), event.data.sell_cost or 0, event.stream_id]
        self._ack(keys=[redis_scripts.STREAM_KEY, *(redis_scripts.company_key(c) for c in companies)], args=args)
        self.written += len(events)
        return len(events)

    def housekeeping(self, now: float) -> None:
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
        sync_company_funds(None, client=self.redis)

    def run_once(self, *, pending_first: bool = False) -> int:
        start = "0" if pending_first else ">"
        response = self.redis.xreadgroup(GROUP, self.consumer, {redis_scripts.STREAM_KEY: start}, count=self.batch_size,
                                         block=None if pending_first else self.block_ms)
        count = 0
        for _, entries in response or []:
            count += self.process(self._decode(entries))
        self.housekeeping(time.time())
        return count

    def run(self, *, stop_after: float | None = None) -> None:
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
