"""API token services: issue, configure, rotate, block, unblock, revoke.

A token's secret exists in clear only in the return value of ``issue_token`` and
``rotate_token_secret`` (to be shown once); the database keeps its sha256 and a display
prefix. The proxy reads tokens through a snapshot cache at most ~1 s stale, so a block or
revoke reaches every replica within that second without any call from here.
"""

from __future__ import annotations

import logging
import time
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, OuterRef, Q, Subquery, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.accounts.models import Company, Membership
from apps.accounts.services import department_tree, remove_member
from apps.billing import services as ledger
from apps.billing.models import UsageRecord, UsageStatus
from apps.proxy.exceptions import TokenStateError
from apps.proxy.models import ApiToken, TokenStatus
from apps.proxy.redis_scripts import SpendKeys, company_key, dept_key
from apps.proxy.windows import calendar_bounds, window_ids
from lib.upsert import UNCHANGED, Outcome, find_for_update, model_default, save_staged, stage

logger = logging.getLogger("jetstream.proxy.tokens")

# Everything about a token a manager may set, besides its company, name, secret and status.
TOKEN_SETTINGS = (
    "department", "owner", "environment",
    "limit_total", "limit_weekly", "limit_monthly", "rpm", "tpm",
    "models_allow", "models_deny", "ip_allow", "max_distinct_ips", "expires_at", "fallbacks",
)


def default_token_settings() -> dict[str, Any]:
    """Every setting at its default: a token with no limits, any model, any address, prod."""
    return {name: model_default(ApiToken, name) for name in TOKEN_SETTINGS}


def check_owner(*, company: Company, owner) -> None:
    """A token's owner works for the token's company (the one rule, for services and forms)."""
    if owner is not None and (company.pk is None or not Membership.objects.filter(user=owner, company=company).exists()):
        raise ValidationError({"owner": _("The owner must be a member of the company.")})


def _checked_settings(company: Company, settings: dict[str, Any]) -> dict[str, Any]:
    unknown = set(settings) - set(TOKEN_SETTINGS)
    if unknown:
        raise TypeError(f"unknown token settings: {', '.join(sorted(unknown))}")
    check_owner(company=company, owner=settings.get("owner"))
    return settings


def _set_secret(token: ApiToken, secret: str | None) -> str:
    """Set the given (or a generated) secret on ``token``; refuse one another token uses."""
    try:
        plain = token.set_secret(secret)
    except ValidationError as exc:
        raise ValidationError({"secret": exc.messages}) from None
    if ApiToken.objects.filter(key_hash=token.key_hash).exclude(pk=token.pk).exists():
        raise ValidationError({"secret": _("Another token already uses this secret.")})
    return plain


def issue_token(
    *,
    company: Company,
    name: str,
    secret: str | None = None,
    status: str = TokenStatus.ACTIVE,
    dry_run: bool = False,
    **settings: Any,
) -> tuple[ApiToken, str | None]:
    """A new token; ``settings`` are any of ``TOKEN_SETTINGS`` (limits in micro-RUB).

    Returns the token and its secret in clear (generated when not given) — show it once. A
    dry run validates and returns no generated secret.
    """
    with transaction.atomic():
        token = ApiToken(company=company, name=name, status=status)
        stage(token, _checked_settings(company, settings))
        plain = _set_secret(token, secret)
        save_staged(token, [], dry_run=dry_run)
        return token, (None if dry_run and secret is None else plain)


def update_token(*, token: ApiToken, name: str | None = None, dry_run: bool = False, **settings: Any) -> Outcome:
    """Change the given ``settings`` (any of ``TOKEN_SETTINGS``) and, if given, the name; the others stay."""
    with transaction.atomic():
        # Lock: two managers editing one token's limits.
        token = find_for_update(ApiToken.objects, dry_run=dry_run, pk=token.pk)
        values = _checked_settings(token.company, settings)
        if name is not None:
            values = {"name": name, **values}
        changed = stage(token, values)
        return save_staged(token, changed, dry_run=dry_run)


def rotate_token_secret(*, token: ApiToken, secret: str | None = None, dry_run: bool = False) -> tuple[ApiToken, str | None]:
    """Replace the secret (with ``secret`` or a generated one); the old one stops working."""
    with transaction.atomic():
        # Lock: a concurrent revoke must not be followed by a rotation that revives the token's use.
        token = find_for_update(ApiToken.objects, dry_run=dry_run, pk=token.pk)
        if token.status == TokenStatus.REVOKED:
            raise TokenStateError(_("A revoked token cannot get a new secret; issue a new token."))
        plain = _set_secret(token, secret)
        save_staged(token, ["secret"], dry_run=dry_run)
        return token, (None if dry_run and secret is None else plain)


def set_token_status(*, token: ApiToken, status: str, reason: str = "", dry_run: bool = False) -> Outcome:
    """Move a token between active and blocked, or revoke it for good."""
    with transaction.atomic():
        # Lock: a block and a revoke of the same token at once.
        token = find_for_update(ApiToken.objects, dry_run=dry_run, pk=token.pk)
        if token.status == status:
            return Outcome(token, UNCHANGED)
        if token.status == TokenStatus.REVOKED:
            raise TokenStateError(_("A revoked token stays revoked; issue a new token."))
        changed = stage(token, {"status": status, "status_reason": reason})
        return save_staged(token, changed, dry_run=dry_run)


def block_token(*, token: ApiToken, reason: str) -> Outcome:
    """``set_token_status`` to BLOCKED (the proxy answers 403 with ``reason``). Raises
    ``TokenStateError`` for a revoked token."""
    return set_token_status(token=token, status=TokenStatus.BLOCKED, reason=reason)


def unblock_token(*, token: ApiToken, reason: str = "") -> Outcome:
    """``set_token_status`` back to ACTIVE. Raises ``TokenStateError`` for a revoked token."""
    return set_token_status(token=token, status=TokenStatus.ACTIVE, reason=reason)


def revoke_token(*, token: ApiToken, reason: str) -> Outcome:
    """``set_token_status`` to REVOKED, for good (UNCHANGED if it already is)."""
    return set_token_status(token=token, status=TokenStatus.REVOKED, reason=reason)


# A token blocked because a spend limit is reached (``rollover.enforce_limits``) carries a reason that
# starts with this; only such blocks are lifted by the job (a person's block is never touched).
LIMIT_BLOCK_PREFIX = "Limit reached: "


def block_for_limit(*, token: ApiToken, reason: str) -> bool:
    """Block an ACTIVE token because a spend limit is reached, with ``reason`` (starting with
    ``LIMIT_BLOCK_PREFIX``); a token already blocked (by a person or the job) or revoked is left as
    it is. Returns whether it was blocked."""
    with transaction.atomic():
        token = find_for_update(ApiToken.objects, dry_run=False, pk=token.pk)
        if token is None or token.status != TokenStatus.ACTIVE:
            return False
        save_staged(token, stage(token, {"status": TokenStatus.BLOCKED, "status_reason": reason}), dry_run=False)
        return True


def release_limit_block(*, token: ApiToken) -> bool:
    """Unblock a token the job blocked on a limit (its reason still starts with ``LIMIT_BLOCK_PREFIX``:
    a block a person set meanwhile stays). Returns whether it was unblocked."""
    with transaction.atomic():
        token = find_for_update(ApiToken.objects, dry_run=False, pk=token.pk)
        if token is None or token.status != TokenStatus.BLOCKED or not token.status_reason.startswith(LIMIT_BLOCK_PREFIX):
            return False
        save_staged(token, stage(token, {"status": TokenStatus.ACTIVE, "status_reason": ""}), dry_run=False)
        return True


# --- reading: spend against limits, for the cabinets ------------------------------------------

@dataclass(frozen=True)
class LimitUse:
    """One spend limit and what is used of it, micro-RUB: ``limit`` (None = no limit), ``spent`` —
    settled spend plus what in-flight requests hold, the figure the gateway checks a request against —
    and when the window starts afresh (``resets_at``, None for a total limit)."""

    limit: int | None
    spent: int
    resets_at: datetime | None = None

    @property
    def remaining(self) -> int | None:
        """What may still be spent under the limit (never below zero), micro-RUB; None without a limit."""
        return None if self.limit is None else max(0, self.limit - self.spent)

    @property
    def percent(self) -> int | None:
        """How much of the limit is used, whole percent rounded down (a zero limit counts as 100 %); None without one."""
        if self.limit is None:
            return None
        return 100 if self.limit <= 0 else min(100, self.spent * 100 // self.limit)


@dataclass(frozen=True)
class TokenSpend:
    """A token's spend against each of its limits (micro-RUB), as the gateway counts it.

    ``live`` is True when every figure came from the gateway's Redis counters (what the next
    request is checked against, in-flight holds included); False when some came from the usage
    records in PostgreSQL (Redis had no counter yet, or could not be reached). ``held`` is what
    the token's requests in flight hold right now; ``department`` is the department's monthly
    budget use, None for a token without a department."""

    total: LimitUse
    weekly: LimitUse
    monthly: LimitUse
    department: LimitUse | None
    held: int = 0
    live: bool = True

    @property
    def tightest(self) -> LimitUse | None:
        """The limit with the least remaining (department included), None when the token has none."""
        limited = [use for use in (self.total, self.weekly, self.monthly, self.department) if use is not None and use.limit is not None]
        return min(limited, key=lambda use: use.remaining or 0, default=None)


def _redis_values(client: redis.Redis | None, keys: list[str]) -> list[Any] | None:
    """``MGET`` of ``keys`` (None for each missing key), or None when Redis cannot be reached."""
    if not keys:
        return []
    own = client is None
    try:
        client = client or redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        return client.mget(keys)
    except redis.RedisError:
        logger.warning("spend counters unreadable; the cabinet shows the usage records' figures")
        return None
    finally:
        if own and client is not None:
            client.close()


def _held(client: redis.Redis | None, keys: list[str]) -> list[int]:
    if not keys:
        return []
    own = client is None
    try:
        client = client or redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "a")
        return [int(value or 0) for value in pipe.execute()]
    except redis.RedisError:
        return [0] * len(keys)
    finally:
        if own and client is not None:
            client.close()


def _usage_sums(field: str, ids: set[int], since: datetime | None) -> dict[int, int]:
    """Σ usage records' sell cost (micro-RUB) per ``field`` (``token_id`` / ``department_id``) since ``since``."""
    if not ids:
        return {}
    usage = UsageRecord.objects.filter(**{f"{field}__in": ids})
    if since is not None:
        usage = usage.filter(started_at__gte=since)
    return dict(usage.values(field).annotate(spent=Sum("sell_cost")).values_list(field, "spent"))


def token_spend(tokens: Sequence[ApiToken], *, now: float | None = None, client: redis.Redis | None = None) -> dict[int, TokenSpend]:
    """``{token id: TokenSpend}`` for ``tokens`` (with ``company`` and ``department`` loaded), at ``now``
    (Unix seconds, default the clock), in each company's calendar windows.

    One Redis ``MGET`` for the page; a counter Redis does not have (a token not used since Redis
    started, a window not opened yet) is summed from the usage records instead, as the gateway
    itself would seed it (``counters.load_initial_counters``). Never raises for Redis: without it,
    every figure comes from PostgreSQL (``live`` False)."""
    now = time.time() if now is None else now
    plans = []
    for token in tokens:
        tz = zoneinfo.ZoneInfo(token.company.time_zone)
        week, month, week_end, month_end = window_ids(tz, now)
        week_start, _, month_start, _ = calendar_bounds(tz, now)
        keys = SpendKeys.for_token(token_id=token.pk, company_id=token.company_id, department_id=token.department_id,
                                   week=week, month=month)
        plans.append((token, keys, (week_start, week_end, month_start, month_end), tz))
    flat = [key for _token, keys, _b, _tz in plans for key in (keys.total, keys.week, keys.month, keys.dept)]
    values = _redis_values(client, flat)
    held = _held(client, [keys.held for _t, keys, _b, _tz in plans]) if values is not None else [0] * len(plans)
    result: dict[int, TokenSpend] = {}
    missing: dict[str, set[int]] = {"total": set(), "week": set(), "month": set(), "dept": set()}
    read: dict[tuple[int, str], int] = {}
    for index, (token, keys, _bounds, _tz) in enumerate(plans):
        for offset, scope in enumerate(("total", "week", "month", "dept")):
            if scope == "dept" and not keys.has_dept:
                continue
            value = values[index * 4 + offset] if values is not None else None
            owner = int(token.department_id or 0) if scope == "dept" else token.pk
            if value is None:
                missing[scope].add(owner)
            else:
                read[(owner, scope)] = int(value)
    fallback = _fallback_sums(plans, missing)
    counted = {**fallback, **read}
    for index, (token, _keys, (_ws, week_end, _ms, month_end), tz) in enumerate(plans):
        department = None
        if token.department is not None:
            department = LimitUse(token.department.monthly_budget, counted.get((token.department.pk, "dept"), 0), _aware(month_end, tz))
        live = not any(token.pk in missing[s] for s in ("total", "week", "month")) and token.department_id not in missing["dept"]
        result[token.pk] = TokenSpend(
            total=LimitUse(token.limit_total, counted.get((token.pk, "total"), 0)),
            weekly=LimitUse(token.limit_weekly, counted.get((token.pk, "week"), 0), _aware(week_end, tz)),
            monthly=LimitUse(token.limit_monthly, counted.get((token.pk, "month"), 0), _aware(month_end, tz)),
            department=department, held=held[index], live=live and values is not None)
    return result


def _aware(timestamp: float, tz: zoneinfo.ZoneInfo) -> datetime:
    return datetime.fromtimestamp(timestamp, tz)


def _fallback_sums(plans: list, missing: dict[str, set[int]]) -> dict[tuple[int, str], int]:
    """The missing counters summed from the usage records, per (token or department id, scope)."""
    sums: dict[tuple[int, str], int] = {}
    by_zone: dict[str, list] = {}
    for plan in plans:
        by_zone.setdefault(plan[3].key, []).append(plan)
    for owner, spent in _usage_sums("token_id", missing["total"], None).items():
        sums[(owner, "total")] = spent
    for group in by_zone.values():
        week_start, _we, month_start, _me = group[0][2]
        ids = {plan[0].pk for plan in group}
        for owner, spent in _usage_sums("token_id", missing["week"] & ids, week_start).items():
            sums[(owner, "week")] = spent
        for owner, spent in _usage_sums("token_id", missing["month"] & ids, month_start).items():
            sums[(owner, "month")] = spent
        departments = {plan[0].department_id for plan in group} & missing["dept"]
        for owner, spent in _usage_sums("department_id", departments, month_start).items():
            sums[(owner, "dept")] = spent
    return sums


def department_spend(departments: Sequence[Any], *, now: float | None = None, client: redis.Redis | None = None) -> dict[int, int]:
    """``{department id: spend this calendar month}`` (micro-RUB, in its company's time zone, held
    amounts of requests in flight included) — the figure the gateway checks the monthly budget
    against: Redis's counter when it has one, else the usage records' sum. ``departments`` need
    ``company`` loaded."""
    now = time.time() if now is None else now
    plans = []
    for department in departments:
        tz = zoneinfo.ZoneInfo(department.company.time_zone)
        _week, month, _we, _me = window_ids(tz, now)
        plans.append((department, dept_key(department.pk, month), calendar_bounds(tz, now)[2]))
    values = _redis_values(client, [key for _d, key, _s in plans]) or [None] * len(plans)
    result = {}
    for (department, _key, month_start), value in zip(plans, values, strict=True):
        if value is not None:
            result[department.pk] = int(value)
        else:
            result[department.pk] = _usage_sums("department_id", {department.pk}, month_start).get(department.pk, 0)
    return result


@dataclass(frozen=True)
class UsageLine:
    """One line of a token's usage summary: ``key`` (a ``date`` in the company's time zone, or a
    model name), ``requests``, ``errors`` (requests that did not end ``ok``), ``input_tokens``,
    ``output_tokens`` and ``cost`` (the sell cost, micro-RUB)."""

    key: Any
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost: int


@dataclass(frozen=True)
class TokenUsage:
    """A token's usage over the last ``days`` days (from ``since``): ``by_day`` (newest first, days
    without requests left out), ``by_model`` (dearest first) and the ``total`` line."""

    days: int
    since: datetime
    by_day: list[UsageLine]
    by_model: list[UsageLine]
    total: UsageLine


def token_usage(*, token: ApiToken, days: int = 30, now: datetime | None = None) -> TokenUsage:
    """``token``'s usage records summed per day (the company's time zone) and per requested model
    over the last ``days`` calendar days including today. Costs are sell costs in micro-RUB."""
    tz = zoneinfo.ZoneInfo(token.company.time_zone)
    local = (now or timezone.now()).astimezone(tz)
    since = (local - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    usage = UsageRecord.objects.filter(token=token, started_at__gte=since)
    sums = {"requests": Count("id"), "errors": Count("id", filter=~Q(status=UsageStatus.OK)),
            "input_tokens": Sum("input_tokens"), "output_tokens": Sum("output_tokens"), "cost": Sum("sell_cost")}

    def lines(rows, key: str) -> list[UsageLine]:
        return [UsageLine(row[key], row["requests"], row["errors"], row["input_tokens"] or 0, row["output_tokens"] or 0,
                          row["cost"] or 0) for row in rows]

    by_day = lines(usage.annotate(day=TruncDate("started_at", tzinfo=tz)).values("day").annotate(**sums).order_by("-day"), "day")
    by_model = lines(usage.values("model_name").annotate(**sums).order_by("-cost", "model_name"), "model_name")
    total = UsageLine(None, *(sum(getattr(line, name) for line in by_day)
                              for name in ("requests", "errors", "input_tokens", "output_tokens", "cost")))
    return TokenUsage(days, since, by_day, by_model, total)


def with_last_request(tokens):
    """``tokens`` annotated with ``last_request_at``: when the token's latest written request started
    (None: never). One index probe per token (``usage_token_time``); ``ApiToken.last_used_at`` is
    not kept up to date by the gateway, so the usage records are the source."""
    latest = UsageRecord.objects.filter(token=OuterRef("pk")).order_by("-started_at").values("started_at")[:1]
    return tokens.annotate(last_request_at=Subquery(latest))


def company_tokens(*, company: Company, status: str = "", department: Any = None, environment: str = "", search: str = ""):
    """The company's tokens, newest first, with company and department loaded: only those with
    ``status`` / ``environment`` (a ``TokenStatus`` / ``TokenEnvironment`` value; empty = any), in
    ``department`` (None = any) and whose name or secret prefix contains ``search``."""
    tokens = with_last_request(ApiToken.objects.filter(company=company).select_related("company", "department", "owner"))
    if status:
        tokens = tokens.filter(status=status)
    if environment:
        tokens = tokens.filter(environment=environment)
    if department is not None:
        tokens = tokens.filter(department=department)
    if search.strip():
        tokens = tokens.filter(Q(name__icontains=search.strip()) | Q(key_prefix__startswith=search.strip()))
    return tokens.order_by("-created_at", "-id")


def remove_company_member(*, membership: Membership, by: Membership, revoke_tokens: bool = False) -> int:
    """Take a person out of their company (``accounts.services.remove_member``: the owner rules
    apply, ``ValidationError``) and settle the tokens they own there: revoked with
    ``revoke_tokens``, otherwise kept working for the company with no owner. Returns how many
    tokens were revoked. One transaction: the member never leaves with their tokens half handled."""
    with transaction.atomic():
        user, company_id = membership.user, membership.company_id
        remove_member(membership=membership, by=by)
        revoked = 0
        for token in ApiToken.objects.filter(company_id=company_id, owner=user).order_by("pk"):
            if revoke_tokens and token.status != TokenStatus.REVOKED:
                revoke_token(token=token, reason=_("Its owner %(email)s left the company.") % {"email": user.email})
                revoked += 1
            update_token(token=token, owner=None)
        return revoked


@dataclass(frozen=True)
class DepartmentBudget:
    """A department in its tree (``depth``) with its spend this month against its monthly budget
    (``use``: micro-RUB, in-flight holds included, resetting at the month's end), the spend of it
    and every department below it (``subtree_spent``; budgets apply to each department's own
    tokens only) and how many tokens it has (``tokens``, revoked ones aside)."""

    department: Any
    depth: int
    use: LimitUse
    subtree_spent: int
    tokens: int


def department_budgets(*, company: Company, now: float | None = None) -> list[DepartmentBudget]:
    """The company's departments, depth first, each with its budget use (``DepartmentBudget``)."""
    now = time.time() if now is None else now
    nodes = department_tree(company=company)
    spent = department_spend([node.department for node in nodes], now=now)
    tokens = dict(ApiToken.objects.filter(company=company).exclude(status=TokenStatus.REVOKED).values("department_id")
                  .annotate(n=Count("id")).values_list("department_id", "n"))
    tz = zoneinfo.ZoneInfo(company.time_zone)
    month_end = calendar_bounds(tz, now)[3]
    return [DepartmentBudget(node.department, node.depth, LimitUse(node.department.monthly_budget, spent[node.department.pk], month_end),
                             spent[node.department.pk] + sum(spent[pk] for pk in node.descendants), tokens.get(node.department.pk, 0))
            for node in nodes]


def tokens_owned(*, company: Company) -> dict[int, int]:
    """``{user id: how many of the company's tokens they own}`` (revoked ones aside)."""
    rows = (ApiToken.objects.filter(company=company, owner__isnull=False).exclude(status=TokenStatus.REVOKED)
            .values("owner_id").annotate(n=Count("id")).values_list("owner_id", "n"))
    return dict(rows)


@dataclass(frozen=True)
class CompanyFunds:
    """A company wallet as the gateway spends from it, micro-RUB: ``balance`` (posted, the ledger),
    ``credit_limit``, ``in_flight`` (reserved by requests running now plus spend not yet written
    to the ledger; 0 when Redis has no figure) and ``available`` (what the next request may
    reserve: balance + credit limit − open ledger holds − in flight)."""

    balance: int
    credit_limit: int
    in_flight: int
    available: int


def company_funds(*, company: Company, client: redis.Redis | None = None) -> CompanyFunds:
    """The company's ``CompanyFunds``: the ledger's figures, less what the gateway's counters say
    is in flight (``js:co:<id>``'s ``out``). Never raises for Redis (then nothing is in flight)."""
    wallet = ledger.company_wallet(company)
    state = ledger.balance(wallet)
    in_flight = 0
    own = client is None
    try:
        client = client or redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        in_flight = int(client.hget(company_key(company.pk), "out") or 0)
    except redis.RedisError:
        logger.warning("company funds: Redis unreadable; in-flight spend not shown")
    finally:
        if own and client is not None:
            client.close()
    return CompanyFunds(state.posted, wallet.credit_limit, in_flight, state.available - in_flight)
