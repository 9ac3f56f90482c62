"""Ledger services: the only code that moves money.

Every money-moving call carries a caller-chosen idempotency id: the same id with the same
content (accounts, amount, kind, hold-or-posted, hold link) returns the transfer already made
and has no further effect; the same id with different content raises ``IdempotencyConflict``.

The services never touch account sums. Migration 0002's triggers keep ``posted_*`` and
``pending_*`` in step with inserted and resolved transfers, under row locks taken in account id
order, and the CHECK constraint ``account_debits_within_credits`` refuses any statement that
would overdraw a flagged account. So a balance limit is enforced in exactly one place, inside
the INSERT itself, never by check-then-write; the services only translate that refusal into
``InsufficientFunds``.

Amounts are ``int`` micro-rubles (see lib/money.py). Holds are two-phase: ``hold`` reserves,
``post_hold`` moves up to the held amount, ``void_hold`` releases, ``expire_holds`` times out.
Their caller is supplier withdrawals (apps/billing/withdrawals.py: a hold from request to payout);
``billing.tasks.void_expired_holds`` runs ``expire_holds`` on beat. Metered usage does not use
ledger holds (the proxy reserves spend in Redis) and is written through apps/billing/usage_records.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DataError, IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.billing.checks import check_amount, check_common, check_idempotency_id, check_kind, check_text
from apps.billing.exceptions import (
    HoldExpired,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidTransfer,
)
from apps.billing.models import PLATFORM_KINDS, Account, AccountKind, Transfer, TransferKind, TransferStatus

# The CHECK on billing_account that makes a flagged account impossible to overdraw.
_OVERDRAFT_CONSTRAINT = "account_debits_within_credits"
_UNIQUE_VIOLATION = "23505"
_NUMERIC_OUT_OF_RANGE = "22003"
_HOLD_STATES = (TransferStatus.PENDING, TransferStatus.COMMITTED, TransferStatus.VOIDED, TransferStatus.EXPIRED)


@dataclass(frozen=True)
class Balance:
    """An account's balance as the database holds it right now.

    ``posted`` is credits minus debits (what a wallet holds, what a payable owes);
    ``available`` is what may still be debited: posted less open holds plus any credit limit.
    """

    posted: int
    pending_debits: int
    pending_credits: int
    available: int


# --- accounts --------------------------------------------------------------------------------

def company_wallet(company: Any) -> Account:
    """The company's wallet (created on first use). It can never be overdrawn."""
    return _get_or_create_account(kind=AccountKind.COMPANY_WALLET, owner_field="company", owner=company,
                                  must_not_go_negative=True)


def department_budget(department: Any) -> Account:
    """The department's budget account (created on first use). It can never be overspent."""
    return _get_or_create_account(kind=AccountKind.DEPARTMENT_BUDGET, owner_field="department", owner=department,
                                  must_not_go_negative=True)


def supplier_payable(supplier: Any) -> Account:
    """What the platform owes the supplier (created on first use). Payouts never exceed accruals."""
    return _get_or_create_account(kind=AccountKind.SUPPLIER_PAYABLE, owner_field="supplier", owner=supplier,
                                  must_not_go_negative=True)


def platform_account(kind: str) -> Account:
    """One of the platform's own accounts: platform_revenue, upstream_cost, platform_cash or platform_hardware."""
    if kind not in [k.value for k in PLATFORM_KINDS]:
        raise InvalidTransfer(
            _("%(kind)r is not a platform account kind; use one of %(kinds)s.")
            % {"kind": kind, "kinds": ", ".join(k.value for k in PLATFORM_KINDS)}
        )
    # Platform accounts sit on the other side of every wallet: cash goes "negative" by design.
    return _get_or_create_account(kind=AccountKind(kind), owner_field=None, owner=None, must_not_go_negative=False)


def _get_or_create_account(*, kind: AccountKind, owner_field: str | None, owner: Any, must_not_go_negative: bool) -> Account:
    lookup: dict[str, Any] = {"kind": kind}
    if owner_field is not None:
        if owner is None or getattr(owner, "pk", None) is None:
            raise InvalidTransfer(_("A %(kind)s account needs a saved owner.") % {"kind": kind.label})
        lookup[owner_field] = owner
    defaults = {"debits_must_not_exceed_credits": must_not_go_negative, "credit_limit": 0}
    # Race: two first uses of the same account at once. The partial unique constraints
    # (one_wallet_per_company, ...) let only one INSERT through; get_or_create runs its INSERT
    # in a savepoint and, on IntegrityError, reads the winner's row, which READ COMMITTED shows
    # because the loser's INSERT waited for the winner to commit. One retry covers the loser
    # whose re-read still missed (the winner rolled back and a third caller won).
    for attempt in range(2):
        try:
            with transaction.atomic():
                account, _created = Account.objects.get_or_create(**lookup, defaults=defaults)
            return account
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


# --- moving money ----------------------------------------------------------------------------

def transfer(*, idempotency_id: str, debit: Account, credit: Account, amount: int, kind: str = TransferKind.TRANSFER,
             description: str = "", metadata: dict | None = None) -> Transfer:
    """Move ``amount`` from ``debit`` to ``credit`` now (a posted transfer)."""
    check_amount(amount)
    check_common(idempotency_id=idempotency_id, debit=debit, credit=credit, kind=kind, description=description, metadata=metadata)
    with transaction.atomic():
        return _insert_transfer(idempotency_id=idempotency_id, debit=debit, credit=credit, amount=amount, kind=kind,
                                status=TransferStatus.POSTED, description=description, metadata=metadata)


def hold(*, idempotency_id: str, debit: Account, credit: Account, amount: int, expires_at: dt.datetime | None = None,
         ttl_seconds: int | None = None, kind: str = TransferKind.HOLD, description: str = "",
         metadata: dict | None = None) -> Transfer:
    """Reserve ``amount`` on ``debit`` for ``credit`` until ``expires_at`` (a pending transfer).

    Give ``expires_at`` or ``ttl_seconds``, or neither for JETSTREAM["HOLD_TTL_SECONDS"].
    The reservation counts against the debit account's available balance at once.
    """
    check_amount(amount)
    check_common(idempotency_id=idempotency_id, debit=debit, credit=credit, kind=kind, description=description, metadata=metadata)
    if expires_at is not None and ttl_seconds is not None:
        raise InvalidTransfer(_("Give a hold either expires_at or ttl_seconds, not both."))
    if expires_at is not None and (not isinstance(expires_at, dt.datetime) or timezone.is_naive(expires_at)):
        raise InvalidTransfer(_("A hold's expires_at must be a timezone-aware datetime."))
    if ttl_seconds is not None and (not isinstance(ttl_seconds, int) or isinstance(ttl_seconds, bool) or ttl_seconds <= 0):
        raise InvalidTransfer(_("A hold's ttl_seconds must be a positive whole number."))
    with transaction.atomic():
        # A retry of a hold whose expiry has since passed must still find the original, so the
        # idempotency lookup comes before the "expires in the future" check.
        existing = _find_transfer(idempotency_id)
        if existing is not None:
            return _same_or_conflict(existing, debit_id=debit.pk, credit_id=credit.pk, amount=amount, kind=kind,
                                     status=TransferStatus.PENDING, pending_id=None)
        now = timezone.now()
        if expires_at is None:
            ttl = settings.JETSTREAM["HOLD_TTL_SECONDS"] if ttl_seconds is None else ttl_seconds
            try:
                expires_at = now + dt.timedelta(seconds=ttl)
            except OverflowError:
                raise InvalidTransfer(_("A hold's ttl_seconds is too large.")) from None
        if expires_at <= now:
            raise InvalidTransfer(_("A hold must expire in the future."))
        return _insert_transfer(idempotency_id=idempotency_id, debit=debit, credit=credit, amount=amount, kind=kind,
                                status=TransferStatus.PENDING, expires_at=expires_at, description=description, metadata=metadata)


def post_hold(*, hold: Transfer | int, idempotency_id: str, amount: int, kind: str | None = None, description: str = "",
              metadata: dict | None = None) -> Transfer | None:
    """Move ``amount`` (at most what is held) out of a hold; the rest is released.

    The posted transfer goes between the hold's accounts, links back to the hold and takes the
    hold's kind unless ``kind`` is given. ``amount`` 0 voids the hold and returns None.
    A hold no longer pending raises ``HoldNotPending`` (``HoldExpired`` if it timed out); a
    pending hold past its expiry is expired now (that much is committed) and ``HoldExpired`` raised.
    """
    check_amount(amount, allow_zero=True)
    check_idempotency_id(idempotency_id)
    if kind is not None:
        check_kind(kind)
    check_text(description=description, metadata=metadata)
    hold_id = _hold_pk(hold)
    if isinstance(hold, Transfer) and amount > hold.amount:  # a hold's amount never changes
        raise InvalidAmount(amount, _("Cannot post %(amount)s micro-RUB from a hold of %(held)s.") % {"amount": amount, "held": hold.amount})
    timed_out: Transfer | None = None
    with transaction.atomic():
        locked = _lock_hold(hold_id)
        post_kind = kind if kind is not None else locked.kind
        # After the lock: a concurrent retry with this id has committed or rolled back by now.
        existing = _find_transfer(idempotency_id)
        if existing is not None:
            return _same_or_conflict(existing, debit_id=locked.debit_account_id, credit_id=locked.credit_account_id,
                                     amount=amount, kind=post_kind, status=TransferStatus.POSTED, pending_id=locked.pk)
        if amount == 0:
            _void_locked(locked)
            return None
        if amount > locked.amount:
            raise InvalidAmount(amount, _("Cannot post %(amount)s micro-RUB from a hold of %(held)s.") % {"amount": amount, "held": locked.amount})
        if locked.status == TransferStatus.EXPIRED:
            raise HoldExpired(locked)
        if locked.status != TransferStatus.PENDING:
            raise HoldNotPending(locked)
        now = timezone.now()
        assert locked.expires_at is not None  # a pending transfer has an expiry (CHECK hold_has_expiry)
        if locked.expires_at <= now:
            _resolve_hold(locked, status=TransferStatus.EXPIRED, now=now)
            timed_out = locked
        else:
            # Order matters for the overdraft CHECK: release the hold's pending debit first, then
            # insert the posted transfer, so the account never counts the same money twice.
            _resolve_hold(locked, status=TransferStatus.COMMITTED, now=now)
            return _insert_transfer(idempotency_id=idempotency_id, debit=locked.debit_account_id,
                                    credit=locked.credit_account_id, amount=amount, kind=post_kind,
                                    status=TransferStatus.POSTED, pending_id=locked.pk, description=description,
                                    metadata=metadata)
    # Raised outside the atomic block so the expiry itself is kept.
    raise HoldExpired(timed_out)


def void_hold(*, hold: Transfer | int) -> Transfer:
    """Release a hold. Voiding a hold already voided or expired is a no-op; a posted one is an error."""
    hold_id = _hold_pk(hold)
    with transaction.atomic():
        locked = _lock_hold(hold_id)
        _void_locked(locked)
        return locked


def expire_holds(*, now: dt.datetime | None = None, batch: int = 500) -> int:
    """Expire every pending hold whose ``expires_at`` is at or before ``now``; return how many.

    Works in batches, one short transaction each. Safe to run from several workers at once.
    """
    if not isinstance(batch, int) or isinstance(batch, bool) or batch <= 0:
        raise InvalidTransfer(_("batch must be a positive whole number."))
    if now is None:
        now = timezone.now()
    elif not isinstance(now, dt.datetime) or timezone.is_naive(now):
        raise InvalidTransfer(_("now must be a timezone-aware datetime."))
    total = 0
    while True:
        with transaction.atomic():
            # Race: two sweepers, or a sweeper and post_hold/void_hold on the same hold.
            # SKIP LOCKED leaves a hold another transaction holds to that transaction; once it
            # commits the hold is no longer pending, and PostgreSQL re-checks status on the
            # locked row, so no hold is expired twice and no sweeper queues behind a busy hold.
            ids = list(
                Transfer.objects.select_for_update(skip_locked=True)
                .filter(status=TransferStatus.PENDING, expires_at__lte=now)
                .order_by("expires_at", "id")
                .values_list("id", flat=True)[:batch]
            )
            if ids:
                # One statement per batch: the trigger updates each touched account once.
                total += Transfer.objects.filter(id__in=ids, status=TransferStatus.PENDING).update(
                    status=TransferStatus.EXPIRED, resolved_at=timezone.now())
        if len(ids) < batch:
            return total


def top_up(*, company: Any, amount: int, idempotency_id: str, description: str = "") -> Transfer:
    """Credit a company's wallet with money received (platform cash → wallet)."""
    check_amount(amount)
    check_idempotency_id(idempotency_id)
    with transaction.atomic():
        return transfer(idempotency_id=idempotency_id, debit=platform_account(AccountKind.PLATFORM_CASH),
                        credit=company_wallet(company), amount=amount, kind=TransferKind.TOP_UP, description=description)


# --- reading ---------------------------------------------------------------------------------

def balance(account: Account | int) -> Balance:
    """The account's balance, read from the database now (the given instance is refreshed too)."""
    fields = ["posted_debits", "posted_credits", "pending_debits", "pending_credits", "credit_limit"]
    if isinstance(account, Account):
        account.refresh_from_db(fields=fields)
        row = account
    else:
        try:
            row = Account.objects.only(*fields).get(pk=account)
        except (Account.DoesNotExist, ValueError, TypeError):
            raise InvalidTransfer(_("No such ledger account: %(pk)r.") % {"pk": account}) from None
    return Balance(
        posted=row.posted_credits - row.posted_debits,
        pending_debits=row.pending_debits,
        pending_credits=row.pending_credits,
        available=row.available,
    )


_VERIFY_ACCOUNTS_SQL = """
WITH legs AS (
    SELECT debit_account_id AS account_id,
           CASE WHEN status = 'posted' THEN amount ELSE 0 END AS posted_debits,
           0::bigint AS posted_credits,
           CASE WHEN status = 'pending' THEN amount ELSE 0 END AS pending_debits,
           0::bigint AS pending_credits
    FROM {transfer}
    UNION ALL
    SELECT credit_account_id, 0::bigint, CASE WHEN status = 'posted' THEN amount ELSE 0 END,
           0::bigint, CASE WHEN status = 'pending' THEN amount ELSE 0 END
    FROM {transfer}
), expected AS (
    SELECT account_id, sum(posted_debits) AS posted_debits, sum(posted_credits) AS posted_credits,
           sum(pending_debits) AS pending_debits, sum(pending_credits) AS pending_credits
    FROM legs GROUP BY account_id
), compared AS (
    SELECT a.id, a.kind,
           a.posted_debits, COALESCE(e.posted_debits, 0) AS want_posted_debits,
           a.posted_credits, COALESCE(e.posted_credits, 0) AS want_posted_credits,
           a.pending_debits, COALESCE(e.pending_debits, 0) AS want_pending_debits,
           a.pending_credits, COALESCE(e.pending_credits, 0) AS want_pending_credits,
           sum(a.posted_debits) OVER () AS total_posted_debits, sum(a.posted_credits) OVER () AS total_posted_credits,
           sum(a.pending_debits) OVER () AS total_pending_debits, sum(a.pending_credits) OVER () AS total_pending_credits
    FROM {account} a LEFT JOIN expected e ON e.account_id = a.id
)
SELECT id, kind, posted_debits, want_posted_debits, posted_credits, want_posted_credits,
       pending_debits, want_pending_debits, pending_credits, want_pending_credits,
       total_posted_debits, total_posted_credits, total_pending_debits, total_pending_credits
FROM compared
WHERE (posted_debits, posted_credits, pending_debits, pending_credits)
      IS DISTINCT FROM (want_posted_debits, want_posted_credits, want_pending_debits, want_pending_credits)
   OR total_posted_debits <> total_posted_credits OR total_pending_debits <> total_pending_credits
ORDER BY id
"""

_VERIFY_HOLDS_SQL = """
SELECT t.id, t.status, problem FROM (
    SELECT p.id, p.status,
           CASE
             WHEN h.id IS NULL THEN 'points at a missing hold'
             WHEN h.status <> 'committed' THEN 'posts hold #' || h.id || ' which is ' || h.status
             WHEN p.status <> 'posted' THEN 'links a hold but is not posted'
             WHEN (p.debit_account_id, p.credit_account_id) <> (h.debit_account_id, h.credit_account_id)
               THEN 'moves money between other accounts than hold #' || h.id
             WHEN p.amount > h.amount THEN 'posts more than hold #' || h.id || ' held'
           END AS problem
    FROM {transfer} p LEFT JOIN {transfer} h ON h.id = p.pending_id
    WHERE p.pending_id IS NOT NULL
    UNION ALL
    SELECT h.id, h.status,
           CASE
             WHEN h.status = 'committed' AND NOT EXISTS (SELECT 1 FROM {transfer} p WHERE p.pending_id = h.id)
               THEN 'is committed but no posted transfer points at it'
             WHEN h.status IN ('committed', 'voided', 'expired') AND h.resolved_at IS NULL THEN 'is resolved without resolved_at'
             WHEN h.status = 'pending' AND h.expires_at IS NULL THEN 'is pending without an expiry'
           END
    FROM {transfer} h WHERE h.status <> 'posted'
) t
WHERE problem IS NOT NULL
ORDER BY t.id
"""


_SUM_FIELDS = ("posted_debits", "posted_credits", "pending_debits", "pending_credits")


def verify_ledger() -> list[str]:
    """Recompute every account's sums from its transfers and check holds; return the discrepancies.

    An empty list means the ledger is consistent. Each check is one SQL statement, so it sees
    one snapshot: transfers and the sums the triggers maintain always commit together.
    """
    tables = {"transfer": connection.ops.quote_name(Transfer._meta.db_table),
              "account": connection.ops.quote_name(Account._meta.db_table)}
    problems: list[str] = []
    with connection.cursor() as cursor:
        cursor.execute(_VERIFY_ACCOUNTS_SQL.format(**tables))
        rows = cursor.fetchall()
        for pk, kind, *pairs in (row[:10] for row in rows):
            for name, have, want in zip(_SUM_FIELDS, pairs[0::2], pairs[1::2], strict=True):
                if have != want:
                    problems.append(f"account #{pk} ({kind}): {name} is {have}, transfers say {want}")
        if rows:
            total_pd, total_pc, total_nd, total_nc = rows[0][10:]
            if total_pd != total_pc or total_nd != total_nc:
                problems.append(f"all accounts: posted debits {total_pd} vs credits {total_pc}, "
                                f"pending debits {total_nd} vs credits {total_nc}")
        cursor.execute(_VERIFY_HOLDS_SQL.format(**tables))
        problems.extend(f"transfer #{pk} ({status}) {problem}" for pk, status, problem in cursor.fetchall())
    return problems


# --- internals -------------------------------------------------------------------------------

def _insert_transfer(*, idempotency_id: str, amount: int, kind: str, status: str, debit: Account | int, credit: Account | int,
                     pending_id: int | None = None, expires_at: dt.datetime | None = None, description: str = "",
                     metadata: dict | None = None) -> Transfer:
    """Insert one transfer (``debit``/``credit``: accounts or their ids), or return the one this
    idempotency id already made. Call inside atomic()."""
    debit_id = debit.pk if isinstance(debit, Account) else debit
    credit_id = credit.pk if isinstance(credit, Account) else credit
    content: dict[str, Any] = {"debit_id": debit_id, "credit_id": credit_id, "amount": amount, "kind": kind, "status": status,
                               "pending_id": pending_id}
    existing = _find_transfer(idempotency_id)
    if existing is not None:
        return _same_or_conflict(existing, **content)
    try:
        # A savepoint: a refused INSERT must leave the caller's transaction usable.
        with transaction.atomic():
            return Transfer.objects.create(
                idempotency_id=idempotency_id, debit_account_id=debit_id, credit_account_id=credit_id, amount=amount,
                kind=kind, status=status, pending_id=pending_id, expires_at=expires_at, description=description,
                metadata=metadata if metadata is not None else {},
            )
    except IntegrityError as exc:
        if _constraint_name(exc) == _OVERDRAFT_CONSTRAINT:
            # Only the debit side can break the CHECK: credits never reduce what is available.
            raise _insufficient_funds(debit_id, amount) from None
        if _sqlstate(exc) == _UNIQUE_VIOLATION:
            # Race: another caller inserted this idempotency id between our lookup and our
            # INSERT. Our INSERT waited for it to commit, so this read sees it.
            existing = _find_transfer(idempotency_id)
            if existing is not None:
                return _same_or_conflict(existing, **content)
        raise
    except DataError as exc:
        if _sqlstate(exc) == _NUMERIC_OUT_OF_RANGE:
            raise InvalidAmount(amount, _("This amount would overflow an account's sums.")) from None
        raise


def _find_transfer(idempotency_id: str) -> Transfer | None:
    return Transfer.objects.filter(idempotency_id=idempotency_id).first()


def _same_or_conflict(existing: Transfer, *, debit_id: int, credit_id: int, amount: int, kind: str, status: str,
                      pending_id: int | None) -> Transfer:
    # A hold keeps its identity after it is committed, voided or expired: a retried hold()
    # matches it in any of those states. A posted transfer matches only a posted intent.
    existing_intent = TransferStatus.POSTED if existing.status == TransferStatus.POSTED else TransferStatus.PENDING
    same = (
        existing.debit_account_id == debit_id
        and existing.credit_account_id == credit_id
        and existing.amount == amount
        and existing.kind == kind
        and existing_intent == status
        and existing.pending_id == pending_id
    )
    if not same:
        raise IdempotencyConflict(existing.idempotency_id, existing)
    return existing


def _lock_hold(hold_id: int) -> Transfer:
    # Race: post_hold, void_hold and the sweeper on the same hold. The row lock makes them take
    # turns; each then sees the status the previous one committed.
    try:
        locked = Transfer.objects.select_for_update().get(pk=hold_id)
    except Transfer.DoesNotExist:
        raise InvalidTransfer(_("No such hold: #%(pk)s.") % {"pk": hold_id}) from None
    if locked.status not in _HOLD_STATES or locked.pending_id is not None:
        raise HoldNotPending(locked, _("Transfer #%(pk)s is not a hold.") % {"pk": locked.pk})
    return locked


def _void_locked(locked: Transfer) -> None:
    if locked.status in (TransferStatus.VOIDED, TransferStatus.EXPIRED):
        return  # already released; voiding again changes nothing
    if locked.status == TransferStatus.COMMITTED:
        raise HoldNotPending(locked, _("Hold #%(pk)s was already posted; post a correction instead.") % {"pk": locked.pk})
    _resolve_hold(locked, status=TransferStatus.VOIDED, now=timezone.now())


def _resolve_hold(locked: Transfer, *, status: str, now: dt.datetime) -> None:
    # The AFTER UPDATE trigger takes the hold out of both accounts' pending sums.
    updated = Transfer.objects.filter(pk=locked.pk, status=TransferStatus.PENDING).update(status=status, resolved_at=now)
    if updated != 1:  # cannot happen under the row lock; refuse rather than guess
        raise HoldNotPending(locked)
    locked.status = status
    locked.resolved_at = now


def _insufficient_funds(account_id: int, amount: int) -> InsufficientFunds:
    account = Account.objects.get(pk=account_id)
    return InsufficientFunds(account, amount, account.available)


def _hold_pk(hold: Transfer | int) -> int:
    if isinstance(hold, Transfer):
        if hold.pk is None:
            raise InvalidTransfer(_("The hold is not saved."))
        return hold.pk
    if isinstance(hold, int) and not isinstance(hold, bool) and hold > 0:
        return hold
    raise InvalidTransfer(_("A hold is a Transfer or its id, got %(value)r.") % {"value": hold})


def _sqlstate(exc: Exception) -> str | None:
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)


def _constraint_name(exc: Exception) -> str | None:
    diag = getattr(exc.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None)
