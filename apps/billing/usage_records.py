"""Billing's door for metered usage: ``record_usage_batch`` writes usage records and their ledger
transfers (``apps/billing/usage.py`` defines the event).

``record_usage_batch`` is durable and idempotent by request id: one PostgreSQL transaction per
batch, records ``ON CONFLICT (request_id)`` and transfers ``ON CONFLICT (idempotency_id)``
(``usage:<request id>:sell`` wallet → platform revenue, ``usage:<request id>:buy`` upstream cost
→ supplier payable — or, for a local node of the platform's own, upstream cost → platform hardware), so writing a batch again after a crash is a no-op. The money rules stay the
ledger's: migration 0002's triggers keep the account sums and its CHECK refuses an overdraft.
A batch the database refuses is split in halves until the refused events stand alone; what the
database still refuses on its own is returned (``RecordOutcome.refused``) for the meter writer to
set aside, and everything else lands.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from django.core.exceptions import ObjectDoesNotExist
from django.db import DataError, IntegrityError, ProgrammingError, connection, models, transaction

from apps.billing import services as ledger
from apps.billing.models import Account, AccountKind, TransferKind, UsageStatus
from apps.billing.usage import UsageEvent, _column_rules

logger = logging.getLogger("jetstream.meter")



@dataclass(frozen=True, slots=True)
class RefusedEvent:
    """An event the database refused on its own, even without its charge: ``index`` is its
    position in the batch given, ``error`` the exception's class name (never its message, which
    may quote the values)."""

    index: int
    request_id: str
    error: str


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What ``record_usage_batch`` wrote: the request ids recorded, in the batch's order.

    ``charges_refused`` names the requests recorded without their ledger transfers (flagged
    ``charge_refused_by_ledger``); they are among ``written`` too. ``refused`` lists the events
    the database refused even without their charge (not written; the caller sets them aside).
    """

    written: tuple[str, ...]
    charges_refused: tuple[str, ...] = ()
    refused: tuple[RefusedEvent, ...] = ()


@dataclass(slots=True)
class _Tally:
    written: list[str] = dataclasses.field(default_factory=list)
    charges_refused: list[str] = dataclasses.field(default_factory=list)
    refused: list[RefusedEvent] = dataclasses.field(default_factory=list)


def record_usage_batch(*, events: list[UsageEvent]) -> RecordOutcome:
    """Write one ``UsageRecord`` per event and its sell/buy transfers, all in one transaction.

    Every event is normalised first (``UsageEvent.normalised``); a cost it had to clamp to
    bigint's ceiling is recorded (``usage_clamped``) but not posted — that is no amount anyone
    owes — while the event's other cost is. Idempotent: a request id already
    recorded (or a transfer id already used) is skipped, except that a ``gateway_lost``
    placeholder the sweeper wrote is replaced by the real event.

    If the database refuses the batch (``_refused_by_database``: a data, integrity or cardinality
    error, or an account that does not exist), it is split in halves, and each half written or
    split again, so one refused event costs about 2·log2(batch) small transactions and every
    other event lands. An event refused on its own is written again without its transfers, with
    ``error_code`` ``charge_refused_by_ledger`` and an error in the log (a wallet cannot take the
    charge because the proxy's Redis counters drifted from the ledger) — a usage record is never
    lost for its charge. An event refused even so is left out and returned in
    ``RecordOutcome.refused``, with an error in the log.

    Amounts are the events' micro-RUB ``sell_cost``/``buy_cost``. Raises what is not about the
    events (a lost connection, a missing table) as it comes; the caller retries the whole batch,
    which the conflicts make safe.
    """
    if not events:
        return RecordOutcome(written=())
    tally = _Tally()
    events = [event.normalised() for event in events]
    ceiling = _cost_ceiling()
    for event in events:
        if ceiling in (event.sell_cost, event.buy_cost):
            logger.error("usage event %s: a cost beyond the ledger's range is recorded (usage_clamped) but not posted",
                         event.request_id)
    _write_isolating(list(enumerate(events)), tally, top=True)
    return RecordOutcome(written=tuple(tally.written), charges_refused=tuple(tally.charges_refused),
                         refused=tuple(tally.refused))


CHARGE_REFUSED = "charge_refused_by_ledger"


@functools.cache
def _cost_ceiling() -> int:
    return next(limit[1] for name, _, limit in _column_rules() if name == "sell_cost")


def posted_sell_cost(event: UsageEvent) -> int:
    """The micro-RUB of an event's ``sell_cost`` that billing posts to the company's wallet: the
    cost itself, or 0 for anything but an integer below bigint's ceiling (a cost normalisation
    clamped there is recorded, never posted).

    A cost at that ceiling is no amount anyone owes, and posted it would leave the account's
    running sums no room: every later charge to it would overflow."""
    sell = event.sell_cost
    return sell if type(sell) is int and 0 <= sell < _cost_ceiling() else 0


def _refused_by_database(exc: BaseException) -> bool:
    """Whether ``exc`` is the database (or the driver, or an account lookup) refusing these rows —
    which a smaller batch can isolate — rather than a failure of the database itself (a lost
    connection, a missing table), which must leave the whole batch to be retried."""
    if isinstance(exc, DataError | IntegrityError | ObjectDoesNotExist | UnicodeError):
        return True
    # ON CONFLICT DO UPDATE refuses one statement touching a row twice (SQLSTATE 21000): a
    # sweeper's placeholder and the real event of the same request in one batch.
    return isinstance(exc, ProgrammingError) and getattr(exc.__cause__, "sqlstate", None) == "21000"


def _write_isolating(batch: list[tuple[int, UsageEvent]], tally: _Tally, *, top: bool = False) -> None:
    try:
        _write([event for _, event in batch])
    except Exception as exc:
        if not _refused_by_database(exc):
            raise
        if len(batch) == 1:
            _write_alone(*batch[0], tally)
            return
        if top:
            logger.warning("batch of %d usage events refused by the database (%s); isolating the refused ones",
                           len(batch), type(exc).__name__)
        middle = len(batch) // 2
        _write_isolating(batch[:middle], tally)
        _write_isolating(batch[middle:], tally)
        return
    tally.written.extend(event.request_id for _, event in batch)


def _write_alone(index: int, event: UsageEvent, tally: _Tally) -> None:
    try:
        _write([dataclasses.replace(event, error_code=CHARGE_REFUSED)], charge=False)
    except Exception as exc:
        if not _refused_by_database(exc):
            raise
        # Only the class: the message may quote the values (an upstream's error code, say).
        logger.error("usage event for request %s refused by the database (%s) even without its charge; set aside",
                     event.request_id, type(exc).__name__)
        tally.refused.append(RefusedEvent(index=index, request_id=event.request_id, error=type(exc).__name__))
        return
    # The wallet cannot take this charge (Redis counters drifted from the ledger). The
    # record is kept (never lost) and the charge is left for the operator, loudly.
    logger.error("ledger refused the charge for request %s (company %s, %s micro-RUB); recording usage without it",
                 event.request_id, event.company_id, event.sell_cost)
    tally.written.append(event.request_id)
    tally.charges_refused.append(event.request_id)


class LedgerAccountIds:
    """Ledger account ids for wallets, payables and the platform accounts, per process.

    Each is looked up (and created on first use, through the ledger services) once, then served
    from memory: accounts are never deleted while they carry transfers. Tests that roll the
    database back call ``clear()``.
    """

    def __init__(self) -> None:
        self._wallets: dict[int, int] = {}
        self._payables: dict[int, int] = {}
        self._platform: dict[str, int] = {}

    def wallet(self, company_id: int) -> int:
        """The company's wallet id. Raises the company model's ``DoesNotExist`` for an unknown id."""
        if company_id not in self._wallets:
            self._wallets[company_id] = ledger.company_wallet(_owner("company", company_id)).pk
        return self._wallets[company_id]

    def payable(self, supplier_id: int) -> int:
        """The supplier's payable id. Raises the supplier model's ``DoesNotExist`` for an unknown id."""
        if supplier_id not in self._payables:
            self._payables[supplier_id] = ledger.supplier_payable(_owner("supplier", supplier_id)).pk
        return self._payables[supplier_id]

    def platform(self, kind: str) -> int:
        """The id of the platform account of this ``AccountKind`` (revenue, upstream cost, cash)."""
        if kind not in self._platform:
            self._platform[kind] = ledger.platform_account(kind).pk
        return self._platform[kind]

    def clear(self) -> None:
        """Forget every id (the database they came from was rolled back or flushed)."""
        self._wallets.clear()
        self._payables.clear()
        self._platform.clear()


ledger_accounts = LedgerAccountIds()


def _owner(field: str, pk: int) -> Any:
    # accounts.Company / Supplier through the account's foreign key: billing sits below accounts
    # in the layering and does not import it.
    model = cast("type[models.Model]", Account._meta.get_field(field).related_model)
    return model._default_manager.get(pk=pk)


_RECORD_COLUMNS = (
    ("request_id", "text"), ("token_id", "bigint"), ("company_id", "bigint"), ("department_id", "bigint"),
    ("endpoint", "text"), ("model_name", "text"), ("model_id", "bigint"), ("provider_id", "bigint"),
    ("supplier_key_id", "bigint"), ("node_id", "bigint"), ("price_id", "bigint"), ("fx_rub_per_unit", "bigint"), ("stream", "boolean"),
    ("input_tokens", "integer"), ("output_tokens", "integer"), ("cached_tokens", "integer"),
    ("cache_write_tokens", "integer"), ("images", "integer"),
    ("usage_counted_locally", "boolean"), ("sell_cost", "bigint"), ("buy_cost", "bigint"),
    ("sell_capped", "boolean"), ("sell_cost_uncapped", "bigint"), ("status", "text"),
    ("http_status", "smallint"), ("error_type", "text"), ("error_code", "text"), ("latency_ms", "integer"),
    ("ttft_ms", "integer"), ("client_ip", "inet"), ("started_at", "timestamptz"), ("finished_at", "timestamptz"),
    ("usage_clamped", "boolean"), ("attempts", "jsonb"),
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


def _write(events: list[UsageEvent], *, charge: bool = True) -> None:
    # Accounts first, outside the batch's transaction: one created inside it would vanish with a
    # rolled-back batch while its id stayed in the cache.
    transfers = _transfer_rows(events) if charge else None
    with transaction.atomic(), connection.cursor() as cursor:
        # Django's foreign keys are DEFERRABLE INITIALLY DEFERRED: checked now, an unknown token or
        # company fails this statement (inside a savepoint too) rather than a commit further out.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(_INSERT_RECORDS, _record_rows(events))
        if transfers and transfers[0]:
            cursor.execute(_INSERT_TRANSFERS, transfers)


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _record_rows(events: list[UsageEvent]) -> list[list]:
    columns: list[list] = [[] for _ in _RECORD_COLUMNS]
    for e in events:
        # The events are normalised (record_usage_batch): every value fits its column.
        values = (
            e.request_id, e.token_id, e.company_id, e.department_id, e.endpoint, e.model_name, e.model_id,
            e.provider_id, e.supplier_key_id, e.node_id, e.price_id, e.fx_rub_per_unit, e.stream, e.input_tokens,
            e.output_tokens, e.cached_tokens, e.cache_write_tokens, e.images, e.usage_counted_locally, e.sell_cost,
            e.buy_cost, e.sell_capped, e.sell_cost_uncapped, e.status or UsageStatus.FAILED, e.http_status, e.error_type, e.error_code,
            e.latency_ms, e.ttft_ms, e.client_ip, _ts(e.started_at), _ts(e.finished_at), e.usage_clamped,
            orjson.dumps(e.attempts).decode(),
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def _transfer_rows(events: list[UsageEvent]) -> list[list]:
    ids, debits, credits, amounts, kinds, rids = [], [], [], [], [], []
    ceiling = _cost_ceiling()
    for e in events:
        sell = posted_sell_cost(e)
        if sell and e.company_id:
            ids.append(f"usage:{e.request_id}:sell")
            debits.append(ledger_accounts.wallet(e.company_id))
            credits.append(ledger_accounts.platform(AccountKind.PLATFORM_REVENUE))
            amounts.append(sell)
            kinds.append(TransferKind.USAGE)
            rids.append(e.request_id)
        owed_to = _buy_credit(e)
        if e.buy_cost and owed_to is not None and e.buy_cost != ceiling:  # as posted_sell_cost
            ids.append(f"usage:{e.request_id}:buy")
            debits.append(ledger_accounts.platform(AccountKind.UPSTREAM_COST))
            credits.append(owed_to)
            amounts.append(e.buy_cost)
            kinds.append(TransferKind.USAGE_COST)
            rids.append(e.request_id)
    return [ids, debits, credits, amounts, kinds, rids]


def _buy_credit(event: UsageEvent) -> int | None:
    """The account a request's buy cost is owed to: the supplier's payable (a supplier's key or
    local node); for a local node without a supplier, the platform's hardware account (its own
    hardware's cost, which no one is paid); None for nothing to accrue (the mock)."""
    if event.supplier_id:
        return ledger_accounts.payable(event.supplier_id)
    if event.node_id:
        return ledger_accounts.platform(AccountKind.PLATFORM_HARDWARE)
    return None
