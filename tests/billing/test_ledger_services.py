"""Ledger services: accounts, transfers, holds, idempotency, the sweeper, verification.

Every scenario ends with verify_ledger() == []: the sums the triggers keep agree with the transfers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from apps.billing import services, tasks
from apps.billing.exceptions import (
    HoldExpired,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidTransfer,
    LedgerError,
)
from apps.billing.models import Account, AccountKind, Transfer, TransferKind, TransferStatus
from tests.billing.conftest import RUB

pytestmark = pytest.mark.django_db


def _spend(books, amount, idempotency_id, **kwargs):
    return services.transfer(idempotency_id=idempotency_id, debit=books.wallet, credit=books.revenue, amount=amount,
                             kind=TransferKind.USAGE, **kwargs)


def _hold(books, amount, idempotency_id, **kwargs):
    return services.hold(idempotency_id=idempotency_id, debit=books.wallet, credit=books.revenue, amount=amount, **kwargs)


def _raw_hold(books, amount, idempotency_id, *, expired_seconds_ago=60):
    """A hold whose expiry already passed. hold() refuses past expiries, so write it directly
    (the trigger still books it into the pending sums like any hold)."""
    return Transfer.objects.create(
        idempotency_id=idempotency_id, debit_account=books.wallet, credit_account=books.revenue, amount=amount,
        status=TransferStatus.PENDING, kind=TransferKind.HOLD,
        expires_at=timezone.now() - dt.timedelta(seconds=expired_seconds_ago),
    )


# --- accounts --------------------------------------------------------------------------------

class TestAccounts:
    def test_it_creates_each_account_once(self, books):
        from apps.accounts.models import Department

        assert services.company_wallet(books.company) == books.wallet
        assert services.supplier_payable(books.supplier) == books.payable
        assert services.platform_account("platform_revenue") == books.revenue
        department = Department.objects.create(company=books.company, slug="ml", name="ML")
        budget = services.department_budget(department)
        assert services.department_budget(department) == budget
        assert Account.objects.count() == 6

    def test_it_makes_wallets_unable_to_go_negative(self, books):
        assert books.wallet.kind == AccountKind.COMPANY_WALLET
        assert books.wallet.debits_must_not_exceed_credits is True
        assert books.wallet.credit_limit == 0
        assert books.payable.debits_must_not_exceed_credits is True
        assert books.cash.debits_must_not_exceed_credits is False

    def test_it_refuses_an_unknown_platform_kind(self, db):
        with pytest.raises(InvalidTransfer):
            services.platform_account("company_wallet")
        with pytest.raises(InvalidTransfer):
            services.platform_account("nonsense")

    def test_it_refuses_an_unsaved_owner(self, db):
        from apps.accounts.models import Company

        with pytest.raises(InvalidTransfer):
            services.company_wallet(Company(slug="ghost", name="Ghost"))
        with pytest.raises(InvalidTransfer):
            services.company_wallet(None)


# --- validation ------------------------------------------------------------------------------

class TestValidation:
    @pytest.mark.parametrize("amount", [True, False, 1.0, 0.5, Decimal("1"), "100", None, 0, -1, 2**63])
    def test_it_rejects_a_bad_amount_before_touching_the_db(self, books, django_assert_num_queries, amount):
        with django_assert_num_queries(0):
            with pytest.raises(InvalidAmount):
                _spend(books, amount, "bad-amount")
            with pytest.raises(InvalidAmount):
                _hold(books, amount, "bad-amount")
            with pytest.raises(InvalidAmount):
                services.top_up(company=books.company, amount=amount, idempotency_id="bad-amount")
        assert not Transfer.objects.exists()

    def test_it_rejects_a_bad_post_amount_before_touching_the_db(self, books, django_assert_num_queries):
        services.top_up(company=books.company, amount=10 * RUB, idempotency_id="t")
        held = _hold(books, 5 * RUB, "h")
        with django_assert_num_queries(0):
            for amount in (-1, 1.5, Decimal(2), True, 5 * RUB + 1):
                with pytest.raises(InvalidAmount):
                    services.post_hold(hold=held, idempotency_id="p", amount=amount)
        assert services.balance(books.wallet).pending_debits == 5 * RUB

    @pytest.mark.parametrize("kwargs", [
        {"idempotency_id": ""},
        {"idempotency_id": "   "},
        {"idempotency_id": "x" * 201},
        {"idempotency_id": 42},
        {"idempotency_id": "nul\x00byte"},
        {"kind": "gift"},
        {"description": "d" * 301},
        {"metadata": ["not", "a", "dict"]},
        {"metadata": {"when": dt.datetime(2025, 1, 1)}},
    ])
    def test_it_rejects_malformed_transfers(self, books, kwargs):
        params = {"idempotency_id": "ok", "debit": books.wallet, "credit": books.revenue, "amount": 1, **kwargs}
        with pytest.raises(InvalidTransfer):
            services.transfer(**params)
        assert not Transfer.objects.exists()

    def test_it_refuses_the_same_account_on_both_sides(self, books):
        with pytest.raises(InvalidTransfer):
            services.transfer(idempotency_id="self", debit=books.wallet, credit=books.wallet, amount=1)

    def test_it_refuses_unsaved_accounts(self, books):
        with pytest.raises(InvalidTransfer):
            services.transfer(idempotency_id="u", debit=Account(kind=AccountKind.PLATFORM_CASH), credit=books.wallet, amount=1)

    def test_it_reports_all_its_errors_as_ledger_errors(self):
        for exc in (InsufficientFunds, IdempotencyConflict, InvalidAmount, InvalidTransfer, HoldNotPending, HoldExpired):
            assert issubclass(exc, LedgerError)
        assert issubclass(HoldExpired, HoldNotPending)


# --- posted transfers ------------------------------------------------------------------------

class TestTransfers:
    def test_it_tops_up_a_wallet_from_platform_cash(self, books):
        top_up = services.top_up(company=books.company, amount=1500 * RUB, idempotency_id="pay-1", description="invoice 1")
        assert (top_up.debit_account, top_up.credit_account) == (books.cash, books.wallet)
        assert top_up.kind == TransferKind.TOP_UP
        assert top_up.status == TransferStatus.POSTED
        assert services.balance(books.wallet) == services.Balance(posted=1500 * RUB, pending_debits=0, pending_credits=0,
                                                                  available=1500 * RUB)
        assert services.balance(books.cash).posted == -1500 * RUB
        assert services.verify_ledger() == []

    def test_it_moves_money_between_accounts(self, books):
        services.top_up(company=books.company, amount=100 * RUB, idempotency_id="t")
        spent = _spend(books, 30 * RUB + 7, "u-1", description="gpt-4o", metadata={"request_id": "r1"})
        assert spent.metadata == {"request_id": "r1"}
        assert services.balance(books.wallet).posted == 70 * RUB - 7
        assert services.balance(books.revenue).posted == 30 * RUB + 7
        assert services.verify_ledger() == []

    def test_it_refuses_an_overdraft_with_insufficient_funds(self, books):
        services.top_up(company=books.company, amount=100, idempotency_id="t")
        with pytest.raises(InsufficientFunds) as info:
            _spend(books, 101, "too-much")
        assert info.value.account == books.wallet
        assert (info.value.requested, info.value.available) == (101, 100)
        assert "0.000101" in str(info.value)
        assert not Transfer.objects.filter(idempotency_id="too-much").exists()
        _spend(books, 100, "exactly-all")
        assert services.balance(books.wallet).available == 0
        assert services.verify_ledger() == []

    def test_it_lets_a_wallet_go_down_to_its_credit_limit(self, books):
        Account.objects.filter(pk=books.wallet.pk).update(credit_limit=50)
        services.top_up(company=books.company, amount=100, idempotency_id="t")
        _spend(books, 150, "to-the-limit")
        assert services.balance(books.wallet) == services.Balance(posted=-50, pending_debits=0, pending_credits=0, available=0)
        with pytest.raises(InsufficientFunds) as info:
            _spend(books, 1, "past-the-limit")
        assert info.value.available == 0
        assert services.verify_ledger() == []

    def test_it_lets_platform_accounts_go_negative(self, books):
        services.transfer(idempotency_id="c", debit=books.cash, credit=books.revenue, amount=5 * RUB)
        assert services.balance(books.cash).posted == -5 * RUB

    def test_it_keeps_the_callers_transaction_usable_after_a_refusal(self, books):
        with transaction.atomic():
            services.top_up(company=books.company, amount=10, idempotency_id="t")
            with pytest.raises(InsufficientFunds):
                _spend(books, 11, "no")
            _spend(books, 4, "yes")
        assert services.balance(books.wallet).posted == 6
        assert services.verify_ledger() == []

    def test_it_reads_the_balance_from_the_database(self, books):
        stale = Account.objects.get(pk=books.wallet.pk)
        services.top_up(company=books.company, amount=42, idempotency_id="t")
        assert stale.posted_credits == 0
        assert services.balance(stale).posted == 42
        assert stale.posted_credits == 42
        assert services.balance(books.wallet.pk).posted == 42
        with pytest.raises(InvalidTransfer):
            services.balance(10**12)
        with pytest.raises(dataclasses.FrozenInstanceError):
            services.balance(stale).posted = 1  # type: ignore[misc]


# --- idempotency -----------------------------------------------------------------------------

class TestIdempotency:
    def test_it_returns_the_same_transfer_for_a_retry(self, books):
        first = services.top_up(company=books.company, amount=10 * RUB, idempotency_id="pay-7")
        again = services.top_up(company=books.company, amount=10 * RUB, idempotency_id="pay-7", description="retry")
        assert again.pk == first.pk
        assert Transfer.objects.count() == 1
        assert services.balance(books.wallet).posted == 10 * RUB
        assert _spend(books, 3, "u").pk == _spend(books, 3, "u").pk
        assert services.balance(books.wallet).posted == 10 * RUB - 3
        assert services.verify_ledger() == []

    @pytest.mark.parametrize("change", ["amount", "debit", "credit", "kind"])
    def test_it_raises_a_conflict_for_the_same_id_with_other_content(self, books, change):
        services.top_up(company=books.company, amount=10 * RUB, idempotency_id="t")
        original = _spend(books, 5, "u-1")
        params = {"idempotency_id": "u-1", "debit": books.wallet, "credit": books.revenue, "amount": 5, "kind": TransferKind.USAGE}
        params[change] = {"amount": 6, "debit": books.cash, "credit": books.payable, "kind": TransferKind.CORRECTION}[change]
        with pytest.raises(IdempotencyConflict) as info:
            services.transfer(**params)
        assert info.value.existing == original
        assert services.balance(books.wallet).posted == 10 * RUB - 5
        assert services.verify_ledger() == []

    def test_it_keeps_holds_and_posted_transfers_apart(self, books):
        services.top_up(company=books.company, amount=10 * RUB, idempotency_id="t")
        _spend(books, 5, "same-id")
        with pytest.raises(IdempotencyConflict):
            services.hold(idempotency_id="same-id", debit=books.wallet, credit=books.revenue, amount=5, kind=TransferKind.USAGE)
        held = _hold(books, 7, "hold-id")
        with pytest.raises(IdempotencyConflict):
            services.transfer(idempotency_id="hold-id", debit=books.wallet, credit=books.revenue, amount=7, kind=TransferKind.HOLD)
        assert _hold(books, 7, "hold-id").pk == held.pk
        assert services.verify_ledger() == []

    def test_it_returns_a_resolved_hold_for_a_retried_hold(self, books):
        services.top_up(company=books.company, amount=10 * RUB, idempotency_id="t")
        held = _hold(books, 2 * RUB, "h", ttl_seconds=60)
        services.post_hold(hold=held, idempotency_id="h:post", amount=RUB)
        retried = _hold(books, 2 * RUB, "h", ttl_seconds=60)
        assert retried.pk == held.pk
        assert retried.status == TransferStatus.COMMITTED
        assert services.balance(books.wallet) == services.Balance(posted=9 * RUB, pending_debits=0, pending_credits=0, available=9 * RUB)
        assert services.verify_ledger() == []

    def test_it_returns_the_same_posting_for_a_retried_post(self, books):
        services.top_up(company=books.company, amount=10 * RUB, idempotency_id="t")
        held = _hold(books, 2 * RUB, "h")
        posted = services.post_hold(hold=held, idempotency_id="h:post", amount=RUB + 1)
        assert services.post_hold(hold=held, idempotency_id="h:post", amount=RUB + 1).pk == posted.pk
        with pytest.raises(IdempotencyConflict):
            services.post_hold(hold=held, idempotency_id="h:post", amount=RUB + 2)
        with pytest.raises(IdempotencyConflict):
            services.post_hold(hold=held, idempotency_id="h:post", amount=RUB + 1, kind=TransferKind.CORRECTION)
        with pytest.raises(IdempotencyConflict):
            services.post_hold(hold=held, idempotency_id="h:post", amount=0)
        other = _hold(books, 2 * RUB, "h2")
        with pytest.raises(IdempotencyConflict):
            services.post_hold(hold=other, idempotency_id="h:post", amount=RUB + 1)
        assert Transfer.objects.get(pk=other.pk).status == TransferStatus.PENDING
        assert services.balance(books.wallet).posted == 9 * RUB - 1
        assert services.verify_ledger() == []


# --- holds -----------------------------------------------------------------------------------

class TestHolds:
    def test_it_reserves_money_until_the_hold_is_resolved(self, books):
        services.top_up(company=books.company, amount=10 * RUB, idempotency_id="t")
        held = _hold(books, 4 * RUB, "h", ttl_seconds=120)
        assert held.status == TransferStatus.PENDING
        assert held.kind == TransferKind.HOLD
        assert held.expires_at == pytest.approx(timezone.now() + dt.timedelta(seconds=120), abs=dt.timedelta(seconds=5))
        assert services.balance(books.wallet) == services.Balance(posted=10 * RUB, pending_debits=4 * RUB, pending_credits=0,
                                                                  available=6 * RUB)
        assert services.balance(books.revenue) == services.Balance(posted=0, pending_debits=0, pending_credits=4 * RUB, available=0)
        with pytest.raises(InsufficientFunds) as info:
            _spend(books, 6 * RUB + 1, "over")
        assert info.value.available == 6 * RUB
        assert services.verify_ledger() == []

    @override_settings(JETSTREAM={"HOLD_TTL_SECONDS": 900})
    def test_it_takes_the_default_expiry_from_settings(self, books):
        services.top_up(company=books.company, amount=10, idempotency_id="t")
        held = _hold(books, 1, "h")
        assert held.expires_at == pytest.approx(timezone.now() + dt.timedelta(seconds=900), abs=dt.timedelta(seconds=5))

    def test_it_refuses_a_hold_larger_than_the_available_balance(self, books):
        services.top_up(company=books.company, amount=10, idempotency_id="t")
        _hold(books, 6, "h1")
        with pytest.raises(InsufficientFunds) as info:
            _hold(books, 5, "h2")
        assert (info.value.requested, info.value.available) == (5, 4)
        assert services.verify_ledger() == []

    @pytest.mark.parametrize("kwargs", [
        {"ttl_seconds": 0},
        {"ttl_seconds": -5},
        {"ttl_seconds": 1.5},
        {"ttl_seconds": 10**15},
        {"expires_at": dt.datetime(2099, 1, 1)},  # naive
        {"expires_at": "tomorrow"},
        {"expires_at": dt.datetime(2000, 1, 1, tzinfo=dt.UTC)},  # in the past
        {"expires_at": dt.datetime(2099, 1, 1, tzinfo=dt.UTC), "ttl_seconds": 60},
    ])
    def test_it_refuses_a_bad_expiry(self, books, kwargs):
        services.top_up(company=books.company, amount=10, idempotency_id="t")
        with pytest.raises(InvalidTransfer):
            _hold(books, 1, "h", **kwargs)
        assert services.balance(books.wallet).pending_debits == 0

    def test_it_posts_a_hold_for_less_and_releases_the_rest(self, books):
        services.top_up(company=books.company, amount=10 * RUB, idempotency_id="t")
        held = _hold(books, 4 * RUB, "h")
        posted = services.post_hold(hold=held, idempotency_id="h:post", amount=1_234_567, kind=TransferKind.USAGE,
                                    description="chat completion")
        assert (posted.debit_account, posted.credit_account, posted.amount) == (books.wallet, books.revenue, 1_234_567)
        assert posted.pending == held
        assert posted.status == TransferStatus.POSTED
        assert posted.kind == TransferKind.USAGE
        held.refresh_from_db()
        assert held.status == TransferStatus.COMMITTED
        assert held.resolved_at is not None
        assert services.balance(books.wallet) == services.Balance(posted=10 * RUB - 1_234_567, pending_debits=0, pending_credits=0,
                                                                  available=10 * RUB - 1_234_567)
        assert services.balance(books.revenue).posted == 1_234_567
        assert services.verify_ledger() == []

    def test_it_posts_the_full_hold_on_an_exactly_spent_wallet(self, books):
        # Needs the hold released before the posted insert: otherwise the wallet would briefly
        # count 10 RUB held + 10 RUB posted against 10 RUB and the CHECK would refuse it.
        services.top_up(company=books.company, amount=10 * RUB, idempotency_id="t")
        held = _hold(books, 10 * RUB, "h")
        posted = services.post_hold(hold=held, idempotency_id="h:post", amount=10 * RUB)
        assert posted.kind == TransferKind.HOLD  # the hold's kind unless told otherwise
        assert services.balance(books.wallet) == services.Balance(posted=0, pending_debits=0, pending_credits=0, available=0)
        assert services.verify_ledger() == []

    def test_it_voids_a_hold_posted_for_zero(self, books):
        services.top_up(company=books.company, amount=10, idempotency_id="t")
        held = _hold(books, 10, "h")
        assert services.post_hold(hold=held, idempotency_id="h:post", amount=0) is None
        assert Transfer.objects.get(pk=held.pk).status == TransferStatus.VOIDED
        assert not Transfer.objects.filter(idempotency_id="h:post").exists()
        assert services.post_hold(hold=held.pk, idempotency_id="h:post", amount=0) is None
        assert services.balance(books.wallet).available == 10
        assert services.verify_ledger() == []

    def test_it_refuses_to_post_a_hold_twice(self, books):
        services.top_up(company=books.company, amount=10, idempotency_id="t")
        held = _hold(books, 5, "h")
        services.post_hold(hold=held, idempotency_id="p1", amount=3)
        with pytest.raises(HoldNotPending) as info:
            services.post_hold(hold=held, idempotency_id="p2", amount=3)
        assert not isinstance(info.value, HoldExpired)
        assert services.balance(books.wallet).posted == 7
        assert services.verify_ledger() == []

    def test_it_refuses_to_post_a_voided_hold(self, books):
        services.top_up(company=books.company, amount=10, idempotency_id="t")
        held = _hold(books, 5, "h")
        voided = services.void_hold(hold=held)
        assert voided.status == TransferStatus.VOIDED
        with pytest.raises(HoldNotPending):
            services.post_hold(hold=held, idempotency_id="p", amount=1)
        assert services.balance(books.wallet).available == 10
        assert services.verify_ledger() == []

    def test_it_expires_a_hold_posted_after_its_expiry(self, books):
        services.top_up(company=books.company, amount=10, idempotency_id="t")
        late = _raw_hold(books, 5, "late")
        assert services.balance(books.wallet).available == 5
        with pytest.raises(HoldExpired):
            services.post_hold(hold=late, idempotency_id="late:post", amount=5)
        late.refresh_from_db()
        assert late.status == TransferStatus.EXPIRED
        assert not Transfer.objects.filter(idempotency_id="late:post").exists()
        assert services.balance(books.wallet).available == 10
        with pytest.raises(HoldExpired):  # and again, now that it is already expired
            services.post_hold(hold=late, idempotency_id="late:post", amount=5)
        assert services.verify_ledger() == []

    def test_it_voids_idempotently_but_never_a_posted_hold(self, books):
        services.top_up(company=books.company, amount=10, idempotency_id="t")
        held = _hold(books, 5, "h")
        services.void_hold(hold=held)
        assert services.void_hold(hold=held).status == TransferStatus.VOIDED
        expired = _raw_hold(books, 2, "e")
        services.expire_holds()
        assert services.void_hold(hold=expired).status == TransferStatus.EXPIRED
        posted = _hold(books, 3, "p")
        services.post_hold(hold=posted, idempotency_id="p:post", amount=3)
        with pytest.raises(HoldNotPending):
            services.void_hold(hold=posted)
        assert Transfer.objects.get(pk=posted.pk).status == TransferStatus.COMMITTED
        assert services.balance(books.wallet).posted == 7
        assert services.verify_ledger() == []

    def test_it_refuses_to_treat_a_posted_transfer_as_a_hold(self, books):
        services.top_up(company=books.company, amount=10, idempotency_id="t")
        spent = _spend(books, 5, "s")
        with pytest.raises(HoldNotPending):
            services.void_hold(hold=spent)
        with pytest.raises(HoldNotPending):
            services.post_hold(hold=spent, idempotency_id="p", amount=1)
        with pytest.raises(InvalidTransfer):
            services.void_hold(hold=10**12)
        with pytest.raises(InvalidTransfer):
            services.void_hold(hold="1")


# --- the sweeper -----------------------------------------------------------------------------

class TestExpireHolds:
    def test_it_expires_only_holds_past_their_expiry(self, books):
        services.top_up(company=books.company, amount=100, idempotency_id="t")
        stale = [_raw_hold(books, 10, f"stale-{i}") for i in range(5)]
        fresh = _hold(books, 7, "fresh", ttl_seconds=600)
        assert services.expire_holds(batch=2) == 5
        assert set(Transfer.objects.filter(status=TransferStatus.EXPIRED).values_list("pk", flat=True)) == {h.pk for h in stale}
        assert all(h.resolved_at is not None for h in Transfer.objects.filter(status=TransferStatus.EXPIRED))
        assert Transfer.objects.get(pk=fresh.pk).status == TransferStatus.PENDING
        assert services.balance(books.wallet) == services.Balance(posted=100, pending_debits=7, pending_credits=0, available=93)
        assert services.expire_holds() == 0
        assert services.expire_holds(now=timezone.now() + dt.timedelta(minutes=11)) == 1
        assert services.balance(books.wallet).available == 100
        assert services.verify_ledger() == []

    def test_it_refuses_a_bad_batch_or_clock(self, db):
        for kwargs in ({"batch": 0}, {"batch": True}, {"batch": "10"}, {"now": dt.datetime(2030, 1, 1)}):
            with pytest.raises(InvalidTransfer):
                services.expire_holds(**kwargs)

    def test_it_runs_as_a_task_twice_without_harm(self, books):
        services.top_up(company=books.company, amount=100, idempotency_id="t")
        _raw_hold(books, 60, "stale")
        assert tasks.void_expired_holds() == 1
        assert tasks.void_expired_holds() == 0
        assert tasks.void_expired_holds.name == "apps.billing.tasks.void_expired_holds"
        assert services.balance(books.wallet).available == 100
        assert services.verify_ledger() == []


# --- verify_ledger ---------------------------------------------------------------------------

class TestVerifyLedger:
    def test_it_reports_sums_that_disagree_with_transfers(self, books):
        services.top_up(company=books.company, amount=100, idempotency_id="t")
        assert services.verify_ledger() == []
        with connection.cursor() as cursor:
            cursor.execute("UPDATE billing_account SET posted_credits = posted_credits + 1 WHERE id = %s", [books.wallet.pk])
        problems = services.verify_ledger()
        assert f"account #{books.wallet.pk} (company_wallet): posted_credits is 101, transfers say 100" in problems
        assert any(p.startswith("all accounts: posted debits 100 vs credits 101") for p in problems)

    def test_it_reports_a_posting_that_does_not_match_its_hold(self, books):
        services.top_up(company=books.company, amount=100, idempotency_id="t")
        held = _hold(books, 10, "h")
        services.void_hold(hold=held)
        with connection.cursor() as cursor:
            # Only a superuser can bypass the triggers; this corrupts the books on purpose.
            cursor.execute("SET LOCAL session_replication_role = replica")
            cursor.execute(
                "INSERT INTO billing_transfer (idempotency_id, debit_account_id, credit_account_id, amount, status, kind,"
                " pending_id, description, metadata, created_at) VALUES ('bad', %s, %s, 20, 'posted', 'hold', %s, '', '{}', now())",
                [books.wallet.pk, books.cash.pk, held.pk],
            )
            cursor.execute("SET LOCAL session_replication_role = origin")
        problems = services.verify_ledger()
        bad = Transfer.objects.get(idempotency_id="bad")
        assert f"transfer #{bad.pk} (posted) posts hold #{held.pk} which is voided" in problems
        assert any(p.startswith(f"account #{books.wallet.pk} (company_wallet): posted_debits is 0, transfers say 20") for p in problems)


# --- a worked example ------------------------------------------------------------------------

def _cost(input_tokens: int, output_tokens: int, coefficient: str) -> int:
    """GPT-4o-like prices (2.50 / 10.00 USD per 1M), 92.50 RUB per USD, rounded up per request."""
    from fractions import Fraction
    from math import ceil

    usd = Fraction(input_tokens * 250 + output_tokens * 1000, 100 * 1_000_000)
    return ceil(usd * Fraction(9250, 100) * Fraction(coefficient) * RUB)


def test_it_balances_a_month_of_usage_to_the_micro_ruble(personas):
    """Company A tops up twice, makes 40 metered requests (some retried), 6 through holds
    (posted for less, in full, voided, abandoned and swept); company B runs dry; the supplier
    is paid out once (and refused a second payout beyond its accruals). Every account balances to the micro-ruble and debits equal credits."""
    from lib.money import cost_micro

    wallet_a = services.company_wallet(personas.company_a)
    wallet_b = services.company_wallet(personas.company_b)
    payable = services.supplier_payable(personas.supplier)
    revenue = services.platform_account(AccountKind.PLATFORM_REVENUE)
    cost = services.platform_account(AccountKind.UPSTREAM_COST)
    cash = services.platform_account(AccountKind.PLATFORM_CASH)

    services.top_up(company=personas.company_a, amount=1000 * RUB, idempotency_id="invoice:A:1")
    services.top_up(company=personas.company_b, amount=RUB, idempotency_id="invoice:B:1")

    def meter(request_id: str, input_tokens: int, output_tokens: int) -> tuple[int, int]:
        sell = _cost(input_tokens, output_tokens, "1.25")
        buy = _cost(input_tokens, output_tokens, "1")
        # The ledger's arithmetic agrees with the pricing helper the proxy uses.
        assert sell == cost_micro(tokens_by_price=[(input_tokens, 2_500_000), (output_tokens, 10_000_000)],
                                  fx_micro=92_500_000, coefficient=Decimal("1.25"))
        return sell, buy

    sells = buys = 0
    for i in range(40):
        sell, buy = meter(f"req-{i}", 1000 + 37 * i, 200 + 11 * i)
        for _attempt in range(2 if i % 7 == 0 else 1):  # the metering queue redelivers some events
            services.transfer(idempotency_id=f"req-{i}:sell", debit=wallet_a, credit=revenue, amount=sell, kind=TransferKind.USAGE)
            services.transfer(idempotency_id=f"req-{i}:buy", debit=cost, credit=payable, amount=buy, kind=TransferKind.USAGE_COST)
        sells += sell
        buys += buy
        if i == 19:
            services.top_up(company=personas.company_a, amount=500 * RUB, idempotency_id="invoice:A:2")

    # Streaming requests reserve 5 RUB each and settle when the stream ends.
    outcomes = {"h-0": 1_234_567, "h-1": 4_999_999, "h-2": 5 * RUB, "h-3": 0, "h-4": 17}
    holds = {name: services.hold(idempotency_id=name, debit=wallet_a, credit=revenue, amount=5 * RUB, ttl_seconds=600)
             for name in [*outcomes, "h-abandoned"]}
    assert services.balance(wallet_a).pending_debits == 30 * RUB
    for name, amount in outcomes.items():
        services.post_hold(hold=holds[name], idempotency_id=f"{name}:settle", amount=amount, kind=TransferKind.USAGE)
        services.post_hold(hold=holds[name], idempotency_id=f"{name}:settle", amount=amount, kind=TransferKind.USAGE)
        sells += amount
        if amount:
            buy = amount * 4 // 5
            services.transfer(idempotency_id=f"{name}:buy", debit=cost, credit=payable, amount=buy, kind=TransferKind.USAGE_COST)
            buys += buy
    assert services.expire_holds(now=timezone.now() + dt.timedelta(minutes=11)) == 1
    assert Transfer.objects.get(pk=holds["h-abandoned"].pk).status == TransferStatus.EXPIRED

    # Company B cannot spend what it does not have.
    with pytest.raises(InsufficientFunds):
        services.transfer(idempotency_id="B:req-0:sell", debit=wallet_b, credit=revenue, amount=RUB + 1, kind=TransferKind.USAGE)

    # Month end: the supplier is paid 30 RUB; paying more than accrued is refused.
    services.transfer(idempotency_id="payout:1", debit=payable, credit=cash, amount=30 * RUB, kind=TransferKind.PAYOUT)
    with pytest.raises(InsufficientFunds):
        services.transfer(idempotency_id="payout:2", debit=payable, credit=cash, amount=buys, kind=TransferKind.PAYOUT)

    # The worked numbers, fixed: a change in rounding or a double charge shows up here.
    assert sells == 50_310_069
    assert buys == 40_248_055
    assert services.balance(wallet_a) == services.Balance(posted=1500 * RUB - 50_310_069, pending_debits=0, pending_credits=0,
                                                          available=1_449_689_931)
    assert services.balance(wallet_b).posted == RUB
    assert services.balance(revenue).posted == 50_310_069
    assert services.balance(cost).posted == -40_248_055
    assert services.balance(payable).posted == 40_248_055 - 30 * RUB
    assert services.balance(cash).posted == 30 * RUB - 1501 * RUB

    accounts = list(Account.objects.all())
    assert sum(a.posted_debits for a in accounts) == sum(a.posted_credits for a in accounts)
    assert sum(a.pending_debits for a in accounts) == sum(a.pending_credits for a in accounts) == 0
    assert sum(a.credit_balance for a in accounts) == 0
    # A statement: the wallet's posted transfers add up to its balance.
    posted = Transfer.objects.filter(status=TransferStatus.POSTED)
    statement = sum(t.amount for t in posted.filter(credit_account=wallet_a)) - sum(t.amount for t in posted.filter(debit_account=wallet_a))
    assert statement == services.balance(wallet_a).posted
    assert posted.filter(kind=TransferKind.USAGE, debit_account=wallet_a).count() == 40 + 4
    assert services.verify_ledger() == []
