"""Supplier withdrawals: a ledger hold from request to payout.

A supplier asks to be paid some of what the platform owes it (its ``supplier_payable``). The
request is a two-phase hold on the payable towards the platform cash account, kind ``payout``:
from that moment the money is no longer available to another withdrawal, while the payable
still shows it as owed. Finance pays it (the hold is posted in full), cancels it (voided), or
lets it lapse: ``billing.tasks.void_expired_holds`` releases a withdrawal past its expiry.

Amounts are ``int`` micro-rubles. Every call that moves money carries a caller-chosen
idempotency id, as everywhere in the ledger (see services.py). Errors are billing's own
(``apps.billing.exceptions``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.billing import services as ledger
from apps.billing.exceptions import InsufficientFunds, InvalidTransfer
from apps.billing.models import Account, AccountKind, Transfer, TransferKind

WITHDRAWAL_TTL_SECONDS = 30 * 24 * 3600  # how long finance has to pay a request before it lapses


def request_withdrawal(*, supplier: Any, amount: int, idempotency_id: str, ttl_seconds: int = WITHDRAWAL_TTL_SECONDS,
                       description: str = "", matured_before: dt.datetime | None = None) -> Transfer:
    """Hold ``amount`` micro-RUB of what the platform owes ``supplier`` for a payout; return the hold.

    ``amount`` may not exceed what the payable owes (posted credits − posted debits) less the
    withdrawals already open on it. The hold expires after ``ttl_seconds`` seconds (30 days by
    default) unless paid or cancelled first. Retrying with the same ``idempotency_id`` and the
    same supplier and amount returns the original hold, in whatever state it is now.

    With ``matured_before`` (an aware datetime) only credits posted to the payable at or before
    it count: accruals younger than that are still in their holding period (disputes), see
    apps/billing/suppliers.py. ``InsufficientFunds.available`` is then what has matured, less
    what was debited and is held.

    Raises ``InsufficientFunds`` (nothing is held), ``InvalidAmount``, ``InvalidTransfer`` (an
    unsaved supplier, a bad id or ttl), ``IdempotencyConflict`` (the id was used for another transfer).
    """
    payable = ledger.supplier_payable(supplier)
    cash = ledger.platform_account(AccountKind.PLATFORM_CASH)
    with transaction.atomic():
        retry = Transfer.objects.filter(idempotency_id=idempotency_id).exists()
        hold = ledger.hold(idempotency_id=idempotency_id, debit=payable, credit=cash, amount=amount, ttl_seconds=ttl_seconds,
                           kind=TransferKind.PAYOUT, description=description, metadata={"supplier_id": payable.supplier_id})
        if retry:
            return hold
        # A payable is created flagged must-not-go-negative, so the ledger's CHECK has already
        # refused an amount beyond what is owed less open holds. An operator can clear that flag
        # or give the payable a credit limit in the admin, so check again here. Race: two
        # withdrawals for the same supplier at once, each seeing enough before either holds.
        # This read comes after our own INSERT, whose trigger locked the payable row until we
        # commit: the sums read are final, including every other committed withdrawal.
        sums = Account.objects.filter(pk=payable.pk).values_list("posted_credits", "posted_debits", "pending_debits").get()
        left = sums[0] - sums[1] - sums[2]
        if matured_before is not None:
            # Accruals inserted after our lock was taken wait for it, so they are in neither figure.
            left -= credits_since(payable.pk, matured_before)
        if left < 0:
            raise InsufficientFunds(payable, amount, left + amount)  # rolls the hold back
        return hold


def pay_withdrawal(*, withdrawal: Transfer, idempotency_id: str) -> Transfer:
    """Pay a requested withdrawal in full: post its hold; return the posted transfer (micro-RUB,
    payable → platform cash, kind ``payout``, ``pending`` pointing at the hold).

    Retrying with the same ``idempotency_id`` returns the same payment. Raises ``InvalidTransfer``
    (not a withdrawal), ``HoldExpired`` (it lapsed; nothing is paid), ``HoldNotPending`` (it was
    cancelled, or paid under another id), ``IdempotencyConflict``.
    """
    _check_withdrawal(withdrawal)
    paid = ledger.post_hold(hold=withdrawal, idempotency_id=idempotency_id, amount=withdrawal.amount, kind=TransferKind.PAYOUT)
    return cast(Transfer, paid)  # None only for amount 0, and a withdrawal's amount is positive


def cancel_withdrawal(*, withdrawal: Transfer) -> Transfer:
    """Cancel a requested withdrawal: void its hold, so the amount is available again; return the hold.

    Cancelling one already cancelled or lapsed changes nothing. Raises ``InvalidTransfer`` (not a
    withdrawal) and ``HoldNotPending`` (it was already paid).
    """
    _check_withdrawal(withdrawal)
    return ledger.void_hold(hold=withdrawal)


def _check_withdrawal(withdrawal: object) -> None:
    if not (isinstance(withdrawal, Transfer) and withdrawal.pk is not None and withdrawal.kind == TransferKind.PAYOUT
            and withdrawal.pending_id is None and withdrawal.expires_at is not None
            and withdrawal.debit_account.kind == AccountKind.SUPPLIER_PAYABLE):
        raise InvalidTransfer(_("%(transfer)s is not a supplier withdrawal.") % {"transfer": withdrawal})


def credits_since(account_id: int, since: dt.datetime) -> int:
    """Micro-RUB posted to the credit of supplier payable ``account_id`` strictly after ``since``
    (an aware datetime): its accruals still in their holding period. Raises ``InvalidTransfer``
    for a naive ``since``."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {credits_since_sql('%(account)s')}", {"account": account_id, **credits_since_params(since)})
        return int(cursor.fetchone()[0])


def credits_since_sql(account: str) -> str:
    """An SQL expression: the posted credits to the payable whose id is the SQL expression
    ``account`` (a column such as ``a.id``, or a placeholder) after ``%(since)s``, with the
    parameters of ``credits_since_params``. One snapshot: whole UTC days after ``since``'s day
    from ``PayableCreditDay`` (a few rows), the rest of that day from the transfers themselves
    (index ``transfer_credit_time``)."""
    return f"""(
    COALESCE((SELECT sum(d.amount) FROM billing_payablecreditday d
              WHERE d.account_id = {account} AND d.day >= %(next_day)s), 0)
    + COALESCE((SELECT sum(t.amount) FROM billing_transfer t
                WHERE t.credit_account_id = {account} AND t.status = 'posted'
                  AND t.created_at > %(since)s AND t.created_at < %(next_midnight)s), 0))"""


def credits_since_params(since: dt.datetime) -> dict[str, Any]:
    """``{"since", "next_day", "next_midnight"}`` for ``credits_since_sql``. Raises
    ``InvalidTransfer`` for a naive ``since``."""
    if not isinstance(since, dt.datetime) or timezone.is_naive(since):
        raise InvalidTransfer(_("since must be a timezone-aware datetime."))
    next_day = since.astimezone(dt.UTC).date() + dt.timedelta(days=1)
    return {"since": since, "next_day": next_day, "next_midnight": dt.datetime.combine(next_day, dt.time(0), dt.UTC)}
