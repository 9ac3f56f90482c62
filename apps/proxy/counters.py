"""Where the Redis spend counters come from, and what /v1/key reports from them.

Counters are created from PostgreSQL the first time a token/company is seen (or after Redis
lost them): the wallet's posted sums from the ledger, the token's spend per window from its
usage records. After that Redis is authoritative for the hot path and the meter writer keeps
the ledger side merged in (see limits.py).
"""

from __future__ import annotations

import time
import zoneinfo
from dataclasses import dataclass
from datetime import datetime

from django.db import close_old_connections
from django.db.models import Sum

from . import redis_scripts
from .snapshot import calendar_bounds, window_ids


@dataclass(slots=True)
class InitialCounters:
    credits: int
    debits: int
    limit: int
    total: int
    week: int
    month: int
    department: int


def wallet_sums(company_id: int) -> tuple[int, int, int]:
    """(posted credits, posted debits, credit limit less open holds) of the company wallet,
    created if the company has none yet."""
    from apps.accounts.models import Company
    from apps.billing import services as ledger

    from .metering import company_sums

    ledger.company_wallet(Company.objects.get(pk=company_id))
    return company_sums([company_id])[company_id]


def load_initial_counters(token_id: int, company_id: int, department_id: int | None, tz_name: str) -> InitialCounters:
    from apps.billing.models import UsageRecord

    close_old_connections()
    credits, debits, limit = wallet_sums(company_id)
    week_start, _, month_start, _ = calendar_bounds(zoneinfo.ZoneInfo(tz_name), time.time())
    usage = UsageRecord.objects.filter(token_id=token_id)

    def spent(queryset) -> int:
        return queryset.aggregate(total=Sum("sell_cost"))["total"] or 0

    department = 0
    if department_id is not None:
        department = spent(UsageRecord.objects.filter(department_id=department_id, started_at__gte=month_start))
    return InitialCounters(credits, debits, limit, spent(usage), spent(usage.filter(started_at__gte=week_start)),
                           spent(usage.filter(started_at__gte=month_start)), department)


async def key_report(app, token) -> dict:
    """/v1/key: the calling token's spend, limits, what remains of each, rate limits, balance."""
    from .app import rub

    now = time.time()
    week, month, week_end, month_end = window_ids(token.time_zone, now)
    keys = redis_scripts.SpendKeys(redis_scripts.company_key(token.company_id), redis_scripts.total_key(token.id), redis_scripts.week_key(token.id, week),
                            redis_scripts.month_key(token.id, month), redis_scripts.dept_key(token.department_id, month),
                            token.department_id is not None)
    exists = await app.redis.execute("EXISTS", keys.total, keys.week, keys.month)
    if exists < 3 or not await app.redis.execute("HEXISTS", keys.co, "cr"):
        await app.initialise_counters(token, keys)
    values = await app.redis.execute("MGET", keys.total, keys.week, keys.month, keys.dept)
    total, week_spent, month_spent, dept_spent = (int(v) if v else 0 for v in values)
    co = await app.redis.execute("HMGET", keys.co, "cr", "db", "lim", "out")
    cr, db, lim, out = (int(v) if v else 0 for v in co)
    available = cr + lim - db - out

    def limit_entry(limit: int | None, spent: int, resets_at: float | None) -> dict:
        entry = {"limit": rub(limit) if limit is not None else None, "spent": rub(spent),
                 "remaining": rub(max(0, limit - spent)) if limit is not None else None}
        if resets_at is not None:
            entry["resets_at"] = datetime.fromtimestamp(resets_at, token.time_zone).isoformat()
        return entry

    remaining = [max(0, available)]
    for limit, spent in ((token.limit_total, total), (token.limit_weekly, week_spent), (token.limit_monthly, month_spent),
                         (token.department_budget, dept_spent)):
        if limit is not None:
            remaining.append(max(0, limit - spent))
    rpm_cur, rpm_prev, tpm_cur, tpm_prev, frac = redis_scripts.rate_keys(token.id, now)
    rates = await app.redis.execute("MGET", rpm_cur, rpm_prev, tpm_cur, tpm_prev)
    r_cur, r_prev, t_cur, t_prev = (int(v) if v else 0 for v in rates)
    weight = 1 - float(frac)
    return {
        "label": token.name,
        "name": token.name,
        "company": token.company_name,
        "currency": "RUB",
        # OpenRouter-compatible fields: usage and limit of the key.
        "usage": rub(total),
        "limit": rub(token.limit_total) if token.limit_total is not None else None,
        "limit_remaining": rub(max(0, token.limit_total - total)) if token.limit_total is not None else None,
        "limits": {
            "total": limit_entry(token.limit_total, total, None),
            "weekly": limit_entry(token.limit_weekly, week_spent, week_end),
            "monthly": limit_entry(token.limit_monthly, month_spent, month_end),
            "department_monthly": limit_entry(token.department_budget, dept_spent, month_end) if token.department_id else None,
        },
        "rate_limit": {
            "requests_per_minute": token.rpm,
            "requests_remaining": max(0, int(token.rpm - (r_prev * weight + r_cur))) if token.rpm else None,
            "tokens_per_minute": token.tpm,
            "tokens_remaining": max(0, int(token.tpm - (t_prev * weight + t_cur))) if token.tpm else None,
        },
        "company_balance": {"available": rub(available), "pending": rub(out)},
        "spendable_now": rub(min(remaining)),
        "models_allow": sorted(token.models_allow) or None,
        "models_deny": sorted(token.models_deny) or None,
        "expires_at": datetime.fromtimestamp(token.expires_at, token.time_zone).isoformat() if token.expires_at else None,
    }
