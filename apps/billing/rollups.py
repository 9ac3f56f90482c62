"""Usage per day: the rollup (``UsageDay``) that dashboards and reports read instead of scanning
usage records, and how it is rebuilt.

The rollup is kept by the database: statement-level triggers on ``billing_usagerecord``
(migration 0010) fold every statement's rows into one row per day × company × department × token
× model — whoever writes (the meter's ``record_usage_batch``, the sweeper's placeholders, ``COPY``
in ``seed_usage``, the ORM). A day is the company's wall-clock date (``Company.time_zone``; UTC
for a record with no company).

``usage_sums`` answers any half-open period ``[start, end)`` exactly, in one query: the whole days
of the period (in each company's zone) from the rollup, the partial days at its ends from the
records themselves (through the ``(company, started_at, id)`` / ``started_at`` indexes). Amounts
are integer micro-rubles, tokens in tokens, latency in milliseconds.

``rebuild_usage_days`` recomputes the rollup from the records (``manage.py rollup_usage``): after a
company's time zone changes, or for data written before the triggers existed.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from typing import Any, cast

from django.db import connection, models, transaction

from apps.billing.models import UsageDay, UsageRecord

# Billing sits below accounts, proxy and providers (docs/architecture.md): their tables are
# reached through the records' relations, by name.


def _table(field: str) -> str:
    related = cast("type[models.Model]", UsageRecord._meta.get_field(field).related_model)
    return connection.ops.quote_name(related._meta.db_table)


#: What ``usage_sums`` can group by, and the label column of each (``day`` has none).
GROUPS = {"company": "name", "department": "name", "token": "name", "model": "name", "day": ""}


@dataclass(frozen=True)
class UsageSums:
    """One group of ``usage_sums``: ``key`` (an id, an ISO date for "day", None for the records
    without one, or None for totals), ``label`` (the name, "" when there is none), counts and sums:
    ``requests`` and ``errors`` (status not ``ok``), tokens, ``sell_cost``/``buy_cost`` micro-RUB and
    ``latency_ms`` (the sum of latencies, milliseconds)."""

    key: int | str | None
    label: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    sell_cost: int
    buy_cost: int
    latency_ms: int

    @property
    def mean_latency_ms(self) -> int:
        """Mean latency, milliseconds (0 without requests)."""
        return self.latency_ms // self.requests if self.requests else 0


_SUMS = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "sell_cost", "buy_cost", "latency_ms")
_RECORD_SUMS = "1, (r.status <> 'ok')::int, r.input_tokens, r.output_tokens, r.cached_tokens, r.sell_cost, r.buy_cost, r.latency_ms"
_ZONE = "coalesce(c.time_zone, 'UTC')"
# Costs in the rollup saturate here (migration 0010): a cost clamped to bigint's ceiling must not overflow a sum.
_BIGINT_MAX = 2**63 - 1
# A local day may last 25 hours (a DST change): the partial days at a period's ends lie within this
# of its start and its end, whatever the zone.
_EDGE = "interval '26 hours'"


def _midnight(day: dt.date, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tz)


def whole_days(start: dt.datetime, end: dt.datetime, tz: zoneinfo.ZoneInfo) -> tuple[dt.date, dt.date]:
    """The whole local days of ``[start, end)`` on ``tz``'s wall clock, as ``[first, after_last)``
    (``first >= after_last`` when there is none): the days whose midnight-to-midnight lies inside."""
    local_start = start.astimezone(tz)
    first = local_start.date()
    if _midnight(first, tz) < start:
        first += dt.timedelta(days=1)
    after_last = end.astimezone(tz).date()
    return first, after_last


def usage_sums(start: dt.datetime, end: dt.datetime, *, by: str | None = None, company_id: int | None = None,
               time_zone: str | None = None, day_zone: str = "UTC", order: str = "spend") -> list[UsageSums]:
    """Usage started in ``[start, end)`` (aware datetimes), grouped ``by`` one of ``GROUPS`` (None:
    one row of totals, present even when empty), optionally of one company and of the companies in
    one ``time_zone`` (pass the company's zone with ``company_id``: the query is then exact bounds on
    the indexes). ``by="day"`` groups by dates in ``day_zone``; the rollup serves the companies in
    that zone, the others' records are read. ``order``: "spend" (largest ``sell_cost`` first, then
    the key) or "key". One query. Raises ``ValueError`` for an unknown ``by`` or ``order``."""
    if by is not None and by not in GROUPS:
        raise ValueError(f"unknown grouping {by!r}; one of {', '.join(GROUPS)}")
    if order not in ("spend", "key"):
        raise ValueError(f"unknown order {order!r}")
    params: dict[str, Any] = {"start": start, "end": end, "company": company_id, "zone": time_zone, "day_zone": day_zone}
    day_filter, record_filter = ["TRUE"], ["r.started_at >= %(start)s", "r.started_at < %(end)s"]
    if company_id is not None:
        day_filter.append("d.company_id = %(company)s")
        record_filter.append("r.company_id = %(company)s")
    if time_zone is not None:
        # One zone: the whole days and the edges are computed here, and every bound is sargable.
        tz = zoneinfo.ZoneInfo(time_zone)
        first, after_last = whole_days(start, end, tz)
        params |= {"first": first, "after_last": after_last, "mid_first": _midnight(first, tz),
                   "mid_after_last": _midnight(after_last, tz)}
        day_filter += [f"{_ZONE} = %(zone)s", "d.day >= %(first)s", "d.day < %(after_last)s"]
        record_filter.append(f"{_ZONE} = %(zone)s")
        if first < after_last:
            # Tight ranges (an index range scan each), or none at all when the period is whole days.
            ranges = [r for r, empty in (("r.started_at < %(mid_first)s", start >= params["mid_first"]),
                                         ("r.started_at >= %(mid_after_last)s", end <= params["mid_after_last"])) if not empty]
            edges = f"({' OR '.join(ranges)})" if ranges else "FALSE"
        else:
            edges = "TRUE"
    else:
        # Zones differ per company: the same bounds, computed per row in each company's zone.
        local_first = f"((%(start)s AT TIME ZONE {_ZONE}) - interval '1 microsecond')::date + 1"
        local_after_last = f"(%(end)s AT TIME ZONE {_ZONE})::date"
        day_filter += ["d.day >= (%(start)s AT TIME ZONE 'UTC')::date - 1", "d.day <= (%(end)s AT TIME ZONE 'UTC')::date + 1",
                       f"d.day >= {local_first}", f"d.day < {local_after_last}"]
        local_day = f"(r.started_at AT TIME ZONE {_ZONE})::date"
        edges = (f"(r.started_at < %(start)s + {_EDGE} OR r.started_at >= %(end)s - {_EDGE}) "
                 f"AND NOT ({local_day} >= {local_first} AND {local_day} < {local_after_last})")
    if by == "day":
        day_filter.append(f"{_ZONE} = %(day_zone)s")
        edges = f"({_ZONE} <> %(day_zone)s OR ({edges}))"
    record_filter.append(edges)
    key_d, key_r = _group_keys(by)
    sums = ", ".join(f"d.{name}" for name in _SUMS)
    company = _table("company")
    parts = f"""
        SELECT {key_d} AS k, {sums} FROM billing_usageday d LEFT JOIN {company} c ON c.id = d.company_id
        WHERE {" AND ".join(day_filter)}"""
    if edges != "FALSE":
        parts += f"""
        UNION ALL
        SELECT {key_r} AS k, {_RECORD_SUMS} FROM billing_usagerecord r LEFT JOIN {company} c ON c.id = r.company_id
        WHERE {" AND ".join(record_filter)}"""
    totals = ", ".join(f"coalesce(sum(p.{name}), 0) AS {name}" for name in _SUMS)  # numeric: sums past bigint stay exact
    if by in GROUPS and GROUPS[by]:
        label_join, label = f"LEFT JOIN {_table(by)} l ON l.id = a.k", "coalesce(l.name, '')"
    else:
        label_join, label = "", "''"
    ordering = "a.sell_cost DESC, a.k" if order == "spend" else "a.k"
    group = "GROUP BY p.k" if by else ""
    selected = "p.k" if by else "NULL::bigint AS k"
    sql = f"""SELECT a.k, {label}, {", ".join(f"a.{name}" for name in _SUMS)}
              FROM (SELECT {selected}, {totals} FROM ({parts}) AS p(k, {", ".join(_SUMS)}) {group}) a {label_join}
              ORDER BY {ordering}"""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [UsageSums(k.isoformat() if isinstance(k, dt.date) else k, label_value, *(int(v) for v in values))
            for k, label_value, *values in rows]


def _group_keys(by: str | None) -> tuple[str, str]:
    if by is None:
        return "NULL::bigint", "NULL::bigint"
    if by == "day":
        return "d.day", "(r.started_at AT TIME ZONE %(day_zone)s)::date"
    return f"d.{by}_id", f"r.{by}_id"


def zones_in_use(since: dt.date) -> list[str]:
    """The time zones of the companies with usage on or after ``since`` (a date), sorted. One query."""
    return sorted(UsageDay.objects.filter(day__gte=since, company__isnull=False).order_by()
                  .values_list("company__time_zone", flat=True).distinct())


@dataclass(frozen=True)
class Rebuilt:
    """What ``rebuild_usage_days`` did: rollup rows ``removed`` and ``written``."""

    removed: int
    written: int


def rebuild_usage_days(*, company_id: int | None = None, since: dt.date | None = None) -> Rebuilt:
    """Recompute the rollup from the usage records: of one company (or all), for the days from
    ``since`` (a local date; None: every day). Rows of those days are deleted and written again
    from the records, in one transaction.

    The rollup table is locked against writes for the duration (``SHARE ROW EXCLUSIVE``: the
    meter's triggers wait): a batch committed before the lock is in the recount, one that commits
    after it adds itself on top — never counted twice, never lost. Rebuild a range, not the world,
    on a busy platform."""
    conditions, params = _scope(company_id, since)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE billing_usageday IN SHARE ROW EXCLUSIVE MODE")
        cursor.execute("""DELETE FROM billing_usageday d WHERE (%(company)s::bigint IS NULL OR d.company_id = %(company)s)
                           AND (%(since)s::date IS NULL OR d.day >= %(since)s)""", params)
        removed = cursor.rowcount
        cursor.execute(f"""
            INSERT INTO billing_usageday (day, company_id, department_id, token_id, model_id, {", ".join(_SUMS)})
            {_recount(conditions)}""", params)
        written = cursor.rowcount
    return Rebuilt(removed, written)


def _scope(company_id: int | None, since: dt.date | None) -> tuple[list[str], dict[str, Any]]:
    conditions, params = ["TRUE"], {"company": company_id, "since": since}
    if company_id is not None:
        conditions.append("r.company_id = %(company)s")
    if since is not None:
        # Midnight of ``since`` anywhere on Earth (UTC+14 … UTC−12) is after this; then the local date decides.
        conditions += ["r.started_at >= %(since)s::timestamp AT TIME ZONE 'UTC' - interval '14 hours'",
                       f"(r.started_at AT TIME ZONE {_ZONE})::date >= %(since)s"]
    return conditions, params


def _recount(conditions: list[str]) -> str:
    """The rollup's rows recounted from the records matching ``conditions`` (alias ``r``)."""
    return f"""
        SELECT (r.started_at AT TIME ZONE {_ZONE})::date, r.company_id, r.department_id, r.token_id, r.model_id,
               count(*), count(*) FILTER (WHERE r.status <> 'ok'), sum(r.input_tokens), sum(r.output_tokens),
               sum(r.cached_tokens), least(sum(r.sell_cost), {_BIGINT_MAX}), least(sum(r.buy_cost), {_BIGINT_MAX}),
               sum(r.latency_ms)
        FROM billing_usagerecord r LEFT JOIN {_table("company")} c ON c.id = r.company_id
        WHERE {" AND ".join(conditions)}
        GROUP BY 1, 2, 3, 4, 5"""


def check_usage_days(*, company_id: int | None = None, since: dt.date | None = None) -> int:
    """How many rollup rows (of one company or all, from the local date ``since`` on) differ from a
    recount of the records — missing, extra (with requests) or with other sums; 0 when the rollup is
    right. Reads only; one query (it scans the records in scope)."""
    conditions, params = _scope(company_id, since)
    key = ("day", "company_id", "department_id", "token_id", "model_id")
    columns = ", ".join((*key, *_SUMS))
    # NULL ids as 0 (ids start at 1), so a FULL JOIN can match them.
    keyed = ", ".join(["day", *(f"coalesce({k}, 0) AS {k}" for k in key[1:]), *_SUMS])
    with connection.cursor() as cursor:
        cursor.execute(f"""
            WITH counted({columns}) AS ({_recount(conditions)}),
                 recount AS (SELECT {keyed} FROM counted),
                 kept AS (SELECT {keyed} FROM billing_usageday d
                          WHERE (%(company)s::bigint IS NULL OR d.company_id = %(company)s)
                            AND (%(since)s::date IS NULL OR d.day >= %(since)s) AND d.requests <> 0)
            SELECT count(*) FROM recount FULL OUTER JOIN kept USING ({", ".join(key)})
            WHERE {" OR ".join(f"recount.{n} IS DISTINCT FROM kept.{n}" for n in _SUMS)}""", params)
        return int(cursor.fetchone()[0])


@dataclass(frozen=True)
class DailySpend:
    """One local day of a company: ``day``, ``requests``, ``errors`` and ``sell_cost`` (micro-RUB)."""

    day: dt.date
    requests: int
    errors: int
    sell_cost: int


@dataclass(frozen=True)
class PeriodSpend:
    """A company's spend (micro-RUB) today, this ISO week and this month, on its wall clock, and the
    requests of each."""

    today: int
    week: int
    month: int
    requests_today: int
    requests_week: int
    requests_month: int


@dataclass(frozen=True)
class ModelSpend:
    """A model's sums in a span of days: ``model_id`` (None: no model), ``name``, ``requests``,
    ``errors``, tokens and ``sell_cost`` (micro-RUB)."""

    model_id: int | None
    name: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    sell_cost: int


class DaySheet:
    """A company's rollup per local day × model for the days ``first`` … ``last`` (inclusive), read
    in one query (``read``); the dashboard's figures are views of it — by day, per period, by model,
    the chart's series — so none reads the rollup twice."""

    def __init__(self, first: dt.date, last: dt.date, rows: list[dict[str, Any]]) -> None:
        self.first, self.last, self.rows = first, last, rows

    @classmethod
    def read(cls, *, company_id: int, first: dt.date, last: dt.date) -> DaySheet:
        """The sheet of ``company_id`` for ``first`` … ``last``. One query."""
        rows = list(UsageDay.objects.filter(company_id=company_id, day__gte=first, day__lte=last)
                    .values("day", "model_id", "model__name")
                    .annotate(r=models.Sum("requests"), e=models.Sum("errors"), s=models.Sum("sell_cost"),
                              i=models.Sum("input_tokens"), o=models.Sum("output_tokens")).order_by())
        return cls(first, last, rows)

    def days(self) -> list[dt.date]:
        """Every day of the sheet, in order."""
        return [self.first + dt.timedelta(days=n) for n in range((self.last - self.first).days + 1)]

    def daily(self) -> list[DailySpend]:
        """Every day, zeros where nothing was spent, oldest first."""
        sums = {day: [0, 0, 0] for day in self.days()}
        for r in self.rows:
            day = sums[r["day"]]
            day[0] += r["r"]
            day[1] += r["e"]
            day[2] += r["s"]
        return [DailySpend(day, *values) for day, values in sums.items()]

    def period(self, today: dt.date) -> PeriodSpend:
        """Spend today, since Monday and since the 1st (``today`` included); the sheet must reach back
        to the earlier of the week's and the month's first day."""
        week_start, month_start = today - dt.timedelta(days=today.weekday()), today.replace(day=1)
        if self.first > min(week_start, month_start):
            raise ValueError("the sheet does not reach back to the week's and the month's first day")
        sums = dict.fromkeys(("today", "week", "month", "requests_today", "requests_week", "requests_month"), 0)
        for r in self.rows:
            for name, since in (("today", today), ("week", week_start), ("month", month_start)):
                if since <= r["day"] <= today:
                    sums[name] += r["s"]
                    sums[f"requests_{name}"] += r["r"]
        return PeriodSpend(**sums)

    def by_model(self, since: dt.date) -> list[ModelSpend]:
        """Per model from ``since`` on, largest spend first (then by name)."""
        sums: dict[int | None, list[Any]] = {}
        for r in self.rows:
            if r["day"] >= since:
                row = sums.setdefault(r["model_id"], [r["model__name"] or "", 0, 0, 0, 0, 0])
                for n, key in enumerate(("r", "e", "i", "o", "s"), start=1):
                    row[n] += r[key]
        return sorted((ModelSpend(model, *values) for model, values in sums.items()), key=lambda m: (-m.sell_cost, m.name))

    def series(self, *, top: int = 6) -> tuple[list[dt.date], list[tuple[str, list[int]]]]:
        """Spend (micro-RUB) per day and model: the days, and per model — the ``top`` by spend over the
        sheet, the rest summed as "" — its spend on each day."""
        days = self.days()
        totals: dict[int | None, int] = {}
        names: dict[int | None, str] = {}
        for r in self.rows:
            totals[r["model_id"]] = totals.get(r["model_id"], 0) + r["s"]
            names[r["model_id"]] = r["model__name"] or ""
        leaders = [m for m, total in sorted(totals.items(), key=lambda item: (-item[1], str(item[0]))) if total > 0][:top]
        index = {day: n for n, day in enumerate(days)}
        series: dict[int | None, list[int]] = {m: [0] * len(days) for m in leaders}
        rest = [0] * len(days)
        for r in self.rows:
            series.get(r["model_id"], rest)[index[r["day"]]] += r["s"]
        result = [(names[m], series[m]) for m in leaders]
        if any(rest):
            result.append(("", rest))
        return days, result


def daily_spend(*, company_id: int, first: dt.date, last: dt.date) -> list[DailySpend]:
    """A company's days ``first`` … ``last`` (inclusive, local dates), every day present (zeros where
    nothing was spent), from the rollup alone. One query."""
    return DaySheet.read(company_id=company_id, first=first, last=last).daily()


def period_spend(*, company_id: int, today: dt.date) -> PeriodSpend:
    """Spend today, since Monday and since the 1st (local dates, ``today`` included), from the
    rollup alone (whole local days: today's row holds everything written so far). One query."""
    first = min(today - dt.timedelta(days=today.weekday()), today.replace(day=1))
    return DaySheet.read(company_id=company_id, first=first, last=today).period(today)


def spend_by_day_and_model(*, company_id: int, first: dt.date, last: dt.date, top: int = 6
                           ) -> tuple[list[dt.date], list[tuple[str, list[int]]]]:
    """A company's spend (micro-RUB) per local day ``first`` … ``last`` (inclusive) and model: the
    days, and per model — the ``top`` by spend, the rest summed as "" — its spend on each day. From
    the rollup; one query."""
    return DaySheet.read(company_id=company_id, first=first, last=last).series(top=top)
