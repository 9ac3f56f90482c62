"""Metered usage: the usage event's one definition (billing's door for writing it is
``apps/billing/usage_records.py``).

The proxy makes one ``UsageEvent`` per inference request, whatever its fate, and appends its
encoding to the Redis stream ``js:usage`` (inside the same Lua step that settles the request's
money). The meter writer decodes entries and hands them to ``usage_records.record_usage_batch``, the only code
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
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from django.db import connection, models

from apps.billing.models import UsageRecord, UsageStatus

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
    node_id: int | None = None  # the local node that served the request (apps.providers.models.LocalNode)
    price_id: int | None = None
    fx_rub_per_unit: int | None = None  # micro-RUB per unit of the price's currency
    stream: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # of input_tokens, written to the provider's prompt cache
    images: int = 0  # images in the request (priced per image where the price version has one)
    usage_counted_locally: bool = False
    sell_cost: int = 0  # micro-RUB the company pays
    buy_cost: int = 0  # micro-RUB the platform owes the supplier (a local node: its hardware cost)
    # The sell cost was above the reservation and capped at it (sell_cost); sell_cost_uncapped is
    # what it would have been (micro-RUB; 0 when not capped). The buy cost is never capped.
    sell_capped: bool = False
    sell_cost_uncapped: int = 0
    error_type: str = ""
    error_code: str = ""
    latency_ms: int = 0
    ttft_ms: int | None = None
    client_ip: str | None = None
    usage_clamped: bool = False  # a count, cost, status or time was out of its column's range (see normalised)
    # The upstream tries, in order: [{"key": supplier key id, "status": the gateway's HTTP status for
    # the try (200 = answered), "code": its error code ("" = none), "ms": milliseconds}, plus "node":
    # the local node's id for a node's try (key None)] (see normalised).
    attempts: list[dict[str, Any]] = field(default_factory=list)

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
        * ``client_ip``: not an address PostgreSQL's ``inet`` takes → None (an IPv6 zone is dropped);
        * ``attempts``: a list of at most ``MAX_ATTEMPTS_RECORDED`` objects with exactly ``key`` (an
          id or None), ``status`` (0…999), ``code`` (text, 64 characters) and ``ms`` (int32 ≥ 0),
          and ``node`` (a local node's id) for a node's try;
          anything else in it is dropped or made so (not flagged: nothing the bill depends on).

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
        # A cap is a fact about two costs: a flag without a larger uncapped cost (or the reverse) is no cap.
        capped = (self.sell_capped is True or self.sell_capped == 1) and values["sell_cost_uncapped"] > values["sell_cost"]
        values["sell_capped"] = capped
        if not capped:
            values["sell_cost_uncapped"] = 0
        # Cache writes are part of the input, beside the cached part (what the cost formula assumes).
        values["cache_write_tokens"] = min(values["cache_write_tokens"], max(0, values["input_tokens"] - values["cached_tokens"]))
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
_BOOLEANS = ("stream", "usage_counted_locally", "usage_clamped", "sell_capped")


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
        if name in _BOOLEANS:
            continue
        if name in ("started_at", "finished_at"):
            rules.append((name, "time", None))
            continue
        if name == "client_ip":
            rules.append((name, "ip", None))
            continue
        if name == "attempts":
            rules.append((name, "attempts", MAX_ATTEMPTS_RECORDED))
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
            if name in ("sell_cost", "buy_cost", "sell_cost_uncapped"):
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

# Upstream tries kept per record: the proxy makes at most 3 (upstream.MAX_ATTEMPTS) plus skipped probes.
MAX_ATTEMPTS_RECORDED = 10
_ATTEMPT_CODE_LENGTH = 64
_INT32 = 2**31 - 1
_BIGINT = 2**63 - 1


def _attempt_fits(item: Any) -> bool:
    if type(item) is dict and len(item) == 5:  # a local node's try names the node too
        if not (type(item.get("node")) is int and 0 < item["node"] <= _BIGINT):
            return False
    elif not (type(item) is dict and len(item) == 4):
        return False
    return ((item.get("key") is None or (type(item["key"]) is int and 0 < item["key"] <= _BIGINT))
            and type(item.get("status")) is int and 0 <= item["status"] <= 999
            and type(item.get("code")) is str and len(item["code"]) <= _ATTEMPT_CODE_LENGTH and item["code"].isascii()
            and "\x00" not in item["code"] and type(item.get("ms")) is int and 0 <= item["ms"] <= _INT32)


def _attempts(value: Any, limit: int) -> tuple[list[dict[str, Any]], bool]:
    if type(value) is not list:
        return [], False
    kept: list[dict[str, Any]] = []
    for item in value[:limit]:
        if type(item) is not dict:
            continue
        if _attempt_fits(item):
            kept.append(item)
            continue
        attempt = {"key": _id(item.get("key"), (1, _BIGINT))[0], "status": _count(item.get("status"), (0, 999))[0],
                   "code": _text(item.get("code"), _ATTEMPT_CODE_LENGTH)[0], "ms": _count(item.get("ms"), (0, _INT32))[0]}
        node = _id(item.get("node"), (1, _BIGINT))[0]
        if node is not None:
            attempt["node"] = node
        kept.append(attempt)
    return kept, False


def _fits(event: UsageEvent) -> bool:
    """Whether every value of ``event`` already fits its column, by cheap type and range checks
    (what ``normalised`` would keep as it is): the proxy's events nearly always do."""
    for name, kind, limit in _column_rules():
        raw = getattr(event, name)
        if kind == "text":
            if not (isinstance(raw, str) and len(raw) <= limit and raw.isascii() and "\x00" not in raw):
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
        elif kind == "attempts":
            if not (type(raw) is list and len(raw) <= limit and all(_attempt_fits(item) for item in raw)):
                return False
        else:
            return False
    return (type(event.stream) is bool and type(event.usage_counted_locally) is bool and type(event.sell_capped) is bool
            and (event.sell_cost_uncapped > event.sell_cost if event.sell_capped else event.sell_cost_uncapped == 0)
            and event.cache_write_tokens <= event.input_tokens - event.cached_tokens)


_NULLABLE_KINDS = frozenset({"nullable_int", "id", "ip"})
_NORMALISERS: dict[str, Any] = {"text": _text, "int": _count, "nullable_int": _nullable_count, "id": _id, "time": _time,
                                "ip": _ip, "attempts": _attempts}
