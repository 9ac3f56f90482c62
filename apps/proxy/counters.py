"""Where the Redis spend counters come from (``SpendCounters.seed`` runs this in the loader thread).

Counters are created from PostgreSQL the first time a token/company is seen (or after Redis
lost them): the wallet's posted sums from the ledger, the token's spend per window from its
usage records. After that Redis is authoritative for the hot path and the meter writer keeps
the ledger side merged in (see redis_scripts.py).
"""

from __future__ import annotations

import time
import zoneinfo
from dataclasses import dataclass

from django.db import close_old_connections
from django.db.models import Sum

from apps.billing.models import UsageRecord
from apps.billing.wallets import company_wallet_sums

from .windows import calendar_bounds


@dataclass(slots=True)
class InitialCounters:
    """A token's counters as PostgreSQL has them (micro-RUB): the wallet's posted credits and debits,
    its credit limit less open ledger holds, and the token's spend in total, this week and this
    month, and its department's this month."""

    credits: int
    debits: int
    limit: int
    total: int
    week: int
    month: int
    department: int


def load_initial_counters(token_id: int, company_id: int, department_id: int | None, tz_name: str,
                          now: float | None = None) -> InitialCounters:
    """The counters of a token (calendar windows in ``tz_name`` around ``now``, Unix seconds, default
    the clock), read from PostgreSQL (blocking)."""
    close_old_connections()
    credits, debits, limit = company_wallet_sums(company_id)
    week_start, _, month_start, _ = calendar_bounds(zoneinfo.ZoneInfo(tz_name), time.time() if now is None else now)
    usage = UsageRecord.objects.filter(token_id=token_id)

    def spent(queryset) -> int:
        return queryset.aggregate(total=Sum("sell_cost"))["total"] or 0

    department = 0
    if department_id is not None:
        department = spent(UsageRecord.objects.filter(department_id=department_id, started_at__gte=month_start))
    return InitialCounters(credits, debits, limit, spent(usage), spent(usage.filter(started_at__gte=week_start)),
                           spent(usage.filter(started_at__gte=month_start)), department)
