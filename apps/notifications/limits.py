"""What a company's dashboard shows of its limits and alerts: the token limits and department
budgets close to their end in the current calendar window, and the alerts of the current periods.

Spend comes from the daily rollup (``billing.UsageDay``, kept in the company's time zone), whose
local days line up with the limits' calendar windows (``apps/proxy/windows.py``): the figures are
those of ``alerts.scan`` without reading a usage record. Amounts are integer micro-rubles.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

from django.db.models import Q, Sum

from apps.accounts.models import Company
from apps.billing.models import UsageDay
from apps.proxy.models import ApiToken, TokenStatus
from apps.proxy.windows import calendar_bounds, window_ids

from .models import AlertDelivery, AlertKind, DeliveryStatus

#: A limit is "close to its end" from this share of it spent, per cent (the first alert level).
NEAR_END_PERCENT = 80


@dataclass(frozen=True)
class LimitUse:
    """One limit in its current window: ``kind`` (an ``AlertKind`` value), the token's or the
    department's ``subject_id`` and ``name``, ``spent`` and ``limit`` (micro-RUB), ``percent`` spent
    (rounded down, may pass 100) and ``resets_at`` (the window's end; None for a token's total)."""

    kind: str
    subject_id: int
    name: str
    spent: int
    limit: int
    percent: int
    resets_at: dt.datetime | None

    @property
    def remaining(self) -> int:
        """What is left, micro-RUB (never below 0)."""
        return max(0, self.limit - self.spent)


def _use(kind: str, subject_id: int, name: str, spent: int, limit: int, *, resets_at: dt.datetime | None) -> LimitUse:
    return LimitUse(kind, subject_id, name, spent, limit, spent * 100 // limit if limit > 0 else 100, resets_at)


def limits_near_end(company: Company, now: dt.datetime, *, percent: int = NEAR_END_PERCENT) -> list[LimitUse]:
    """The company's token limits (total, weekly, monthly; revoked tokens left out) and department
    monthly budgets with at least ``percent`` % spent in their current window, fullest first.
    Three queries."""
    tz = zoneinfo.ZoneInfo(company.time_zone)
    week_start, week_end, month_start, month_end = calendar_bounds(tz, now.timestamp())
    week_day, month_day = week_start.date(), month_start.date()
    tokens = list(ApiToken.objects.filter(company=company).exclude(status=TokenStatus.REVOKED)
                  .filter(Q(limit_total__isnull=False) | Q(limit_weekly__isnull=False) | Q(limit_monthly__isnull=False))
                  .values("id", "name", "limit_total", "limit_weekly", "limit_monthly"))
    spend = {r["token_id"]: r for r in UsageDay.objects.filter(company=company, token_id__in=[t["id"] for t in tokens])
             .values("token_id").annotate(total=Sum("sell_cost"), week=Sum("sell_cost", filter=Q(day__gte=week_day)),
                                          month=Sum("sell_cost", filter=Q(day__gte=month_day))).order_by()}
    uses: list[LimitUse] = []
    for t in tokens:
        spent = spend.get(t["id"], {})
        for kind, limit, amount, resets in ((AlertKind.TOKEN_TOTAL, t["limit_total"], spent.get("total"), None),
                                            (AlertKind.TOKEN_WEEKLY, t["limit_weekly"], spent.get("week"), week_end),
                                            (AlertKind.TOKEN_MONTHLY, t["limit_monthly"], spent.get("month"), month_end)):
            if limit is not None:
                uses.append(_use(kind, t["id"], t["name"], amount or 0, limit, resets_at=resets))
    departments = list(company.departments.filter(monthly_budget__isnull=False).values("id", "name", "monthly_budget"))
    budget_spend = dict(UsageDay.objects.filter(company=company, department_id__in=[d["id"] for d in departments], day__gte=month_day)
                        .values("department_id").annotate(s=Sum("sell_cost")).values_list("department_id", "s").order_by())
    uses += [_use(AlertKind.DEPARTMENT, d["id"], d["name"], budget_spend.get(d["id"]) or 0, d["monthly_budget"] or 0,
                     resets_at=month_end)
             for d in departments]
    return sorted((u for u in uses if u.percent >= percent), key=lambda u: (-u.percent, u.kind, u.name))


@dataclass(frozen=True)
class ActiveAlert:
    """An alert of a current period: ``kind`` (an ``AlertKind`` value), its subject's name, the
    highest ``level`` (%) reached, the ``period`` ("2026-11", "2026-W48", "all") and when it was
    raised."""

    kind: str
    subject_id: int
    subject_name: str
    level: int
    period: str
    raised_at: dt.datetime

    @property
    def kind_label(self) -> str:
        """The kind in the active language."""
        return str(AlertKind(self.kind).label)


def active_alerts(company: Company, now: dt.datetime) -> list[ActiveAlert]:
    """The alerts raised in the company's current periods (this ISO week, this month, a token's
    "all"), one per subject and kind at its highest level, newest first. One query."""
    week, month, _, _ = window_ids(zoneinfo.ZoneInfo(company.time_zone), now.timestamp())
    current = (Q(kind=AlertKind.TOKEN_WEEKLY, period=week) | Q(kind=AlertKind.TOKEN_TOTAL, period="all")
               | Q(kind__in=[AlertKind.TOKEN_MONTHLY, AlertKind.DEPARTMENT, AlertKind.LOW_WALLET], period=month))
    rows = (AlertDelivery.objects.filter(current, company=company).exclude(status=DeliveryStatus.SUPERSEDED)
            .order_by("kind", "subject_id", "-level", "-created_at")
            .values("kind", "subject_id", "level", "period", "payload", "created_at"))
    seen: dict[tuple[str, int], ActiveAlert] = {}
    for r in rows:
        key = (r["kind"], r["subject_id"])
        if key not in seen:
            seen[key] = ActiveAlert(r["kind"], r["subject_id"], str(r["payload"].get("subject_name", "")), r["level"], r["period"],
                                    r["created_at"])
    return sorted(seen.values(), key=lambda a: a.raised_at, reverse=True)
