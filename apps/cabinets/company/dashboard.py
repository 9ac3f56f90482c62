"""The company dashboard's figures, gathered from the services that own them: the wallet
(``billing.wallets``), spend from the daily rollup (``billing.rollups``), limits and alerts
(``notifications.limits``). Amounts stay integer micro-rubles; the chart's data island carries
rubles as numbers (a drawing, not an account)."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

from django.utils.translation import gettext as _

from apps.accounts.models import Company
from apps.billing.rollups import daily_spend, period_spend, spend_by_day_and_model, usage_sums
from apps.billing.wallets import company_wallet_sums
from apps.notifications.limits import active_alerts, limits_near_end

CHART_DAYS = 30
TOP_TOKENS = 10


def dashboard_context(company: Company, now: dt.datetime) -> dict[str, Any]:
    """Everything the dashboard template shows for ``company`` at ``now``: ``wallet`` (available,
    micro-RUB), ``spend`` (``PeriodSpend``), ``days`` (the last ``CHART_DAYS`` local days),
    ``models`` (this month per model), ``top_tokens`` (this month), ``limits``, ``alerts`` and
    ``chart`` (the data island: days and per-model series in rubles). About ten queries, none
    reading usage records."""
    tz = zoneinfo.ZoneInfo(company.time_zone)
    today = now.astimezone(tz).date()
    first = today - dt.timedelta(days=CHART_DAYS - 1)
    month_start = dt.datetime.combine(today.replace(day=1), dt.time(), tz)
    tomorrow = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), tz)
    credits, debits, limit_less_holds = company_wallet_sums(company.pk)
    days, series = spend_by_day_and_model(company_id=company.pk, first=first, last=today)
    month = {"company_id": company.pk, "time_zone": company.time_zone}
    return {
        "company": company,
        "today": today,
        "wallet": credits - debits + limit_less_holds,
        "spend": period_spend(company_id=company.pk, today=today),
        "days": list(reversed(daily_spend(company_id=company.pk, first=first, last=today))),
        "models": [m for m in usage_sums(month_start, tomorrow, by="model", **month) if m.requests],
        "top_tokens": [t for t in usage_sums(month_start, tomorrow, by="token", **month) if t.requests][:TOP_TOKENS],
        "limits": limits_near_end(company, now),
        "alerts": active_alerts(company, now),
        # static/cabinets/charts.js draws it: a bar per day, stacked by model, in rubles.
        "chart": {
            "type": "bar",
            "stacked": True,
            "labels": [day.isoformat() for day in days],
            "datasets": [{"label": name or _("Other models"), "data": [amount / 1_000_000 for amount in amounts]}
                         for name, amounts in series],
            "unit": "rub",
        },
    }
