"""Metered usage: the usage event's one definition, and billing's door for writing it.

The proxy makes one ``UsageEvent`` per inference request, whatever its fate, and appends its
encoding to the Redis stream ``js:usage`` (inside the same Lua step that settles the request's
money). The meter writer decodes entries and hands them to ``record_usage_batch``, the only code
that writes ``billing_usagerecord`` rows and the ledger transfers for usage.

Units: token counts in tokens; ``sell_cost``/``buy_cost`` and ``fx_rub_per_unit`` in integer
micro-rubles; ``latency_ms``/``ttft_ms`` in milliseconds; ``started_at``/``finished_at`` in Unix
seconds (float). ``status`` is a ``UsageStatus`` value.

``record_usage_batch`` is durable and idempotent by request id: one PostgreSQL transaction per
batch, records ``ON CONFLICT (request_id)`` and transfers ``ON CONFLICT (idempotency_id)``
(``usage:<request id>:sell`` wallet → platform revenue, ``usage:<request id>:buy`` upstream cost
→ supplier payable), so writing a batch again after a crash is a no-op. The money rules stay the
ledger's: migration 0002's triggers keep the account sums and its CHECK refuses an overdraft.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from django.db import IntegrityError, connection, models, transaction

from apps.billing import services as ledger
from apps.billing.models import Account, AccountKind, TransferKind, UsageStatus

logger = logging.getLogger("jetstream.meter")


class MalformedUsageEvent(ValueError):
    """A stream entry that is not a usage event (not JSON, not an object, no request id)."""


@dataclass(slots=True)
class UsageEvent:
    """One request's usage, as the proxy records it and ``UsageRecord`` stores it (same names)."""

    request_id: str
    endpoint: str
    status: str  # a UsageStatus value
    http_status: int
    started_at: float  # Unix seconds
    finished_at: float  # Unix seconds
    token_id: int | None = None
    company_id: int | None = None
    department_id: int | None = None
    model_name: str = ""  # the public model name the client asked for
    model_id: int | None = None
    provider_id: int | None = None
    supplier_key_id: int | None = None
    supplier_id: int | None = None
    price_id: int | None = None
    fx_rub_per_unit: int | None = None  # micro-RUB per unit of the price's currency
    stream: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    usage_counted_locally: bool = False
    sell_cost: int = 0  # micro-RUB the company pays
    buy_cost: int = 0  # micro-RUB the platform owes the supplier
    error_type: str = ""
    error_code: str = ""
    latency_ms: int = 0
    ttft_ms: int | None = None
    client_ip: str | None = None

    def encode(self) -> bytes:
        """The event as the JSON object stored in the stream entry's ``e`` field."""
        return orjson.dumps(self)

    @classmethod
    def decode(cls, raw: bytes | str) -> UsageEvent:
        """An event from its stream encoding (also the pre-1.1 short-key form).

        Raises ``MalformedUsageEvent`` for anything that is not an event object."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedUsageEvent(f"not JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise MalformedUsageEvent("not a JSON object")
        if "rid" in obj:
            obj = _from_short_keys(obj)
        if not isinstance(obj.get("request_id"), str) or not obj["request_id"]:
            raise MalformedUsageEvent("no request_id")
        known = {k: v for k, v in obj.items() if k in _FIELD_NAMES}
        known.setdefault("endpoint", "")
        known.setdefault("status", UsageStatus.FAILED)
        known.setdefault("http_status", 0)
        started = known.get("started_at")
        if not isinstance(started, int | float):
            raise MalformedUsageEvent("no started_at")
        known.setdefault("finished_at", started)
        try:
            return cls(**known)
        except TypeError as exc:
            raise MalformedUsageEvent(str(exc)) from None


_FIELD_NAMES = frozenset(f.name for f in fields(UsageEvent))

# The stream's first encoding (short keys); entries written before an upgrade still decode.
_SHORT_KEYS = {
    "rid": "request_id", "ep": "endpoint", "tok": "token_id", "co": "company_id", "dp": "department_id",
    "mn": "model_name", "m": "model_id", "pv": "provider_id", "k": "supplier_key_id", "sup": "supplier_id",
    "pr": "price_id", "fx": "fx_rub_per_unit", "st": "stream", "it": "input_tokens", "ot": "output_tokens",
    "ct": "cached_tokens", "loc": "usage_counted_locally", "sell": "sell_cost", "buy": "buy_cost", "status": "status",
    "http": "http_status", "et": "error_type", "ec": "error_code", "lat": "latency_ms", "ttft": "ttft_ms",
    "ip": "client_ip", "t0": "started_at", "t1": "finished_at",
}


def _from_short_keys(obj: dict[str, Any]) -> dict[str, Any]:
    return {_SHORT_KEYS[k]: v for k, v in obj.items() if k in _SHORT_KEYS and v is not None}


# --- billing's door: writing a batch of events -----------------------------------------------

@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What ``record_usage_batch`` wrote: every event's record, so every request id given.

    ``charges_refused`` names the requests recorded without their ledger transfers (flagged
    ``charge_refused_by_ledger``); they are among ``written`` too.
    """

    written: tuple[str, ...]
    charges_refused: tuple[str, ...] = ()


def record_usage_batch(*, events: list[UsageEvent]) -> RecordOutcome:
    """Write one ``UsageRecord`` per event and its sell/buy transfers, all in one transaction.

    Idempotent: a request id already recorded (or a transfer id already used) is skipped, except
    that a ``gateway_lost`` placeholder the sweeper wrote is replaced by the real event. If the
    ledger refuses the batch (``IntegrityError``: a wallet cannot take a charge because the
    proxy's Redis counters drifted from the ledger), the events are written one by one and an
    event whose charge is refused is still recorded, without its transfers, with ``error_code``
    ``charge_refused_by_ledger`` and an error in the log — a usage record is never lost.

    Amounts are the events' micro-RUB ``sell_cost``/``buy_cost``. Raises ``IntegrityError`` only
    when even the bare record cannot be written, and database errors as they come; the caller
    retries the whole batch, which the conflicts make safe.
    """
    if not events:
        return RecordOutcome(written=())
    written = tuple(event.request_id for event in events)
    try:
        _write(events)
        return RecordOutcome(written=written)
    except IntegrityError:
        if len(events) > 1:
            logger.warning("batch of %d usage events refused by the ledger; writing them one by one", len(events))
    refused: list[str] = []
    for event in events:
        if len(events) > 1:
            try:
                _write([event])
                continue
            except IntegrityError:
                pass
        # The wallet cannot take this charge (Redis counters drifted from the ledger). The
        # record is kept (never lost) and the charge is left for the operator, loudly.
        logger.error("ledger refused the charge for request %s (company %s, %s micro-RUB); recording usage without it",
                     event.request_id, event.company_id, event.sell_cost)
        _write([dataclasses.replace(event, error_code="charge_refused_by_ledger")], charge=False)
        refused.append(event.request_id)
    return RecordOutcome(written=written, charges_refused=tuple(refused))


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


def _write(events: list[UsageEvent], *, charge: bool = True) -> None:
    # Accounts first, outside the batch's transaction: one created inside it would vanish with a
    # rolled-back batch while its id stayed in the cache.
    transfers = _transfer_rows(events) if charge else None
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_INSERT_RECORDS, _record_rows(events))
        if transfers and transfers[0]:
            cursor.execute(_INSERT_TRANSFERS, transfers)


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _record_rows(events: list[UsageEvent]) -> list[list]:
    columns: list[list] = [[] for _ in _RECORD_COLUMNS]
    for e in events:
        values = (
            e.request_id, e.token_id, e.company_id, e.department_id, e.endpoint or "", (e.model_name or "")[:128], e.model_id,
            e.provider_id, e.supplier_key_id, e.price_id, e.fx_rub_per_unit, bool(e.stream), e.input_tokens or 0,
            e.output_tokens or 0, e.cached_tokens or 0, bool(e.usage_counted_locally), e.sell_cost or 0, e.buy_cost or 0,
            e.status or UsageStatus.FAILED, e.http_status or 0, (e.error_type or "")[:64], (e.error_code or "")[:64],
            e.latency_ms or 0, e.ttft_ms, e.client_ip, _ts(e.started_at), _ts(e.finished_at or e.started_at),
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def _transfer_rows(events: list[UsageEvent]) -> list[list]:
    ids, debits, credits, amounts, kinds, rids = [], [], [], [], [], []
    for e in events:
        if e.sell_cost and e.company_id:
            ids.append(f"usage:{e.request_id}:sell")
            debits.append(ledger_accounts.wallet(e.company_id))
            credits.append(ledger_accounts.platform(AccountKind.PLATFORM_REVENUE))
            amounts.append(e.sell_cost)
            kinds.append(TransferKind.USAGE)
            rids.append(e.request_id)
        if e.buy_cost and e.supplier_id:
            ids.append(f"usage:{e.request_id}:buy")
            debits.append(ledger_accounts.platform(AccountKind.UPSTREAM_COST))
            credits.append(ledger_accounts.payable(e.supplier_id))
            amounts.append(e.buy_cost)
            kinds.append(TransferKind.USAGE_COST)
            rids.append(e.request_id)
    return [ids, debits, credits, amounts, kinds, rids]
