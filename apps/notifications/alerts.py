"""Spend alerts: 80 %, 90 % and 100 % of a token's limits and a department's monthly budget, and a
low wallet — each sent once per threshold per period, by email and webhook.

``scan(now)`` (Celery beat, every minute; see ``apps/notifications/tasks.py``) reads spend from
the ledger's usage records with a few aggregate queries — one per time zone for tokens and for
departments, one for wallets — never on the proxy's hot path. It writes an ``AlertDelivery`` row
per alert and channel; the unique constraint (company, kind, subject, level, period, channel)
is what makes "once" hold across runs, overlapping runs and worker restarts. When one scan finds
several new levels of one subject at once (spend jumped from 70 % to 100 %), only the highest is
sent; the lower ones are recorded as superseded.

Periods are calendar windows in the company's time zone: the ISO week ("2026-W48") for a weekly
limit, the month ("2026-11") for a monthly limit, a department budget and a low wallet, "all"
for a token's total limit. Spend counts written usage (Σ sell_cost); reservations of requests still
running are not counted, so an alert may come one request late, never early.

A low wallet has the same three levels, measured against the money the wallet had this month
above its low-wallet threshold (the company's, else the platform default):

    level reached when  spent × 100 ≥ level × (spent + available − threshold)

where ``spent`` is this month's written usage and ``available`` the wallet's available balance
(posted credits − posted debits − holds + credit limit). 100 % is the moment ``available`` falls to
the threshold; 80 % and 90 % come on the way (a wallet at or below the threshold is at 100 %).

``deliver(now)`` sends what is due; a failed send is retried with backoff (1, 2, 4, … minutes, at
most an hour apart) until ``JETSTREAM["ALERT_MAX_ATTEMPTS"]``, then marked failed. Rows are claimed
(``SKIP LOCKED`` and a lease) before they are sent, so two workers never send one alert twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, Sum
from django.utils import translation
from django.utils.translation import gettext_lazy as _

from apps.accounts.models import Company, CompanyRole, Department, Membership
from apps.billing.alerts import DeliveryError, send_email, send_webhook
from apps.billing.models import UsageRecord
from apps.billing.wallets import wallet_sums
from apps.proxy.models import ApiToken, TokenStatus
from apps.proxy.windows import calendar_bounds, window_ids
from lib.money import format_rub

from .models import AlertDelivery, AlertKind, AlertSettings, Channel, DeliveryStatus

logger = logging.getLogger("jetstream.alerts")

LEVELS = (80, 90, 100)


@dataclass(frozen=True)
class Due:
    """One subject at ``level`` % in ``period``: ``spent`` and ``limit`` micro-RUB (for a low wallet:
    this month's spend and the money the wallet had for it above the threshold, spent + available −
    threshold; ``available`` and ``threshold`` are then set too, micro-RUB)."""

    company_id: int
    kind: str
    subject_id: int
    subject_name: str
    level: int
    period: str
    spent: int
    limit: int
    available: int | None = None
    threshold: int | None = None


def crossed(spent: int, limit: int) -> list[int]:
    """The levels (80, 90, 100) that ``spent`` has reached of ``limit`` (micro-RUB); none for a limit ≤ 0."""
    return [level for level in LEVELS if limit > 0 and spent * 100 >= level * limit]


def _zones(company_ids: Iterable[int]) -> dict[int, str]:
    return dict(Company.objects.filter(pk__in=set(company_ids)).values_list("pk", "time_zone"))


def _token_dues(now: dt.datetime) -> list[Due]:
    rows = list(ApiToken.objects.exclude(status=TokenStatus.REVOKED).filter(company__is_active=True)
                .filter(Q(limit_total__isnull=False) | Q(limit_weekly__isnull=False) | Q(limit_monthly__isnull=False))
                .values("id", "name", "company_id", "company__time_zone", "limit_total", "limit_weekly", "limit_monthly"))
    by_zone: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_zone[row["company__time_zone"]].append(row)
    dues: list[Due] = []
    for zone, tokens in by_zone.items():
        tz = zoneinfo.ZoneInfo(zone)
        week_start, _, month_start, _ = calendar_bounds(tz, now.timestamp())
        week, month, _, _ = window_ids(tz, now.timestamp())
        spend = {r["token_id"]: r for r in UsageRecord.objects.filter(token_id__in=[t["id"] for t in tokens])
                 .values("token_id").annotate(total=Sum("sell_cost"), week=Sum("sell_cost", filter=Q(started_at__gte=week_start)),
                                              month=Sum("sell_cost", filter=Q(started_at__gte=month_start)))}
        for token in tokens:
            spent = spend.get(token["id"], {})
            for kind, limit, period, amount in ((AlertKind.TOKEN_TOTAL, token["limit_total"], "all", spent.get("total")),
                                                (AlertKind.TOKEN_WEEKLY, token["limit_weekly"], week, spent.get("week")),
                                                (AlertKind.TOKEN_MONTHLY, token["limit_monthly"], month, spent.get("month"))):
                if limit is not None:
                    dues += [Due(token["company_id"], kind, token["id"], token["name"], level, period, amount or 0, limit)
                             for level in crossed(amount or 0, limit)]
    return dues


def _department_dues(now: dt.datetime) -> list[Due]:
    rows = list(Department.objects.filter(monthly_budget__isnull=False, company__is_active=True)
                .values("id", "name", "company_id", "company__time_zone", "monthly_budget"))
    by_zone: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_zone[row["company__time_zone"]].append(row)
    dues: list[Due] = []
    for zone, departments in by_zone.items():
        tz = zoneinfo.ZoneInfo(zone)
        _, _, month_start, _ = calendar_bounds(tz, now.timestamp())
        month = window_ids(tz, now.timestamp())[1]
        spend = dict(UsageRecord.objects.filter(department_id__in=[d["id"] for d in departments], started_at__gte=month_start)
                     .values("department_id").annotate(s=Sum("sell_cost")).values_list("department_id", "s"))
        for d in departments:
            amount = spend.get(d["id"]) or 0
            dues += [Due(d["company_id"], AlertKind.DEPARTMENT, d["id"], d["name"], level, month, amount, d["monthly_budget"])
                     for level in crossed(amount, d["monthly_budget"])]
    return dues


def wallet_levels(spent: int, available: int, threshold: int) -> list[int]:
    """The low-wallet levels (80, 90, 100) reached: ``spent`` (this month's usage) of the money the
    wallet had for the month above ``threshold`` (spent + available − threshold); all three once
    ``available`` is at or below ``threshold``. Amounts in micro-RUB."""
    room = available - threshold
    return list(LEVELS) if room <= 0 else crossed(spent, spent + room)


def _wallet_dues(now: dt.datetime) -> list[Due]:
    sums = wallet_sums(None)
    companies = {c["id"]: c for c in Company.objects.filter(pk__in=list(sums), is_active=True)
                 .values("id", "name", "time_zone", "alert_settings__low_wallet_threshold")}
    default = settings.JETSTREAM["LOW_WALLET_THRESHOLD"]
    by_zone: dict[str, list[int]] = defaultdict(list)
    for company_id, company in companies.items():
        by_zone[company["time_zone"]].append(company_id)
    dues = []
    for zone, ids in by_zone.items():
        tz = zoneinfo.ZoneInfo(zone)
        _, _, month_start, _ = calendar_bounds(tz, now.timestamp())
        month = window_ids(tz, now.timestamp())[1]
        spend = dict(UsageRecord.objects.filter(company_id__in=ids, started_at__gte=month_start)
                     .values("company_id").annotate(s=Sum("sell_cost")).values_list("company_id", "s"))
        for company_id in ids:
            company = companies[company_id]
            credits, debits, limit_less_holds = sums[company_id]
            available = credits - debits + limit_less_holds
            threshold = company["alert_settings__low_wallet_threshold"]
            threshold = default if threshold is None else threshold
            spent = spend.get(company_id) or 0
            dues += [Due(company_id, AlertKind.LOW_WALLET, company_id, company["name"], level, month, spent,
                         spent + max(0, available - threshold), available, threshold)
                     for level in wallet_levels(spent, available, threshold)]
    return dues


def due_alerts(now: dt.datetime) -> list[Due]:
    """Every level every subject has reached in its current period (already-sent ones included)."""
    return _token_dues(now) + _department_dues(now) + _wallet_dues(now)


def _channels(company_ids: set[int]) -> dict[int, list[str]]:
    """Per company, the channels its alerts go out on (none when its alerts are off)."""
    found = {s.company_id: s for s in AlertSettings.objects.filter(company_id__in=company_ids)}
    with_managers = set(Membership.objects.filter(company_id__in=company_ids, user__is_active=True,
                                                  role__in=[CompanyRole.OWNER, CompanyRole.MANAGER]).values_list("company_id", flat=True))
    channels: dict[int, list[str]] = {}
    for company_id in company_ids:
        conf = found.get(company_id)
        if conf is not None and not conf.enabled:
            channels[company_id] = []
            continue
        chosen: list[str] = []
        if (conf is not None and conf.email_list()) or company_id in with_managers:
            chosen.append(Channel.EMAIL)
        if conf is not None and conf.webhook_url and conf.webhook_secret_encrypted:
            chosen.append(Channel.WEBHOOK)
        channels[company_id] = chosen
    return channels


def _payload(due: Due, now: dt.datetime) -> dict[str, Any]:
    payload = {"type": "spend_alert", "kind": due.kind, "company_id": due.company_id, "subject_id": due.subject_id,
               "subject_name": due.subject_name, "level": due.level, "period": due.period,
               "spent_rub": format_rub(due.spent, 0, exact=True), "limit_rub": format_rub(due.limit, 0, exact=True),
               "at": now.isoformat()}
    if due.available is not None and due.threshold is not None:
        payload |= {"available_rub": format_rub(due.available, 0, exact=True),
                    "threshold_rub": format_rub(due.threshold, 0, exact=True)}
    return payload


def scan(now: dt.datetime) -> int:
    """Record every newly reached alert (once per subject, level, period and channel); return how
    many pending rows it added (superseded lower levels not counted; a row a concurrent scan added
    first is counted by both, and stored once)."""
    dues = due_alerts(now)
    if not dues:
        return 0
    channels = _channels({d.company_id for d in dues})
    top: dict[tuple, int] = defaultdict(int)
    for d in dues:
        top[(d.company_id, d.kind, d.subject_id, d.period)] = max(top[(d.company_id, d.kind, d.subject_id, d.period)], d.level)
    existing = set(AlertDelivery.objects.filter(company_id__in={d.company_id for d in dues}, period__in={d.period for d in dues})
                   .values_list("company_id", "kind", "subject_id", "level", "period", "channel"))
    rows = []
    for d in dues:
        for channel in channels[d.company_id]:
            if (d.company_id, d.kind, d.subject_id, d.level, d.period, channel) in existing:
                continue
            status = DeliveryStatus.PENDING if d.level == top[(d.company_id, d.kind, d.subject_id, d.period)] else DeliveryStatus.SUPERSEDED
            rows.append(AlertDelivery(company_id=d.company_id, kind=d.kind, subject_id=d.subject_id, level=d.level, period=d.period,
                                      channel=channel, payload=_payload(d, now), status=status, next_attempt_at=now))
    created = AlertDelivery.objects.bulk_create(rows, ignore_conflicts=True)  # a concurrent scan's rows win
    return sum(r.status == DeliveryStatus.PENDING for r in created)


_SUBJECTS = {
    AlertKind.TOKEN_TOTAL: _("[Jetstream] %(level)s %% of the total limit of token «%(name)s» reached "
                             "(%(spent)s of %(limit)s RUB, %(period)s)"),
    AlertKind.TOKEN_WEEKLY: _("[Jetstream] %(level)s %% of the weekly limit of token «%(name)s» reached "
                              "(%(spent)s of %(limit)s RUB, %(period)s)"),
    AlertKind.TOKEN_MONTHLY: _("[Jetstream] %(level)s %% of the monthly limit of token «%(name)s» reached "
                               "(%(spent)s of %(limit)s RUB, %(period)s)"),
    AlertKind.DEPARTMENT: _("[Jetstream] %(level)s %% of the monthly budget of department «%(name)s» reached "
                            "(%(spent)s of %(limit)s RUB, %(period)s)"),
    AlertKind.LOW_WALLET: _("[Jetstream] Low wallet: %(level)s %% of this month's money above the threshold is spent "
                            "(%(available)s RUB available, threshold %(threshold)s RUB, %(period)s)"),
}


def _subject_line(payload: dict[str, Any]) -> str:
    """The email subject for an alert's ``payload``, in the platform's language (``LANGUAGE_CODE``)."""
    with translation.override(settings.LANGUAGE_CODE):
        return str(_SUBJECTS[payload["kind"]]) % {
            "level": payload["level"], "name": payload["subject_name"], "spent": payload["spent_rub"],
            "limit": payload["limit_rub"], "period": payload["period"], "available": payload.get("available_rub", ""),
            "threshold": payload.get("threshold_rub", "")}


def _recipients(company: Company) -> list[str]:
    conf = getattr(company, "alert_settings", None)
    if conf is not None and conf.email_list():
        return conf.email_list()
    return list(Membership.objects.filter(company=company, user__is_active=True, role__in=[CompanyRole.OWNER, CompanyRole.MANAGER])
                .order_by("user__email").values_list("user__email", flat=True))


def _send(row: AlertDelivery) -> None:
    if row.channel == Channel.EMAIL:
        subject = _subject_line(row.payload)
        send_email(_recipients(row.company), subject, subject + "\n\n" + "\n".join(f"{k}: {v}" for k, v in row.payload.items()))
        return
    conf = getattr(row.company, "alert_settings", None)
    if conf is None or not conf.webhook_url:
        raise DeliveryError("webhook no longer configured")
    send_webhook(conf.webhook_url, conf.webhook_secret(), {**row.payload, "delivery_id": row.pk}, delivery_id=str(row.pk))


def backoff(attempts: int) -> dt.timedelta:
    """Wait before retry number ``attempts`` + 1: 1, 2, 4, … minutes, at most an hour."""
    return dt.timedelta(seconds=min(60 * 2 ** max(attempts - 1, 0), 3600))


# How long a claimed alert is left to the worker sending it before another may retry it (a worker
# that died mid-send).
CLAIM_LEASE = dt.timedelta(minutes=10)


def deliver(now: dt.datetime, *, batch: int = 100) -> int:
    """Send the pending alerts whose time has come (at most ``batch``); return how many went out.

    Due rows are claimed in a short transaction (locked ``SKIP LOCKED``, their next attempt pushed
    ``CLAIM_LEASE`` ahead), then sent outside it, so no transaction waits on a webhook and two
    workers never send one alert. A worker that dies after sending and before recording it leaves
    the alert to be sent again after the lease: receivers deduplicate on ``X-Jetstream-Delivery``."""
    with transaction.atomic():
        rows = list(AlertDelivery.objects.select_for_update(skip_locked=True, of=("self",))
                    .filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
                    .select_related("company", "company__alert_settings").order_by("next_attempt_at")[:batch])
        AlertDelivery.objects.filter(pk__in=[r.pk for r in rows]).update(next_attempt_at=now + CLAIM_LEASE)
    return sum(_attempt(row, now) for row in rows)


def _attempt(row: AlertDelivery, now: dt.datetime) -> bool:
    """Send one claimed alert and record the outcome; True if it went out."""
    row.attempts += 1
    try:
        _send(row)
    except Exception as exc:  # noqa: BLE001 - one bad row (an undecryptable secret) is that row's retry
        row.last_error = (str(exc) if isinstance(exc, DeliveryError) else type(exc).__name__)[:300]
        give_up = row.attempts >= settings.JETSTREAM["ALERT_MAX_ATTEMPTS"]
        row.status = DeliveryStatus.FAILED if give_up else DeliveryStatus.PENDING
        row.next_attempt_at = None if give_up else now + backoff(row.attempts)
        logger.warning("alert %s (%s) not delivered, attempt %s: %s", row.pk, row.channel, row.attempts, row.last_error)
        sent = False
    else:
        row.status, row.sent_at, row.last_error, row.next_attempt_at = DeliveryStatus.SENT, now, "", None
        sent = True
    row.save(update_fields=["attempts", "status", "sent_at", "last_error", "next_attempt_at"])
    return sent
