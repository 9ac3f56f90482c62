"""Reports for the superadmin: spend by company / department / token / model / day, supplier
earnings, the platform's margin, and a month-end forecast from the run rate.

Every figure is one aggregate SQL query (``GROUP BY`` in PostgreSQL; nothing iterates usage rows
in Python), over a half-open period ``[start, end)`` of ``UsageRecord.started_at`` (usage) or
``Transfer.created_at`` (ledger). Amounts are integer micro-RUB; ``margin = sell − buy`` per row,
summed, so it is exact. Ledger-side figures are read from posted transfers (``usage:<request>:sell``
wallet → platform revenue, ``usage:<request>:buy`` upstream cost → supplier payable, see
``usage_records.py``), so a report can show both what usage says and what the ledger booked.

Month-end forecast (``forecast``), per company in its time zone::

    forecast = spent_to_date × month_seconds ÷ elapsed_seconds      (rounded down, micro-RUB)

where ``spent_to_date`` is Σ sell_cost since the month's first midnight, ``elapsed_seconds`` the
time since then and ``month_seconds`` the month's length: the month-to-date run rate extended to
the whole month. Before any time has passed the forecast is what is spent.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Coalesce, TruncDate

from apps.billing.models import AccountKind, Transfer, TransferKind, TransferStatus, UsageRecord
from apps.billing.rollups import usage_sums, zones_in_use

# Billing imports only lib (docs/architecture.md): companies, suppliers, tokens and models are
# reached through the usage records' and accounts' relations, by name.

# dimension → (group-by columns: key, label)
DIMENSIONS: dict[str, tuple[str, str]] = {
    "company": ("company_id", "company__name"),
    "department": ("department_id", "department__name"),
    "token": ("token_id", "token__name"),
    "model": ("model_id", "model__name"),
}
DIMENSION_CHOICES = [*DIMENSIONS, "day"]


@dataclass(frozen=True)
class SpendRow:
    """One group of a spend report: its ``key`` (an id, or an ISO date for "day"; "" for none),
    ``label``, request count, token sums and sell/buy costs (micro-RUB); ``capped_requests`` the
    requests whose sell cost was capped at their reservation (``UsageRecord.sell_capped``) and
    ``capped_amount`` what the cap left uncharged, Σ (sell cost before the cap − sell cost), micro-RUB;
    ``cache_write_tokens`` and ``images`` the sums of those counts."""

    key: str
    label: str
    requests: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    sell_cost: int
    buy_cost: int
    capped_requests: int = 0
    capped_amount: int = 0
    cache_write_tokens: int = 0
    images: int = 0

    @property
    def margin(self) -> int:
        """Sell − buy, micro-RUB."""
        return self.sell_cost - self.buy_cost


# capped_amount first: after the "sell_cost" annotation, F("sell_cost") would name the sum, not the column.
_SUMS = {"capped_amount": Coalesce(Sum(F("sell_cost_uncapped") - F("sell_cost"), filter=Q(sell_capped=True)), 0),
         "requests": Count("id"), "input_tokens": Coalesce(Sum("input_tokens"), 0), "output_tokens": Coalesce(Sum("output_tokens"), 0),
         "cached_tokens": Coalesce(Sum("cached_tokens"), 0), "sell_cost": Coalesce(Sum("sell_cost"), 0), "buy_cost": Coalesce(Sum("buy_cost"), 0),
         "capped_requests": Count("id", filter=Q(sell_capped=True)),
         "cache_write_tokens": Coalesce(Sum("cache_write_tokens"), 0), "images": Coalesce(Sum("images"), 0)}


def _usage(start: dt.datetime, end: dt.datetime, company_id: int | None):
    queryset = UsageRecord.objects.filter(started_at__gte=start, started_at__lt=end)
    return queryset if company_id is None else queryset.filter(company_id=company_id)


def spend_by(dimension: str, start: dt.datetime, end: dt.datetime, *, company_id: int | None = None,
             tz: str | None = None) -> list[SpendRow]:
    """Usage in ``[start, end)`` grouped by ``dimension`` (one of ``DIMENSION_CHOICES``), largest
    spend first ("day": in date order, days in ``tz``, default ``settings.TIME_ZONE``); optionally one
    company's. The sums come from the daily rollup and the partial days' records in one query
    (``rollups.usage_sums``); the rarer figures (capped sells, cache writes, images) from the
    records that have them (``_extras``). Raises ``ValueError`` for an unknown dimension."""
    if dimension not in DIMENSION_CHOICES:
        raise ValueError(f"unknown dimension {dimension!r}; one of {', '.join(DIMENSION_CHOICES)}")
    zone = str(tz or settings.TIME_ZONE)
    if dimension == "day":
        rows = usage_sums(start, end, by="day", company_id=company_id, day_zone=zone, order="key")
    else:
        rows = usage_sums(start, end, by=dimension, company_id=company_id)
    extras = _extras(dimension, start, end, company_id, zone)
    out = []
    for r in rows:
        key = "" if r.key is None else str(r.key)
        label = key if dimension == "day" else (r.label or "—")
        out.append(SpendRow(key, label, r.requests, r.input_tokens, r.output_tokens, r.cached_tokens, r.sell_cost, r.buy_cost,
                            **extras.get(key, {})))
    return out


def _extras(dimension: str, start: dt.datetime, end: dt.datetime, company_id: int | None, zone: str) -> dict[str, dict[str, int]]:
    """``capped_requests``, ``capped_amount``, ``cache_write_tokens`` and ``images`` per group key (as
    ``spend_by`` keys its rows), from the period's records that have any of them."""
    usage = _usage(start, end, company_id).filter(Q(sell_capped=True) | Q(cache_write_tokens__gt=0) | Q(images__gt=0))
    if dimension == "day":
        grouped = usage.annotate(key=TruncDate("started_at", tzinfo=zoneinfo.ZoneInfo(zone))).values("key")
    else:
        grouped = usage.values(key=F(DIMENSIONS[dimension][0]))
    names = ("capped_amount", "capped_requests", "cache_write_tokens", "images")
    found = {}
    for row in grouped.annotate(**{name: _SUMS[name] for name in names}).order_by():
        key = row["key"]
        found["" if key is None else key.isoformat() if isinstance(key, dt.date) else str(key)] = {name: int(row[name]) for name in names}
    return found


@dataclass(frozen=True)
class SupplierEarnings:
    """A supplier's period (micro-RUB): ``earned`` Σ buy_cost of the usage its keys served and
    ``requests`` their count; ``accrued`` what the ledger credited its payable for usage;
    ``paid_out`` what left the payable as payouts."""

    supplier_id: int
    supplier: str
    requests: int
    earned: int
    accrued: int
    paid_out: int


def supplier_earnings(start: dt.datetime, end: dt.datetime) -> list[SupplierEarnings]:
    """Per supplier with any activity in ``[start, end)``, largest earnings first. Three queries (the
    usage side scans the period's records: the daily rollup has no supplier key)."""
    names: dict[int, str] = {}
    usage: dict[int, tuple[int, int]] = {}
    for r in (_usage(start, end, None).filter(supplier_key__isnull=False).values("supplier_key__supplier_id", "supplier_key__supplier__name")
              .annotate(n=Count("id"), earned=Coalesce(Sum("buy_cost"), 0))):
        usage[r["supplier_key__supplier_id"]] = (r["n"], r["earned"])
        names[r["supplier_key__supplier_id"]] = r["supplier_key__supplier__name"]
    posted = Transfer.objects.filter(status=TransferStatus.POSTED, created_at__gte=start, created_at__lt=end)
    ledger: dict[str, dict[int, int]] = {}
    for name, kind, side in (("accrued", TransferKind.USAGE_COST, "credit_account"), ("paid", TransferKind.PAYOUT, "debit_account")):
        ledger[name] = {}
        for r in (posted.filter(kind=kind, **{f"{side}__kind": AccountKind.SUPPLIER_PAYABLE})
                  .values(f"{side}__supplier_id", f"{side}__supplier__name").annotate(s=Sum("amount"))):
            ledger[name][r[f"{side}__supplier_id"]] = r["s"]
            names[r[f"{side}__supplier_id"]] = r[f"{side}__supplier__name"]
    rows = [SupplierEarnings(s, names[s], *usage.get(s, (0, 0)), ledger["accrued"].get(s, 0), ledger["paid"].get(s, 0))
            for s in names]
    return sorted(rows, key=lambda r: (-r.earned, r.supplier_id))


@dataclass(frozen=True)
class Margin:
    """The platform's margin in a period (micro-RUB): from usage records (``sell``, ``buy``) and
    as the ledger booked it (``ledger_sell`` into platform revenue, ``ledger_buy`` out of upstream
    cost). Both margins are sell − buy."""

    sell: int
    buy: int
    ledger_sell: int
    ledger_buy: int

    @property
    def margin(self) -> int:
        return self.sell - self.buy

    @property
    def ledger_margin(self) -> int:
        return self.ledger_sell - self.ledger_buy


def platform_margin(start: dt.datetime, end: dt.datetime) -> Margin:
    """The platform's margin in ``[start, end)``. Two queries (usage from the daily rollup)."""
    usage = usage_sums(start, end)[0]
    ledger = Transfer.objects.filter(status=TransferStatus.POSTED, created_at__gte=start, created_at__lt=end).aggregate(
        sell=Coalesce(Sum("amount", filter=Q(kind=TransferKind.USAGE, credit_account__kind=AccountKind.PLATFORM_REVENUE)), 0),
        buy=Coalesce(Sum("amount", filter=Q(kind=TransferKind.USAGE_COST, debit_account__kind=AccountKind.UPSTREAM_COST)), 0))
    return Margin(usage.sell_cost, usage.buy_cost, ledger["sell"], ledger["buy"])


@dataclass(frozen=True)
class Forecast:
    """A company's month (in its time zone): spent so far, seconds elapsed and in the whole month,
    and the month-end ``forecast`` (micro-RUB; formula in the module docstring)."""

    company_id: int
    company: str
    month: str
    spent: int
    elapsed_seconds: int
    month_seconds: int
    forecast: int


def month_bounds(tz: zoneinfo.ZoneInfo, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """(first midnight of ``now``'s month, first midnight of the next) on ``tz``'s wall clock."""
    local = now.astimezone(tz)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start.replace(tzinfo=tz), end.replace(tzinfo=tz)


def month_forecast(now: dt.datetime, *, company_id: int | None = None) -> list[Forecast]:
    """Month-end forecasts of every company with usage this month (or of one), largest first.
    One query for the time zones in use (from the daily rollup), then one per zone."""
    result = []
    for zone in zones_in_use((now - dt.timedelta(days=32)).date()):
        month_start, month_end = month_bounds(zoneinfo.ZoneInfo(zone), now)
        month_seconds = int((month_end - month_start).total_seconds())
        elapsed = max(0, min(month_seconds, int((now - month_start).total_seconds())))
        for r in usage_sums(month_start, now, by="company", company_id=company_id, time_zone=zone):
            if r.key is None or not r.requests:
                continue
            projected = r.sell_cost * month_seconds // elapsed if elapsed else r.sell_cost
            result.append(Forecast(int(r.key), r.label, f"{month_start:%Y-%m}", r.sell_cost, elapsed, month_seconds, projected))
    return sorted(result, key=lambda f: (-f.forecast, f.company_id))


def margin_by(dimension: str, start: dt.datetime, end: dt.datetime) -> list[SpendRow]:
    """``spend_by`` ordered by margin (sell − buy), largest first: where the platform earns."""
    return sorted(spend_by(dimension, start, end), key=lambda r: (-r.margin, r.key))
