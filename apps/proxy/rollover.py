"""Limit resets: open each calendar window's counters from the ledger, block tokens whose limit is
reached and let them go when it no longer is (Celery beat runs ``roll_over`` every minute).

No job zeroes a counter: weekly and monthly counters are keyed by their window ("2026-W48",
"2026-11", in the company's time zone, ``windows.py``), so a new window is simply a new key. This
job creates that key ahead of the first request (``open_windows``), with the spend PostgreSQL has for
the window (``counters.load_initial_counters``) and Redis ``SET NX`` (``redis_scripts.INIT``): a
window already opened — by a request or by an earlier run — is never touched, so two runs, or a
run beside requests in flight, change nothing that is already counted.

Blocking (``enforce_limits``): a token whose settled spend (usage records, the ledger's side) has
reached one of its limits — total, weekly or monthly; spent ≥ limit, not one request refused for
its size — is blocked with a reason that names the limit and when it resets; the proxy then
answers 403 ``token_blocked`` with that reason. A token blocked this way is unblocked by the first
run after no limit is reached any more: its calendar window rolled over, or a manager raised the
limit. A manager can also unblock it at once (``services.unblock_token``, the admin's "Unblock"
action); if the limit is still reached, the next run blocks it again. Tokens blocked by a person
(any other reason) are never touched.
"""

from __future__ import annotations

import logging
import time
import zoneinfo
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Q, Sum

from apps.billing.models import UsageRecord

from . import services
from .counters import load_initial_counters
from .models import ApiToken, TokenStatus
from .redis_scripts import INIT, WINDOW_TTL, SpendKeys
from .windows import calendar_bounds, window_ids

logger = logging.getLogger("jetstream.proxy.rollover")

LIMIT_SCOPES = ("total", "weekly", "monthly")


@dataclass
class RolloverReport:
    """What one run did: counters opened (token ids), tokens blocked and unblocked (ids)."""

    opened: list[int] = field(default_factory=list)
    blocked: list[int] = field(default_factory=list)
    unblocked: list[int] = field(default_factory=list)


def roll_over(*, now: float | None = None, client: redis.Redis | None = None) -> RolloverReport:
    """Open the current windows' counters of every token Redis knows, then block and unblock tokens
    on their limits (``now``: Unix seconds, default the clock). Idempotent. Raises
    ``redis.RedisError`` when Redis cannot be reached (nothing is blocked or unblocked then)."""
    now = time.time() if now is None else now
    own = client is None
    client = client or redis.Redis.from_url(settings.REDIS_URL)
    try:
        report = RolloverReport(opened=open_windows(client, now))
    finally:
        if own:
            client.close()
    report.blocked, report.unblocked = enforce_limits(now)
    if report.opened or report.blocked or report.unblocked:
        logger.info("limit resets: opened %d, blocked %s, unblocked %s", len(report.opened), report.blocked, report.unblocked)
    return report


def _known_tokens(client: redis.Redis) -> list[int]:
    """Ids of the tokens the gateway has counters for (a ``js:tk:<id>:total`` key)."""
    return sorted({int(key.split(b":")[2]) for key in client.scan_iter("js:tk:*:total", count=1000)})


def open_windows(client: redis.Redis, now: float) -> list[int]:
    """Create the missing counters of the windows around ``now`` for every token the gateway has
    counters for (revoked ones aside), seeded from PostgreSQL with ``SET NX``; return their ids."""
    ids = _known_tokens(client)
    tokens = list(ApiToken.objects.filter(pk__in=ids).exclude(status=TokenStatus.REVOKED).select_related("company"))
    keys = []
    for token in tokens:
        week, month, _, _ = window_ids(zoneinfo.ZoneInfo(token.company.time_zone), now)
        keys.append(SpendKeys.for_token(token_id=token.pk, company_id=token.company_id, department_id=token.department_id,
                                        week=week, month=month))
    pipe = client.pipeline(transaction=False)
    for spend_keys in keys:
        pipe.exists(*spend_keys.as_list()[1:4])
        pipe.exists(spend_keys.dept if spend_keys.has_dept else spend_keys.total)
    found = pipe.execute()
    init = client.register_script(INIT)
    opened = []
    for index, (token, spend_keys) in enumerate(zip(tokens, keys, strict=True)):
        if found[2 * index] == 3 and found[2 * index + 1] == 1:
            continue
        values = load_initial_counters(token.pk, token.company_id, token.department_id, token.company.time_zone, now=now)
        init(keys=spend_keys.as_list(), args=[values.credits, values.debits, values.limit, values.total, values.week,
                                              values.month, values.department, 1 if spend_keys.has_dept else 0, WINDOW_TTL])
        opened.append(token.pk)
    return opened


def _spend(tokens: list[ApiToken], since: datetime | None) -> dict[int, int]:
    """Settled spend (Σ usage records' sell cost, micro-RUB) of ``tokens`` since ``since`` (None: ever)."""
    usage = UsageRecord.objects.filter(token_id__in=[t.pk for t in tokens])
    if since is not None:
        usage = usage.filter(started_at__gte=since)
    return dict(usage.values("token_id").annotate(spent=Sum("sell_cost")).values_list("token_id", "spent"))


def reached_limits(now: float) -> dict[int, tuple[ApiToken, str]]:
    """Tokens (not revoked) with a limit reached at ``now`` → (token, the block reason naming the first
    one reached, its figures and when it resets), from the usage records."""
    tokens = list(ApiToken.objects.exclude(status=TokenStatus.REVOKED)
                  .filter(Q(limit_total__isnull=False) | Q(limit_weekly__isnull=False) | Q(limit_monthly__isnull=False))
                  .select_related("company"))
    by_zone: dict[str, list[ApiToken]] = defaultdict(list)
    for token in tokens:
        by_zone[token.company.time_zone].append(token)
    reached: dict[int, tuple[ApiToken, str]] = {}
    total = _spend(tokens, None)
    for zone, group in by_zone.items():
        tz = zoneinfo.ZoneInfo(zone)
        week_start, week_end, month_start, month_end = calendar_bounds(tz, now)
        spent = {"total": total, "weekly": _spend(group, week_start), "monthly": _spend(group, month_start)}
        resets = {"total": None, "weekly": week_end, "monthly": month_end}
        for token in group:
            for scope in LIMIT_SCOPES:
                limit = getattr(token, f"limit_{scope}")
                amount = spent[scope].get(token.pk, 0)
                if limit is not None and amount >= limit:
                    reached[token.pk] = (token, limit_reason(scope, limit, amount, resets[scope]))
                    break
    return reached


def limit_reason(scope: str, limit: int, spent: int, resets: datetime | None) -> str:
    """The ``status_reason`` of a token blocked on a reached limit (starts with
    ``services.LIMIT_BLOCK_PREFIX``; amounts in RUB with six decimals)."""
    from .pipeline.refusals import rub

    when = f"it resets at {resets.isoformat()}" if resets is not None else "a manager can raise it"
    return f"{services.LIMIT_BLOCK_PREFIX}the {scope} spend limit of {rub(limit)} RUB is spent ({rub(spent)} RUB); {when}."


def enforce_limits(now: float) -> tuple[list[int], list[int]]:
    """Block active tokens whose limit is reached; unblock the limit-blocked ones whose limits are no
    longer reached. Returns (blocked ids, unblocked ids)."""
    reached = reached_limits(now)
    blocked, unblocked = [], []
    for pk, (token, reason) in sorted(reached.items()):
        if _safely(services.block_for_limit, token=token, reason=reason):
            blocked.append(pk)
    for token in ApiToken.objects.filter(status=TokenStatus.BLOCKED, status_reason__startswith=services.LIMIT_BLOCK_PREFIX):
        if token.pk not in reached and _safely(services.release_limit_block, token=token):
            unblocked.append(token.pk)
    return blocked, unblocked


def _safely(change, **kwargs) -> bool:
    """``change(**kwargs)``; a token that cannot be saved (it fails validation) is logged and skipped,
    so one bad row does not stop the run for the others."""
    try:
        return change(**kwargs)
    except ValidationError:
        logger.exception("limit resets: could not change token %s", kwargs["token"].pk)
        return False
