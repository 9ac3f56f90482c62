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
from apps.billing.rollups import DaySheet, usage_sums
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
    month_first = today.replace(day=1)
    chart_first = today - dt.timedelta(days=CHART_DAYS - 1)
    # One read of the rollup per day × model serves the cards, the chart, the days and the models.
    sheet = DaySheet.read(company_id=company.pk, first=min(chart_first, month_first, today - dt.timedelta(days=today.weekday())),
                          last=today)
    month_start = dt.datetime.combine(month_first, dt.time(), tz)
    tomorrow = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), tz)
    credits, debits, limit_less_holds = company_wallet_sums(company.pk)
    chart = DaySheet(chart_first, today, [r for r in sheet.rows if r["day"] >= chart_first])
    days, series = chart.series()
    return {
        "company": company,
        "today": today,
        "wallet": credits - debits + limit_less_holds,
        "spend": sheet.period(today),
        "days": list(reversed(chart.daily())),
        "models": [m for m in sheet.by_model(month_first) if m.requests],
        "top_tokens": [t for t in usage_sums(month_start, tomorrow, by="token", company_id=company.pk, time_zone=company.time_zone)
                       if t.requests][:TOP_TOKENS],
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
