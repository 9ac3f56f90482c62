"""Metered usage: the usage event's one definition, and billing's door for writing it.

The proxy makes one ``UsageEvent`` per inference request, whatever its fate, and appends its
encoding to the Redis stream ``js:usage`` (inside the same Lua step that settles the request's
money). The meter writer decodes entries and hands them to ``record_usage_batch``, the only code
that writes ``billing_usagerecord`` rows and the ledger transfers for usage.

Units: token counts in tokens; ``sell_cost``/``buy_cost`` and ``fx_rub_per_unit`` in integer
micro-rubles; ``latency_ms``/``ttft_ms`` in milliseconds; ``started_at``/``finished_at`` in Unix
seconds (float). ``status`` is a ``UsageStatus`` value.

Every event is normalised to what its ``UsageRecord`` columns can hold (``UsageEvent.normalised``)
where it is made (``encode``), where it is read back (``decode``: old or foreign stream entries)
and at the door: text without NUL or lone surrogates, cut to the column's ``max_length``; counts,
costs and the HTTP status clamped to their column's integer range (the record is then flagged
``usage_clamped``); an address PostgreSQL's ``inet`` refuses dropped; a time that is not a real
Unix time replaced by now. One request's odd value can so never stop the meter.

``record_usage_batch`` is durable and idempotent by request id: one PostgreSQL transaction per
batch, records ``ON CONFLICT (request_id)`` and transfers ``ON CONFLICT (idempotency_id)``
(``usage:<request id>:sell`` wallet → platform revenue, ``usage:<request id>:buy`` upstream cost
→ supplier payable), so writing a batch again after a crash is a no-op. The money rules stay the
ledger's: migration 0002's triggers keep the account sums and its CHECK refuses an overdraft.
A batch the database refuses is split in halves until the refused events stand alone; what the
database still refuses on its own is returned (``RecordOutcome.refused``) for the meter writer to
set aside, and everything else lands.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import logging
import math
import re
import time
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from django.core.exceptions import ObjectDoesNotExist
from django.db import DataError, IntegrityError, ProgrammingError, connection, models, transaction

from apps.billing import services as ledger
from apps.billing.models import Account, AccountKind, TransferKind, UsageRecord, UsageStatus

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
    usage_clamped: bool = False  # a count, cost, status or time was out of its column's range (see normalised)

    def encode(self) -> bytes:
        """The event, normalised (``normalised``), as the JSON object stored in the stream entry's ``e`` field.

        The hot path (twice per proxied request): when every value already fits its column
        (``_fits``, cheap checks) the event is written as it is; otherwise it is normalised first. ``decode`` normalises again on the writer's side."""
        if self.usage_clamped is False and _fits(self):
            try:
                return orjson.dumps(self)
            except TypeError:  # orjson.JSONEncodeError: a value JSON cannot carry (lone surrogate, huge int)
                pass
        return orjson.dumps(self.normalised())

    def normalised(self) -> UsageEvent:
        """This event with every value made one its ``UsageRecord`` column accepts (idempotent).

        * text (``request_id``, ``endpoint``, ``model_name``, ``status``, ``error_type``,
          ``error_code``): NUL and lone surrogates — which PostgreSQL text refuses — become U+FFFD,
          then the string is cut to the column's ``max_length``; a number becomes its digits and
          any other non-string "" (not flagged: nothing the bill depends on);
        * counts and costs (tokens, ``latency_ms``, ``ttft_ms``, ``http_status``,
          ``fx_rub_per_unit``, ``sell_cost``/``buy_cost`` in micro-RUB): clamped to the column's
          integer range (int32 ≥ 0, smallint ≥ 0, bigint; costs ≥ 0 by the table's CHECK); a
          non-integer becomes 0 (None where the column allows it);
        * ids: an id outside bigint or not an integer becomes None;
        * ``started_at``/``finished_at`` (Unix seconds): not finite or outside 1970…9999 → now;
        * ``client_ip``: not an address PostgreSQL's ``inet`` takes → None (an IPv6 zone is dropped).

        A clamped count, cost or status, or a replaced time, sets ``usage_clamped`` (the raw values
        go to the log at WARNING with the request id), so an operator can filter such records.
        """
        values: dict[str, Any] = {}
        clamped: dict[str, Any] = {}
        for name, kind, limit in _column_rules():
            raw = getattr(self, name)
            # The fast path, for what nearly every event holds: this runs twice per proxied request.
            if kind == "text" and type(raw) is str and len(raw) <= limit and raw.isascii() and "\x00" not in raw:
                values[name] = raw
                continue
            if kind in _INTEGER_KINDS and type(raw) is int and limit[0] <= raw <= limit[1]:
                values[name] = raw
                continue
            if raw is None and kind in _NULLABLE_KINDS:
                values[name] = None
                continue
            value, flagged = _NORMALISERS[kind](raw, limit)
            values[name] = value
            if flagged:
                clamped[name] = raw
        if values["started_at"] is None:
            values["started_at"], clamped["started_at"] = time.time(), None
        if values["finished_at"] is None:  # never set: the request ended when it started
            values["finished_at"] = values["started_at"]
        values["stream"] = self.stream is True or self.stream == 1
        values["usage_counted_locally"] = self.usage_counted_locally is True or self.usage_counted_locally == 1
        if clamped:
            logger.warning("usage event %s: %s out of its column's range; clamped and flagged usage_clamped",
                           values["request_id"], ", ".join(f"{k}={_loggable(v)}" for k, v in clamped.items()))
        values["usage_clamped"] = bool(clamped) or self.usage_clamped is True
        return UsageEvent(**values)

    @classmethod
    def decode(cls, raw: bytes | str) -> UsageEvent:
        """An event from its stream encoding (also the pre-1.1 short-key form), normalised
        (``normalised``: an entry written by an older or foreign proxy is made writable too).

        Raises ``MalformedUsageEvent`` for anything that is not an event object: not JSON, not an
        object, no non-empty string ``request_id``, no numeric ``started_at``."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = _lenient_json(raw)
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
            return cls(**known).normalised()
        except TypeError as exc:
            raise MalformedUsageEvent(str(exc)) from None


_FIELD_NAMES = frozenset(f.name for f in fields(UsageEvent))


def _lenient_json(raw: bytes | str) -> Any:
    # What orjson refuses but another writer may have put in the stream — NaN or Infinity, a lone
    # surrogate escape, invalid UTF-8 — the standard library reads; normalisation then fixes it.
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedUsageEvent(f"not JSON: {type(exc).__name__}") from None

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


# --- normalisation: what each column accepts -------------------------------------------------

# NUL is refused by PostgreSQL text; a lone surrogate cannot be encoded as UTF-8 at all.
_REFUSED_IN_TEXT = re.compile("[\x00\ud800-\udfff]")
# datetime (and so the driver) handles years 1…9999; before 1970 no request was ever made.
_LATEST_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
# Event fields that are no UsageRecord column: the supplier's id picks the payable to credit.
_NOT_COLUMNS = {"supplier_id": "BigAutoField"}


@functools.cache
def _column_rules() -> tuple[tuple[str, str, Any], ...]:
    """(event field, normaliser kind, its limit) for every event field but the booleans, read once
    from UsageRecord's fields and the database's integer ranges: the one place the limits live."""
    rules: list[tuple[str, str, Any]] = []
    for event_field in fields(UsageEvent):
        name = event_field.name
        if name in ("stream", "usage_counted_locally", "usage_clamped"):
            continue
        if name in ("started_at", "finished_at"):
            rules.append((name, "time", None))
            continue
        if name == "client_ip":
            rules.append((name, "ip", None))
            continue
        if name in _NOT_COLUMNS:
            low, high = connection.ops.integer_field_range(_NOT_COLUMNS[name])
            rules.append((name, "id", (max(low, 1), high)))
            continue
        # Every event field but the above is a concrete column (no reverse relation, no generic key).
        column = cast(models.Field, UsageRecord._meta.get_field(name))
        if isinstance(column, models.CharField):
            rules.append((name, "text", column.max_length))
        elif isinstance(column, models.ForeignKey):
            low, high = connection.ops.integer_field_range(column.target_field.get_internal_type())
            rules.append((name, "id", (max(low, 1), high)))
        else:
            low, high = connection.ops.integer_field_range(column.get_internal_type())
            if name in ("sell_cost", "buy_cost"):
                low = 0  # the table's CHECK usage_costs_non_negative
            rules.append((name, "nullable_int" if column.null else "int", (low, high)))
    return tuple(rules)


def _loggable(value: Any) -> str:
    # Numbers as they came (a huge integer by its size: Python refuses to print past 4300 digits);
    # anything else by its type only — a string in an id field could be anything, a secret too.
    if type(value) is int:
        return repr(value) if value.bit_length() <= 128 else f"<int of {value.bit_length()} bits>"
    return repr(value) if type(value) is float or value is None else f"<{type(value).__name__}>"


def _text(value: Any, max_length: int) -> tuple[str, bool]:
    if type(value) is not str:
        # A str subclass (a UsageStatus) as its plain value; a number as its digits.
        value = str.__str__(value) if isinstance(value, str) else _loggable(value) if type(value) in (int, float) else ""
    if _REFUSED_IN_TEXT.search(value):
        value = _REFUSED_IN_TEXT.sub("\ufffd", value)
    return value[:max_length], False


def _integer(value: Any, bounds: tuple[int, int], default: int | None) -> tuple[int | None, bool]:
    if value is None:
        return default, False
    if type(value) is float and math.isfinite(value) and value == int(value):
        value = int(value)
    if type(value) is not int:  # bool, str, NaN, a list…: nothing the column could take
        return default, True
    low, high = bounds
    if value < low:
        return low, True
    if value > high:
        return high, True
    return value, False


def _count(value: Any, bounds: tuple[int, int]) -> tuple[int | None, bool]:
    return _integer(value, bounds, 0)


def _nullable_count(value: Any, bounds: tuple[int, int]) -> tuple[int | None, bool]:
    return _integer(value, bounds, None)


def _id(value: Any, bounds: tuple[int, int]) -> tuple[int | None, bool]:
    # An id clamped to the range would point at another row: an id out of range is no id.
    number, flagged = _integer(value, bounds, None)
    return (None, True) if flagged else (number, False)


def _time(value: Any, _: None) -> tuple[float | None, bool]:
    if value is None:
        return None, False
    if type(value) in (int, float) and 0 <= value <= _LATEST_TIME:  # NaN fails both comparisons
        return value, False
    return time.time(), True


def _ip(value: Any, _: None) -> tuple[str | None, bool]:
    return (_address(value) if isinstance(value, str) else None), False


@functools.lru_cache(maxsize=4096)  # clients come back: parse each address once
def _address(value: str) -> str | None:
    try:
        # inet takes no IPv6 zone ("fe80::1%eth0"); the address without it is still the client's.
        return str(ipaddress.ip_address(value.partition("%")[0]))
    except ValueError:
        return None


_INTEGER_KINDS = frozenset({"int", "nullable_int", "id"})
def _fits(event: UsageEvent) -> bool:
    """Whether every value of ``event`` already fits its column, by cheap type and range checks
    (what ``normalised`` would keep as it is): the proxy's events nearly always do."""
    for name, kind, limit in _column_rules():
        raw = getattr(event, name)
        if kind == "text":
            if not (type(raw) is str and len(raw) <= limit and raw.isascii() and "\x00" not in raw):
                return False
        elif kind in _INTEGER_KINDS:
            if not ((type(raw) is int and limit[0] <= raw <= limit[1]) or (raw is None and kind in _NULLABLE_KINDS)):
                return False
        elif kind == "time":
            if not (type(raw) is float and 0.0 <= raw <= _LATEST_TIME):
                return False
        elif kind == "ip":
            if raw is not None and not (type(raw) is str and len(raw) <= 45 and raw.isascii() and "\x00" not in raw):
                return False
        else:
            return False
    return type(event.stream) is bool and type(event.usage_counted_locally) is bool

_NULLABLE_KINDS = frozenset({"nullable_int", "id", "ip"})
_NORMALISERS: dict[str, Any] = {"text": _text, "int": _count, "nullable_int": _nullable_count, "id": _id, "time": _time,
                                "ip": _ip}


# --- billing's door: writing a batch of events -----------------------------------------------

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
    ("supplier_key_id", "bigint"), ("price_id", "bigint"), ("fx_rub_per_unit", "bigint"), ("stream", "boolean"),
    ("input_tokens", "integer"), ("output_tokens", "integer"), ("cached_tokens", "integer"),
    ("usage_counted_locally", "boolean"), ("sell_cost", "bigint"), ("buy_cost", "bigint"), ("status", "text"),
    ("http_status", "smallint"), ("error_type", "text"), ("error_code", "text"), ("latency_ms", "integer"),
    ("ttft_ms", "integer"), ("client_ip", "inet"), ("started_at", "timestamptz"), ("finished_at", "timestamptz"),
    ("usage_clamped", "boolean"),
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
            e.provider_id, e.supplier_key_id, e.price_id, e.fx_rub_per_unit, e.stream, e.input_tokens,
            e.output_tokens, e.cached_tokens, e.usage_counted_locally, e.sell_cost, e.buy_cost,
            e.status or UsageStatus.FAILED, e.http_status, e.error_type, e.error_code,
            e.latency_ms, e.ttft_ms, e.client_ip, _ts(e.started_at), _ts(e.finished_at), e.usage_clamped,
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
        if e.buy_cost and e.supplier_id and e.buy_cost != ceiling:  # as posted_sell_cost
            ids.append(f"usage:{e.request_id}:buy")
            debits.append(ledger_accounts.platform(AccountKind.UPSTREAM_COST))
            credits.append(ledger_accounts.payable(e.supplier_id))
            amounts.append(e.buy_cost)
            kinds.append(TransferKind.USAGE_COST)
            rids.append(e.request_id)
    return [ids, debits, credits, amounts, kinds, rids]
