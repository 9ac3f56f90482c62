"""The supplier side of the money: balances, withdrawal requests, statements, per-key spend caps.

Every served request credits its buy cost to the supplier payable of the key's supplier
(``usage:<request id>:buy``, upstream cost → payable, kind ``usage_cost``; see usage_records.py).
From the payable's ledger sums and its recent credits:

* **accrued** — everything credited to the payable (posted credits), all time;
* **on hold** — the part of it credited less than ``JETSTREAM["SUPPLIER_HOLD_DAYS"]`` days ago
  (a holding period for disputes; an accrual exactly that old has matured);
* **pending** — open withdrawal requests (ledger holds on the payable);
* **paid out** — posted payouts; **other debits** — any other posted debit (a correction);
* **available** = accrued − on hold − pending − paid out − other debits: what a new withdrawal
  may take. It can be negative only if a correction debited more than had matured.

A withdrawal request (``request_supplier_withdrawal``) is a ledger hold (withdrawals.py) plus a
``WithdrawalRequest`` row carrying the supplier's payout details as they were; the superadmin
approves (``approve_withdrawal``) or rejects it (``reject_withdrawal``, the hold is voided); the
payout task pays approved ones (payouts.py). Amounts are ``int`` micro-rubles throughout.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import tablib
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, models, transaction
from django.db.models import Q, Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.billing import services as ledger
from apps.billing import withdrawals
from apps.billing.checks import check_amount, check_idempotency_id
from apps.billing.exceptions import InsufficientFunds, LedgerError
from apps.billing.models import (
    PAYOUT_DETAIL_FIELDS,
    Account,
    SupplierPayoutDetails,
    Transfer,
    TransferKind,
    TransferStatus,
    UsageRecord,
    UsageStatus,
    WithdrawalRequest,
    WithdrawalStatus,
)
from lib.money import format_rub

DEFAULT_HOLD_DAYS = 14


# --- errors ----------------------------------------------------------------------------------

class SupplierError(LedgerError):
    """Base of the errors this module raises on purpose (besides the ledger's own)."""


class NoPayoutDetails(SupplierError):
    """The supplier has no payout details, or those given are incomplete."""


class WithdrawalStateError(SupplierError):
    """The withdrawal is not in a state that allows this step (e.g. approving a rejected one)."""


class WithdrawalConflict(SupplierError):
    """The idempotency id was already used for a different withdrawal request."""


class AboveAvailable(InsufficientFunds):
    """A withdrawal of more than the supplier's available balance; nothing was held.

    ``requested``/``available``/``on_hold`` are micro-RUB."""

    def __init__(self, account: Account, requested: int, available: int, on_hold: int) -> None:
        super().__init__(account, requested, available)
        self.on_hold = on_hold
        self.args = (_("You can withdraw at most %(available)s RUB now; requested %(requested)s RUB. "
                       "%(on_hold)s RUB earned in the last %(days)s days is still on hold.")
                     % {"available": format_rub(max(available, 0), 2, exact=True),
                        "requested": format_rub(requested, 2, exact=True),
                        "on_hold": format_rub(on_hold, 2, exact=True), "days": hold_days()},)


# --- balances --------------------------------------------------------------------------------

def hold_days() -> int:
    """The holding period in whole days (``JETSTREAM["SUPPLIER_HOLD_DAYS"]``, default 14)."""
    return int(settings.JETSTREAM.get("SUPPLIER_HOLD_DAYS", DEFAULT_HOLD_DAYS))


def maturity_cutoff(now: dt.datetime | None = None) -> dt.datetime:
    """Accruals posted at or before this instant have left their holding period."""
    return (now or timezone.now()) - dt.timedelta(days=hold_days())


@dataclass(frozen=True)
class SupplierBalance:
    """One supplier's figures, micro-RUB (see the module docstring). ``owed`` = accrued − paid
    out − other debits: what the payable shows the platform owes."""

    accrued: int
    on_hold: int
    pending: int
    paid_out: int
    other_debits: int

    @property
    def available(self) -> int:
        """What a new withdrawal may take now."""
        return self.accrued - self.on_hold - self.pending - self.paid_out - self.other_debits

    @property
    def owed(self) -> int:
        """Posted credits less posted debits."""
        return self.accrued - self.paid_out - self.other_debits


_ZERO = SupplierBalance(0, 0, 0, 0, 0)


def supplier_balances(supplier_ids: Iterable[int] | None = None, *, now: dt.datetime | None = None) -> dict[int, SupplierBalance]:
    """``{supplier_id: SupplierBalance}`` for the suppliers among ``supplier_ids`` (``None``: all)
    that have a payable; a supplier without one is absent (it has earned nothing).

    One statement, so the figures come from one snapshot and add up: the payables' running
    sums, their credits inside the holding period (``withdrawals.credits_since_sql``: a few
    per-day rows plus part of one day's transfers, however many requests a supplier serves)
    and their posted payouts (index ``transfer_debit_time``; payouts are few).
    """
    ids = None if supplier_ids is None else list(supplier_ids)
    params = {**withdrawals.credits_since_params(maturity_cutoff(now)), "all": ids is None, "ids": ids or []}
    with connection.cursor() as cursor:
        cursor.execute(_BALANCES_SQL.format(on_hold=withdrawals.credits_since_sql("a.id")), params)
        rows = cursor.fetchall()
    return {
        supplier: SupplierBalance(accrued=credits, on_hold=int(on_hold), pending=pending, paid_out=int(paid),
                                  other_debits=debits - int(paid))
        for supplier, credits, debits, pending, on_hold, paid in rows
    }


_BALANCES_SQL = """
SELECT a.supplier_id, a.posted_credits, a.posted_debits, a.pending_debits, {on_hold},
       COALESCE((SELECT sum(t.amount) FROM billing_transfer t
                 WHERE t.debit_account_id = a.id AND t.status = 'posted' AND t.kind = 'payout'), 0)
FROM billing_account a
WHERE a.kind = 'supplier_payable' AND (%(all)s OR a.supplier_id = ANY(%(ids)s))
"""


def credit_day_mismatches() -> list[str]:
    """Where the per-day credits (``PayableCreditDay``, kept by a trigger) differ from the posted
    credits of the supplier payables they sum; ``[]`` when they agree. One statement (one
    snapshot), a full scan of the payables' credits: for reconciliation, not a page."""
    with connection.cursor() as cursor:
        cursor.execute(_CREDIT_DAY_MISMATCHES_SQL)
        return [f"payable #{account} on {day}: transfers {credits or 0}, per-day figure {kept or 0}"
                for account, day, credits, kept in cursor.fetchall()]


_CREDIT_DAY_MISMATCHES_SQL = """
WITH credits AS (
    SELECT t.credit_account_id AS account_id, (t.created_at AT TIME ZONE 'UTC')::date AS day, sum(t.amount) AS amount
    FROM billing_transfer t JOIN billing_account a ON a.id = t.credit_account_id AND a.kind = 'supplier_payable'
    WHERE t.status = 'posted' GROUP BY 1, 2
)
SELECT COALESCE(c.account_id, d.account_id), COALESCE(c.day, d.day), c.amount, d.amount
FROM credits c FULL JOIN billing_payablecreditday d ON d.account_id = c.account_id AND d.day = c.day
WHERE c.amount IS DISTINCT FROM d.amount
ORDER BY 1, 2
"""


def supplier_balance(supplier: Any, *, now: dt.datetime | None = None) -> SupplierBalance:
    """The supplier's ``SupplierBalance`` (all zeros when it has no payable yet)."""
    return supplier_balances([supplier.pk], now=now).get(supplier.pk, _ZERO)


# --- withdrawal requests -----------------------------------------------------------------------

def payout_details_snapshot(supplier: Any, details: dict[str, str] | None = None) -> dict[str, str]:
    """The payout details to keep on a request: ``details`` if given (validated as
    ``SupplierPayoutDetails`` would be), else the supplier's saved ones.

    Raises ``NoPayoutDetails`` when there are none or they are incomplete."""
    if details is None:
        saved = SupplierPayoutDetails.objects.filter(supplier=supplier).first()
        if saved is None:
            raise NoPayoutDetails(_("Add your payout details (bank requisites or a card/account reference) first."))
        candidate = saved
    else:
        unknown = set(details) - set(PAYOUT_DETAIL_FIELDS)
        if unknown:
            raise NoPayoutDetails(_("Unknown payout detail fields: %(names)s.") % {"names": ", ".join(sorted(unknown))})
        candidate = SupplierPayoutDetails(supplier=supplier, **{k: str(v).strip() for k, v in details.items()})
    try:
        candidate.full_clean(exclude=["supplier"])
    except ValidationError as exc:
        raise NoPayoutDetails(_("The payout details are incomplete: %(errors)s")
                              % {"errors": "; ".join(exc.messages)}) from None
    return candidate.snapshot()


def request_supplier_withdrawal(*, supplier: Any, amount: int, idempotency_id: str, details: dict[str, str] | None = None,
                                requested_by: Any = None) -> WithdrawalRequest:
    """Ask to be paid ``amount`` micro-RUB (> 0, at most ``supplier_balance(...).available``).

    Holds the amount on the supplier's payable (ledger hold ``withdrawal:<idempotency_id>``) and
    records a REQUESTED ``WithdrawalRequest`` with the payout details snapshot. Retrying with the
    same ``idempotency_id``, supplier and amount returns the original request.

    Raises ``InvalidAmount`` (not a positive integer), ``NoPayoutDetails``, ``AboveAvailable``
    (nothing is held), ``WithdrawalConflict`` (the id names another request).
    """
    check_amount(amount)
    check_idempotency_id(idempotency_id)
    existing = WithdrawalRequest.objects.filter(idempotency_id=idempotency_id).first()
    if existing is not None:
        return _same_request_or_conflict(existing, supplier=supplier, amount=amount)
    snapshot = payout_details_snapshot(supplier, details)
    payable = ledger.supplier_payable(supplier)
    now = timezone.now()
    try:
        with transaction.atomic():
            hold = withdrawals.request_withdrawal(supplier=supplier, amount=amount, idempotency_id=f"withdrawal:{idempotency_id}",
                                                  matured_before=maturity_cutoff(now),
                                                  description=_("Withdrawal request %(id)s") % {"id": idempotency_id})
            request, _created = WithdrawalRequest.objects.get_or_create(
                idempotency_id=idempotency_id,
                defaults={"supplier": supplier, "amount": amount, "payout_details": snapshot, "hold": hold,
                          "requested_by": requested_by})
    except InsufficientFunds:
        balance = supplier_balance(supplier, now=now)
        raise AboveAvailable(payable, amount, balance.available, balance.on_hold) from None
    return _same_request_or_conflict(request, supplier=supplier, amount=amount)


def _same_request_or_conflict(request: WithdrawalRequest, *, supplier: Any, amount: int) -> WithdrawalRequest:
    if request.supplier_id != supplier.pk or request.amount != amount:
        raise WithdrawalConflict(_("Idempotency id %(id)r was already used for withdrawal request #%(pk)s.")
                                 % {"id": request.idempotency_id, "pk": request.pk})
    return request


def approve_withdrawal(*, withdrawal_id: int, by: Any = None) -> WithdrawalRequest:
    """Approve a REQUESTED withdrawal for the next payout run; return it.

    Approving one already approved (or paid) returns it unchanged, whoever approved it.
    Raises ``WithdrawalStateError`` for a rejected or lapsed one (a hold past its expiry is
    released and the request marked LAPSED first) and the model's ``DoesNotExist`` for an unknown id.
    """
    with transaction.atomic():
        # Race: two superadmins approving (or one approving, one rejecting) at once. The row
        # lock makes them take turns; the second sees the first's decision.
        request = WithdrawalRequest.objects.select_for_update().select_related("hold").get(pk=withdrawal_id)
        if request.status in (WithdrawalStatus.APPROVED, WithdrawalStatus.PAID):
            return request
        refusal = _refusal_unless_open(request, _("approve"), allow=(WithdrawalStatus.REQUESTED,))
        if refusal is None:
            _decide(request, WithdrawalStatus.APPROVED, by)
            return request
    raise refusal  # outside the transaction: a lapse found on the way is kept


def reject_withdrawal(*, withdrawal_id: int, by: Any = None, reason: str = "") -> WithdrawalRequest:
    """Reject a requested or approved (not yet paid) withdrawal: void its hold, so the amount is
    available again; return it. Rejecting one already rejected returns it unchanged.

    Raises ``WithdrawalStateError`` for a paid or lapsed one and ``DoesNotExist`` for an unknown id.
    """
    with transaction.atomic():
        # Race: see approve_withdrawal; also the payout task, which locks approved rows.
        request = WithdrawalRequest.objects.select_for_update().select_related("hold").get(pk=withdrawal_id)
        if request.status == WithdrawalStatus.REJECTED:
            return request
        refusal = _refusal_unless_open(request, _("reject"), allow=(WithdrawalStatus.REQUESTED, WithdrawalStatus.APPROVED))
        if refusal is None:
            withdrawals.cancel_withdrawal(withdrawal=request.hold)
            request.reject_reason = reason[:300]
            _decide(request, WithdrawalStatus.REJECTED, by, "reject_reason")
            return request
    raise refusal


def _decide(request: WithdrawalRequest, status: str, by: Any, *more: str) -> None:
    request.status = status
    request.decided_by = by
    request.decided_at = timezone.now()
    request.save(update_fields=["status", "decided_by", "decided_at", *more])


def _refusal_unless_open(request: WithdrawalRequest, action: str, *, allow: tuple[str, ...]) -> WithdrawalStateError | None:
    """None when ``request`` is in ``allow`` with its hold still open; else the error to raise
    (a hold found past its expiry is expired now and the request marked LAPSED)."""
    hold = request.hold
    if request.status in allow and hold.status == TransferStatus.PENDING:
        if hold.expires_at is None or hold.expires_at > timezone.now():
            return None
        ledger.expire_holds(now=timezone.now())  # as the beat task would, a little earlier
        hold.refresh_from_db()
    if request.status in allow and hold.status in (TransferStatus.EXPIRED, TransferStatus.VOIDED):
        request.status = WithdrawalStatus.LAPSED
        request.save(update_fields=["status"])
    return WithdrawalStateError(_("Cannot %(action)s withdrawal request #%(pk)s: it is %(status)s.")
                                % {"action": action, "pk": request.pk, "status": request.get_status_display().lower()})


def mark_lapsed_withdrawals() -> int:
    """Mark requested/approved withdrawals whose hold has expired (or was voided) as LAPSED;
    return how many. Idempotent."""
    return WithdrawalRequest.objects.filter(
        status__in=[WithdrawalStatus.REQUESTED, WithdrawalStatus.APPROVED],
        hold__status__in=[TransferStatus.EXPIRED, TransferStatus.VOIDED],
    ).update(status=WithdrawalStatus.LAPSED)


# --- per-key spend caps --------------------------------------------------------------------------

def month_start(now: dt.datetime | None = None) -> dt.datetime:
    """Midnight of the first day of ``now``'s calendar month in the platform's TIME_ZONE (aware)."""
    local = timezone.localtime(now or timezone.now())
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def key_month_spend(key_ids: Iterable[int] | None = None, *, now: dt.datetime | None = None) -> dict[int, int]:
    """``{supplier_key_id: micro-RUB}`` spent through each key (its usage records' buy cost)
    this calendar month, for the keys among ``key_ids`` (``None``: all) that spent anything."""
    usage = UsageRecord.objects.filter(supplier_key__isnull=False, started_at__gte=month_start(now))
    if key_ids is not None:
        usage = usage.filter(supplier_key_id__in=list(key_ids))
    rows = usage.values_list("supplier_key_id").annotate(total=Sum("buy_cost")).values_list("supplier_key_id", "total")
    return {key: int(total) for key, total in rows if total}


def keys_over_cap(*, now: dt.datetime | None = None) -> set[int]:
    """Ids of the supplier keys whose spend this calendar month (TIME_ZONE) has reached their
    ``monthly_cap`` (micro-RUB, buy price). Keys without a cap never appear.

    One query over the capped keys' usage this month (index ``usage_key_time``); the proxy's
    key balancer calls it on its config refresh and leaves these keys out.
    """
    key_model = cast("type[models.Model]", UsageRecord._meta.get_field("supplier_key").related_model)
    capped = key_model._default_manager.filter(monthly_cap__isnull=False).annotate(
        spent=Sum("usage__buy_cost", filter=Q(usage__started_at__gte=month_start(now))))
    return {pk for pk, cap, spent in capped.values_list("pk", "monthly_cap", "spent") if spent is not None and spent >= cap}


# --- statements ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AccrualLine:
    """Accruals of one day (TIME_ZONE), key and model: ``requests`` usage transfers, ``amount`` micro-RUB."""

    day: dt.date
    key: str
    model: str
    requests: int
    amount: int


@dataclass(frozen=True)
class MovementLine:
    """One other posted movement on the payable: a payout (debit), a correction (credit or debit)."""

    at: dt.datetime
    transfer_id: int
    kind: str
    description: str
    amount: int  # micro-RUB, > 0; the side is the list it is in


@dataclass
class SupplierStatement:
    """A supplier's statement for ``[start, end)``, micro-RUB: ``opening`` + accruals + other
    credits − withdrawals − other debits = ``closing``, each the payable's posted balance."""

    supplier: Any
    start: dt.datetime
    end: dt.datetime
    opening: int
    accruals: list[AccrualLine] = field(default_factory=list)
    other_credits: list[MovementLine] = field(default_factory=list)
    withdrawals: list[MovementLine] = field(default_factory=list)
    other_debits: list[MovementLine] = field(default_factory=list)

    @property
    def total_accrued(self) -> int:
        """Sum of the accrual lines."""
        return sum(line.amount for line in self.accruals)

    @property
    def closing(self) -> int:
        """The balance at ``end``."""
        return (self.opening + self.total_accrued + sum(m.amount for m in self.other_credits)
                - sum(m.amount for m in self.withdrawals) - sum(m.amount for m in self.other_debits))


_ACCRUALS_SQL = """
SELECT (t.created_at AT TIME ZONE %s)::date AS day, u.supplier_key_id, u.model_id, count(*), sum(t.amount)
FROM billing_transfer t LEFT JOIN billing_usagerecord u ON u.request_id = t.metadata->>'request_id'
WHERE t.credit_account_id = %s AND t.status = 'posted' AND t.kind = 'usage_cost'
  AND t.created_at >= %s AND t.created_at < %s
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


def supplier_statement(*, supplier: Any, start: dt.datetime, end: dt.datetime) -> SupplierStatement:
    """The supplier's statement for ``[start, end)`` (aware datetimes) from its payable's posted
    transfers, by the time they were posted. Accruals (kind ``usage_cost``) are grouped by day
    in TIME_ZONE, key and model (from each transfer's usage record); every other posted
    movement is listed on its own. Raises ``SupplierError`` when ``end`` is not after ``start``.
    """
    if not (timezone.is_aware(start) and timezone.is_aware(end) and start < end):
        raise SupplierError(_("A statement period needs aware start < end."))
    payable = ledger.supplier_payable(supplier)
    posted = Transfer.objects.filter(status=TransferStatus.POSTED)
    statement = SupplierStatement(supplier=supplier, start=start, end=end, opening=_balance_before(payable.pk, start))
    statement.accruals = _accrual_lines(payable.pk, start, end)
    window = posted.filter(created_at__gte=start, created_at__lt=end).order_by("created_at", "id")
    for t in window.filter(credit_account=payable).exclude(kind=TransferKind.USAGE_COST):
        statement.other_credits.append(_movement(t))
    for t in window.filter(debit_account=payable):
        (statement.withdrawals if t.kind == TransferKind.PAYOUT else statement.other_debits).append(_movement(t))
    return statement


def _balance_before(payable_id: int, start: dt.datetime) -> int:
    # Today's balance less what was credited since (per-day figures) plus what was debited since
    # (payouts and corrections: few), in one statement so it is one snapshot; never a scan of
    # the payable's whole history.
    params = {**withdrawals.credits_since_params(start - dt.timedelta(microseconds=1)), "account": payable_id,
              "start": start}
    with connection.cursor() as cursor:
        cursor.execute(_BALANCE_BEFORE_SQL.format(since=withdrawals.credits_since_sql("a.id")), params)
        return int(cursor.fetchone()[0])


_BALANCE_BEFORE_SQL = """
SELECT a.posted_credits - a.posted_debits - {since}
       + COALESCE((SELECT sum(t.amount) FROM billing_transfer t
                   WHERE t.debit_account_id = a.id AND t.status = 'posted' AND t.created_at >= %(start)s), 0)
FROM billing_account a WHERE a.id = %(account)s
"""


def _movement(t: Transfer) -> MovementLine:
    return MovementLine(at=t.created_at, transfer_id=t.pk, kind=t.kind, description=t.description, amount=t.amount)


def _accrual_lines(payable_id: int, start: dt.datetime, end: dt.datetime) -> list[AccrualLine]:
    with connection.cursor() as cursor:
        cursor.execute(_ACCRUALS_SQL, [settings.TIME_ZONE, payable_id, start, end])
        rows = cursor.fetchall()
    key_model = cast("type[models.Model]", UsageRecord._meta.get_field("supplier_key").related_model)
    model_model = cast("type[models.Model]", UsageRecord._meta.get_field("model").related_model)
    keys = {k.pk: str(k) for k in key_model._default_manager.filter(pk__in={r[1] for r in rows if r[1]})}
    names = dict(model_model._default_manager.filter(pk__in={r[2] for r in rows if r[2]}).values_list("pk", "name"))
    return [AccrualLine(day=day, key=keys.get(key, "—"), model=names.get(model, "—"), requests=count, amount=int(amount))
            for day, key, model, count, amount in rows]


def statement_dataset(statement: SupplierStatement) -> tablib.Dataset:
    """The statement as one table (section, date, key, model, requests, amount in micro-RUB and
    in RUB), opening first and closing last, for CSV/XLSX export."""
    data = tablib.Dataset(headers=["section", "date", "key", "model", "requests", "amount_micro_rub", "amount_rub"])

    def row(cells: tuple[str, str, str, str, int | str], amount: int) -> None:
        data.append([*cells, amount, format_rub(amount, 2, exact=True)])

    row(("opening", timezone.localtime(statement.start).isoformat(), "", "", ""), statement.opening)
    for a in statement.accruals:
        row(("accrual", a.day.isoformat(), a.key, a.model, a.requests), a.amount)
    for section, lines, sign in (("other credit", statement.other_credits, 1), ("withdrawal", statement.withdrawals, -1),
                                 ("other debit", statement.other_debits, -1)):
        for m in lines:
            row((section, timezone.localtime(m.at).isoformat(), f"#{m.transfer_id}", m.description, ""), sign * m.amount)
    row(("closing", timezone.localtime(statement.end).isoformat(), "", "", ""), statement.closing)
    return data


def export_dataset(data: tablib.Dataset, fmt: str) -> bytes:
    """``data`` as ``csv`` (UTF-8) or ``xlsx`` bytes. Raises ``ValueError`` for another format."""
    if fmt == "csv":
        return cast(str, data.export("csv")).encode("utf-8")
    if fmt == "xlsx":
        return cast(bytes, data.export("xlsx"))
    raise ValueError(f"unknown export format {fmt!r}; use csv or xlsx")


# --- the supplier cabinet's reads and payout details ----------------------------------------------

@dataclass(frozen=True)
class KeyMonth:
    """One supplier key's calendar month so far (TIME_ZONE): ``requests`` it served or failed,
    ``errors`` among them (any status but ``ok``), ``spent`` micro-RUB at the buy price."""

    requests: int
    errors: int
    spent: int


def key_month_figures(key_ids: Iterable[int], *, now: dt.datetime | None = None) -> dict[int, KeyMonth]:
    """``{supplier_key_id: KeyMonth}`` this calendar month for the keys among ``key_ids`` with any
    usage (a key without usage is absent). One aggregate query (index ``usage_key_time``)."""
    ids = list(key_ids)
    if not ids:
        return {}
    rows = (UsageRecord.objects.filter(supplier_key_id__in=ids, started_at__gte=month_start(now))
            .values("supplier_key_id")
            .annotate(n=models.Count("id"), errors=models.Count("id", filter=~Q(status=UsageStatus.OK)),
                      spent=Sum("buy_cost"))
            .values_list("supplier_key_id", "n", "errors", "spent"))
    return {key: KeyMonth(n, errors, int(spent or 0)) for key, n, errors, spent in rows}


def withdrawal_requests(*, supplier: Any = None, statuses: Iterable[str] | None = None) -> models.QuerySet[WithdrawalRequest]:
    """Withdrawal requests, newest first: one supplier's (``None``: every supplier's), optionally
    only those in ``statuses`` (``WithdrawalStatus`` values)."""
    queryset = WithdrawalRequest.objects.select_related("supplier", "decided_by").order_by("-created_at", "-id")
    if supplier is not None:
        queryset = queryset.filter(supplier=supplier)
    if statuses is not None:
        queryset = queryset.filter(status__in=list(statuses))
    return queryset


def save_payout_details(*, supplier: Any, details: dict[str, str]) -> SupplierPayoutDetails:
    """Replace the supplier's payout details by ``details`` (every ``PAYOUT_DETAIL_FIELDS`` name;
    a missing one is blank) and return them. Requests already made keep the snapshot they took.

    Raises ``ValidationError`` (per field, or for neither bank requisites nor a card reference)
    and ``NoPayoutDetails`` for a field name that is not a payout detail; nothing is written then.
    """
    unknown = set(details) - set(PAYOUT_DETAIL_FIELDS)
    if unknown:
        raise NoPayoutDetails(_("Unknown payout detail fields: %(names)s.") % {"names": ", ".join(sorted(unknown))})
    with transaction.atomic():
        # Lock: two owners saving the details at once; the second overwrites the first, whole.
        current = SupplierPayoutDetails.objects.select_for_update().filter(supplier=supplier).first()
        target = current or SupplierPayoutDetails(supplier=supplier)
        for name in PAYOUT_DETAIL_FIELDS:
            setattr(target, name, str(details.get(name) or "").strip())
        target.full_clean(exclude=["supplier"])
        target.save()
        return target
