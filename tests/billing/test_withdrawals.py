"""Supplier withdrawals against real PostgreSQL: a ledger hold from request to payout."""

from __future__ import annotations

import time

import pytest

from apps.billing import services, tasks
from apps.billing.exceptions import HoldExpired, HoldNotPending, IdempotencyConflict, InsufficientFunds, InvalidTransfer
from apps.billing.models import Transfer, TransferKind, TransferStatus
from apps.billing.withdrawals import cancel_withdrawal, pay_withdrawal, request_withdrawal
from tests.billing.conftest import RUB
from tests.billing.test_ledger_concurrency import _in_parallel, _outcomes


def accrue(books, amount: int, idempotency_id: str = "usage:req_1:buy") -> None:
    """What the platform comes to owe the supplier for metered usage."""
    services.transfer(idempotency_id=idempotency_id, debit=books.upstream_cost, credit=books.payable, amount=amount,
                      kind=TransferKind.USAGE_COST)


def test_it_holds_a_withdrawal_then_pays_it_in_full(books):
    accrue(books, 100 * RUB)
    withdrawal = request_withdrawal(supplier=books.supplier, amount=40 * RUB, idempotency_id="withdrawal:1")
    assert (withdrawal.debit_account_id, withdrawal.credit_account_id, withdrawal.kind, withdrawal.status) == (
        books.payable.pk, books.cash.pk, TransferKind.PAYOUT, TransferStatus.PENDING)
    assert withdrawal.metadata == {"supplier_id": books.supplier.pk}
    # Still owed, no longer available to another withdrawal.
    assert services.balance(books.payable) == services.Balance(posted=100 * RUB, pending_debits=40 * RUB, pending_credits=0,
                                                               available=60 * RUB)
    paid = pay_withdrawal(withdrawal=withdrawal, idempotency_id="payout:1")
    assert (paid.debit_account_id, paid.credit_account_id, paid.amount, paid.kind, paid.status, paid.pending_id) == (
        books.payable.pk, books.cash.pk, 40 * RUB, TransferKind.PAYOUT, TransferStatus.POSTED, withdrawal.pk)
    assert Transfer.objects.get(pk=withdrawal.pk).status == TransferStatus.COMMITTED
    assert services.balance(books.payable) == services.Balance(posted=60 * RUB, pending_debits=0, pending_credits=0,
                                                               available=60 * RUB)
    assert services.verify_ledger() == []


def test_a_cancelled_withdrawal_releases_its_amount_and_cannot_be_paid(books):
    accrue(books, 100 * RUB)
    withdrawal = request_withdrawal(supplier=books.supplier, amount=70 * RUB, idempotency_id="withdrawal:1")
    cancelled = cancel_withdrawal(withdrawal=withdrawal)
    assert cancelled.status == TransferStatus.VOIDED
    assert cancel_withdrawal(withdrawal=withdrawal).status == TransferStatus.VOIDED  # again: no change
    assert services.balance(books.payable).available == 100 * RUB
    with pytest.raises(HoldNotPending):
        pay_withdrawal(withdrawal=withdrawal, idempotency_id="payout:1")
    assert not Transfer.objects.filter(idempotency_id="payout:1").exists()
    # A paid withdrawal cannot be cancelled.
    second = request_withdrawal(supplier=books.supplier, amount=70 * RUB, idempotency_id="withdrawal:2")
    pay_withdrawal(withdrawal=second, idempotency_id="payout:2")
    with pytest.raises(HoldNotPending):
        cancel_withdrawal(withdrawal=second)
    assert services.verify_ledger() == []


def test_it_refuses_more_than_is_owed_less_open_withdrawals_and_moves_nothing(books):
    accrue(books, 100 * RUB)
    with pytest.raises(InsufficientFunds) as refused:
        request_withdrawal(supplier=books.supplier, amount=100 * RUB + 1, idempotency_id="withdrawal:too-much")
    assert (refused.value.requested, refused.value.available) == (100 * RUB + 1, 100 * RUB)
    request_withdrawal(supplier=books.supplier, amount=60 * RUB, idempotency_id="withdrawal:1")
    with pytest.raises(InsufficientFunds) as refused:
        request_withdrawal(supplier=books.supplier, amount=40 * RUB + 1, idempotency_id="withdrawal:2")
    assert refused.value.available == 40 * RUB
    assert not Transfer.objects.filter(idempotency_id__in=["withdrawal:too-much", "withdrawal:2"]).exists()
    assert services.balance(books.payable) == services.Balance(posted=100 * RUB, pending_debits=60 * RUB, pending_credits=0,
                                                               available=40 * RUB)
    assert services.balance(books.cash).pending_credits == 60 * RUB
    assert services.verify_ledger() == []


def test_it_refuses_an_overdraft_even_when_an_operator_loosened_the_payable(books):
    accrue(books, 10 * RUB)
    books.payable.debits_must_not_exceed_credits = False
    books.payable.credit_limit = 1000 * RUB
    books.payable.save(update_fields=["debits_must_not_exceed_credits", "credit_limit"])
    with pytest.raises(InsufficientFunds) as refused:
        request_withdrawal(supplier=books.supplier, amount=10 * RUB + 1, idempotency_id="withdrawal:1")
    assert refused.value.available == 10 * RUB
    assert not Transfer.objects.filter(idempotency_id="withdrawal:1").exists()
    assert services.balance(books.payable).pending_debits == 0


def test_a_retried_request_or_payment_moves_the_money_once(books):
    accrue(books, 100 * RUB)
    first = request_withdrawal(supplier=books.supplier, amount=30 * RUB, idempotency_id="withdrawal:1")
    assert request_withdrawal(supplier=books.supplier, amount=30 * RUB, idempotency_id="withdrawal:1").pk == first.pk
    assert services.balance(books.payable).pending_debits == 30 * RUB
    with pytest.raises(IdempotencyConflict):
        request_withdrawal(supplier=books.supplier, amount=31 * RUB, idempotency_id="withdrawal:1")
    paid = pay_withdrawal(withdrawal=first, idempotency_id="payout:1")
    assert pay_withdrawal(withdrawal=first, idempotency_id="payout:1").pk == paid.pk
    # A retried request after the payment still finds the original, now committed.
    again = request_withdrawal(supplier=books.supplier, amount=30 * RUB, idempotency_id="withdrawal:1")
    assert (again.pk, again.status) == (first.pk, TransferStatus.COMMITTED)
    assert services.balance(books.payable) == services.Balance(posted=70 * RUB, pending_debits=0, pending_credits=0,
                                                               available=70 * RUB)
    assert Transfer.objects.filter(kind=TransferKind.PAYOUT).count() == 2  # the hold and its payment
    assert services.verify_ledger() == []


def test_a_withdrawal_past_its_expiry_is_released_by_the_beat_task(books):
    accrue(books, 100 * RUB)
    withdrawal = request_withdrawal(supplier=books.supplier, amount=50 * RUB, idempotency_id="withdrawal:1", ttl_seconds=1)
    time.sleep(1.1)  # expires_at cannot be moved (transfers are immutable), so let it pass
    assert tasks.void_expired_holds() == 1
    assert Transfer.objects.get(pk=withdrawal.pk).status == TransferStatus.EXPIRED
    assert services.balance(books.payable).available == 100 * RUB
    with pytest.raises(HoldExpired):
        pay_withdrawal(withdrawal=withdrawal, idempotency_id="payout:1")
    assert services.verify_ledger() == []


def test_it_refuses_what_is_not_a_withdrawal(books):
    services.top_up(company=books.company, amount=RUB, idempotency_id="invoice:1")
    wallet_hold = services.hold(idempotency_id="h", debit=books.wallet, credit=books.revenue, amount=RUB, ttl_seconds=60)
    payout = services.transfer(idempotency_id="p", debit=books.cash, credit=books.wallet, amount=1, kind=TransferKind.PAYOUT)
    for transfer in (wallet_hold, payout, Transfer(kind=TransferKind.PAYOUT)):
        with pytest.raises(InvalidTransfer):
            pay_withdrawal(withdrawal=transfer, idempotency_id="payout:x")
        with pytest.raises(InvalidTransfer):
            cancel_withdrawal(withdrawal=transfer)
    assert Transfer.objects.get(pk=wallet_hold.pk).status == TransferStatus.PENDING


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("loosened", [False, True], ids=["flagged", "loosened-by-an-operator"])
def test_parallel_withdrawals_never_hold_more_than_is_owed(books, loosened):
    accrue(books, 10 * RUB)
    if loosened:  # no CHECK to lean on: the re-read under the payable's row lock must hold the line
        books.payable.debits_must_not_exceed_credits = False
        books.payable.save(update_fields=["debits_must_not_exceed_credits"])
    results = _in_parallel(8, lambda i: request_withdrawal(supplier=books.supplier, amount=3 * RUB,
                                                           idempotency_id=f"withdrawal:{i}"))
    assert _outcomes(results) == {"ok": 3, "InsufficientFunds": 5}
    assert services.balance(books.payable).pending_debits == 9 * RUB
    assert services.verify_ledger() == []
