"""The supplier side of the money against real PostgreSQL: accruals, balances with a holding
period, withdrawal requests (approve / reject, idempotent, concurrent), statements, key caps."""

from __future__ import annotations

import datetime as dt
import random
import zoneinfo
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

import openpyxl
import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from apps.billing import services
from apps.billing.exceptions import InsufficientFunds, InvalidAmount
from apps.billing.models import (
    Account,
    PayableCreditDay,
    SupplierPayoutDetails,
    Transfer,
    TransferKind,
    TransferStatus,
    UsageRecord,
    UsageStatus,
    WithdrawalRequest,
    WithdrawalStatus,
)
from apps.billing.suppliers import (
    AboveAvailable,
    NoPayoutDetails,
    SupplierBalance,
    WithdrawalConflict,
    WithdrawalStateError,
    approve_withdrawal,
    credit_day_mismatches,
    export_dataset,
    key_month_spend,
    keys_over_cap,
    month_start,
    reject_withdrawal,
    request_supplier_withdrawal,
    statement_dataset,
    supplier_balance,
    supplier_balances,
    supplier_statement,
)
from apps.billing.usage import UsageEvent
from apps.billing.usage_records import ledger_accounts, record_usage_batch
from tests.billing.conftest import RUB
from tests.billing.test_ledger_concurrency import _in_parallel, _outcomes

DAY = dt.timedelta(days=1)
MSK = zoneinfo.ZoneInfo("Europe/Moscow")
BANK = {"recipient": "ООО «Ключи»", "inn": "7707083893", "kpp": "773601001", "bank_name": "ПАО Сбербанк",
        "bik": "044525225", "account_number": "40702810938000000001", "correspondent_account": "30101810400000000225"}


# --- a small market: two suppliers, their keys, two models ---------------------------------------

@dataclass
class Market:
    suppliers: list
    keys: list  # (supplier index, SupplierKey)
    models: list
    accruals: list = field(default_factory=list)  # (supplier index, key, model, created_at, amount)


@pytest.fixture
def market(books) -> Market:
    return build_market(books)


def build_market(books) -> Market:
    """Supplier A (books.supplier: keys k-a1, k-a2, bank requisites) and B (key k-b1, a card
    reference), one provider, two models."""
    from apps.accounts.models import Supplier
    from apps.providers.models import Model, Provider, SupplierKey

    ledger_accounts.clear()
    second = Supplier.objects.create(slug="tokens-ltd", name="Tokens Ltd")
    provider = Provider.objects.create(slug="openai-main", kind="openai", base_url="https://api.openai.com/v1")
    keys = []
    for index, (supplier, name) in enumerate([(books.supplier, "k-a1"), (books.supplier, "k-a2"), (second, "k-b1")]):
        key = SupplierKey(supplier=supplier, provider=provider, name=name, buy_coefficient=Decimal("1.0"))
        key.set_secret(f"sk-test-secret-{index}")
        key.save()
        keys.append((0 if supplier == books.supplier else 1, key))
    models = [Model.objects.create(name=n, provider=provider, upstream_model=n) for n in ("gpt-4o-mini", "gpt-4o")]
    SupplierPayoutDetails.objects.create(supplier=books.supplier, **BANK)
    SupplierPayoutDetails.objects.create(supplier=second, recipient="ИП Токенов", card_reference="card-ref-0042")
    return Market(suppliers=[books.supplier, second], keys=keys, models=models)


def accrue_at(books, market: Market, *, key_index: int, model_index: int, at: dt.datetime, amount: int) -> Transfer:
    """A served request's usage record and its buy-cost accrual, posted at ``at`` (the ledger
    stamps ``now()``; the test writes the row itself, through the same triggers, to have a month)."""
    supplier_index, key = market.keys[key_index]
    supplier = market.suppliers[supplier_index]
    request_id = f"req_{len(market.accruals)}_{key.pk}"
    UsageRecord.objects.create(request_id=request_id, supplier_key=key, model=market.models[model_index],
                               model_name=market.models[model_index].name, provider=key.provider, buy_cost=amount,
                               status=UsageStatus.OK, http_status=200, started_at=at, finished_at=at)
    payable = services.supplier_payable(supplier)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_transfer (idempotency_id, debit_account_id, credit_account_id, amount, status, kind,"
            " description, metadata, created_at) VALUES (%s, %s, %s, %s, 'posted', 'usage_cost', '', %s::jsonb, %s)"
            " RETURNING id",
            [f"usage:{request_id}:buy", books.upstream_cost.pk, payable.pk, amount, f'{{"request_id": "{request_id}"}}', at])
        pk = cursor.fetchone()[0]
    market.accruals.append((supplier_index, key, market.models[model_index], at, amount))
    return Transfer.objects.get(pk=pk)


def give(books, market, amount: int, *, age: dt.timedelta = 30 * DAY, key_index: int = 0) -> Transfer:
    """A matured accrual (older than the holding period) for ``market.keys[key_index]``'s supplier."""
    return accrue_at(books, market, key_index=key_index, model_index=0, at=timezone.now() - age, amount=amount)


# --- accruals ------------------------------------------------------------------------------------

def test_it_accrues_every_served_requests_buy_cost_to_the_keys_supplier(books, market):
    _, key = market.keys[2]
    event = UsageEvent(request_id="req_served", endpoint="chat", status=UsageStatus.OK, http_status=200,
                       started_at=1_780_000_000.0, finished_at=1_780_000_001.0, supplier_key_id=key.pk,
                       supplier_id=key.supplier_id, model_id=market.models[0].pk, buy_cost=1_234_567)
    record_usage_batch(events=[event])
    record_usage_batch(events=[event])  # retried: nothing twice
    accrual = Transfer.objects.get(idempotency_id="usage:req_served:buy")
    assert (accrual.debit_account_id, accrual.credit_account_id, accrual.amount, accrual.kind) == (
        books.upstream_cost.pk, services.supplier_payable(market.suppliers[1]).pk, 1_234_567, TransferKind.USAGE_COST)
    assert supplier_balance(market.suppliers[1]) == SupplierBalance(accrued=1_234_567, on_hold=1_234_567, pending=0,
                                                                     paid_out=0, other_debits=0)
    assert supplier_balance(market.suppliers[0]) == SupplierBalance(0, 0, 0, 0, 0)
    # The per-day figure the trigger keeps counted the retried batch once.
    assert list(PayableCreditDay.objects.values_list("account_id", "amount")) == [(accrual.credit_account_id, 1_234_567)]
    assert services.verify_ledger() == []


# --- balances and the holding period -------------------------------------------------------------

def test_an_accrual_exactly_at_the_end_of_the_holding_period_has_matured(books, market, settings):
    settings.JETSTREAM = {**settings.JETSTREAM, "SUPPLIER_HOLD_DAYS": 14}
    boundary = accrue_at(books, market, key_index=0, model_index=0, at=timezone.now() - 20 * DAY, amount=5 * RUB)
    later = accrue_at(books, market, key_index=0, model_index=1, at=boundary.created_at + dt.timedelta(microseconds=1),
                      amount=3 * RUB)
    at_boundary = boundary.created_at + 14 * DAY
    balance = supplier_balance(books.supplier, now=at_boundary)
    assert (balance.accrued, balance.on_hold, balance.available) == (8 * RUB, 3 * RUB, 5 * RUB)
    one_before = supplier_balance(books.supplier, now=at_boundary - dt.timedelta(microseconds=1))
    assert (one_before.on_hold, one_before.available) == (8 * RUB, 0)
    after = supplier_balance(books.supplier, now=later.created_at + 14 * DAY)
    assert (after.on_hold, after.available) == (0, 8 * RUB)


def test_a_withdrawal_may_take_only_what_has_matured(books, market, settings):
    settings.JETSTREAM = {**settings.JETSTREAM, "SUPPLIER_HOLD_DAYS": 14}
    give(books, market, 10 * RUB, age=14 * DAY + dt.timedelta(seconds=5))
    give(books, market, 7 * RUB, age=14 * DAY - dt.timedelta(minutes=1))
    with pytest.raises(AboveAvailable) as refused:
        request_supplier_withdrawal(supplier=books.supplier, amount=10 * RUB + 1, idempotency_id="w1")
    assert (refused.value.requested, refused.value.available, refused.value.on_hold) == (10 * RUB + 1, 10 * RUB, 7 * RUB)
    # In Russian, the default language (English: "You can withdraw at most 10.00 RUB now; requested
    # 10.000001 RUB. 7.00 RUB earned in the last 14 days is still on hold.").
    assert str(refused.value) == ("Сейчас можно вывести не больше 10.00 руб.; запрошено 10.000001 руб. "
                                  "7.00 руб., заработанные за последние 14 дн., ещё на удержании.")
    assert isinstance(refused.value, InsufficientFunds)
    assert not WithdrawalRequest.objects.exists()
    assert not Transfer.objects.filter(kind=TransferKind.PAYOUT).exists()
    request = request_supplier_withdrawal(supplier=books.supplier, amount=10 * RUB, idempotency_id="w2")
    assert request.status == WithdrawalStatus.REQUESTED
    assert supplier_balance(books.supplier) == SupplierBalance(accrued=17 * RUB, on_hold=7 * RUB, pending=10 * RUB,
                                                               paid_out=0, other_debits=0)
    assert supplier_balance(books.supplier).available == 0
    # With no holding period everything earned is withdrawable.
    settings.JETSTREAM = {**settings.JETSTREAM, "SUPPLIER_HOLD_DAYS": 0}
    assert supplier_balance(books.supplier).available == 7 * RUB


def test_balances_for_many_suppliers_come_in_one_call(books, market):
    give(books, market, 4 * RUB)
    give(books, market, 2 * RUB, age=DAY, key_index=2)
    balances = supplier_balances()
    assert balances[market.suppliers[0].pk] == SupplierBalance(4 * RUB, 0, 0, 0, 0)
    assert balances[market.suppliers[1].pk] == SupplierBalance(2 * RUB, 2 * RUB, 0, 0, 0)


# --- withdrawal requests -----------------------------------------------------------------------------

def test_it_snapshots_the_payout_details_at_request_time(books, market):
    give(books, market, 50 * RUB)
    request = request_supplier_withdrawal(supplier=books.supplier, amount=20 * RUB, idempotency_id="w1")
    details = SupplierPayoutDetails.objects.get(supplier=books.supplier)
    details.account_number = "40702810938000000099"
    details.save()
    request.refresh_from_db()
    assert request.payout_details["account_number"] == "40702810938000000001"
    assert request.payout_details["recipient"] == "ООО «Ключи»"
    hold = request.hold
    assert (hold.idempotency_id, hold.status, hold.amount, hold.debit_account_id, hold.kind) == (
        "withdrawal:w1", TransferStatus.PENDING, 20 * RUB, books.payable.pk, TransferKind.PAYOUT)
    given = request_supplier_withdrawal(supplier=books.supplier, amount=RUB, idempotency_id="w2",
                                        details={"recipient": "Иванов И. И.", "card_reference": "card-7"})
    assert given.payout_details["card_reference"] == "card-7"


@pytest.mark.parametrize("details", [{}, {"recipient": "x", "inn": "123"}, {"recipient": "x", "bik": "044525225"},
                                     {"recipient": "x", "card_reference": "c", "iban": "DE00"}])
def test_it_refuses_a_request_without_usable_payout_details_and_holds_nothing(books, market, details):
    give(books, market, 50 * RUB)
    with pytest.raises(NoPayoutDetails):
        request_supplier_withdrawal(supplier=books.supplier, amount=RUB, idempotency_id="w1", details=details)
    SupplierPayoutDetails.objects.filter(supplier=books.supplier).delete()
    with pytest.raises(NoPayoutDetails, match="Сначала добавьте платёжные реквизиты"):
        request_supplier_withdrawal(supplier=books.supplier, amount=RUB, idempotency_id="w1")
    assert not Transfer.objects.filter(kind=TransferKind.PAYOUT).exists()
    assert not WithdrawalRequest.objects.exists()


@pytest.mark.parametrize("amount", [0, -1, -5 * RUB, 1.5, Decimal("1"), "100", True, None])
def test_it_refuses_zero_negative_and_non_integer_amounts(books, market, amount):
    give(books, market, 50 * RUB)
    with pytest.raises(InvalidAmount):
        request_supplier_withdrawal(supplier=books.supplier, amount=amount, idempotency_id="w1")
    assert not WithdrawalRequest.objects.exists()
    assert services.balance(books.payable).pending_debits == 0


def test_a_retried_request_returns_the_original_and_a_different_one_conflicts(books, market):
    give(books, market, 50 * RUB)
    first = request_supplier_withdrawal(supplier=books.supplier, amount=20 * RUB, idempotency_id="w1")
    assert request_supplier_withdrawal(supplier=books.supplier, amount=20 * RUB, idempotency_id="w1").pk == first.pk
    with pytest.raises(WithdrawalConflict):
        request_supplier_withdrawal(supplier=books.supplier, amount=21 * RUB, idempotency_id="w1")
    with pytest.raises(WithdrawalConflict):
        request_supplier_withdrawal(supplier=market.suppliers[1], amount=20 * RUB, idempotency_id="w1")
    assert services.balance(books.payable).pending_debits == 20 * RUB
    assert WithdrawalRequest.objects.count() == 1


def test_approve_then_reject_and_each_again(books, market, django_user_model):
    admin = django_user_model.objects.create_user(email="root@example.com", password="x")
    give(books, market, 50 * RUB)
    first = request_supplier_withdrawal(supplier=books.supplier, amount=20 * RUB, idempotency_id="w1")
    approved = approve_withdrawal(withdrawal_id=first.pk, by=admin)
    assert (approved.status, approved.decided_by_id) == (WithdrawalStatus.APPROVED, admin.pk)
    decided_at = approved.decided_at
    assert approve_withdrawal(withdrawal_id=first.pk).decided_at == decided_at  # again: unchanged
    assert Transfer.objects.get(pk=first.hold_id).status == TransferStatus.PENDING  # approval moves no money

    second = request_supplier_withdrawal(supplier=books.supplier, amount=30 * RUB, idempotency_id="w2")
    rejected = reject_withdrawal(withdrawal_id=second.pk, by=admin, reason="wrong account")
    assert (rejected.status, rejected.reject_reason) == (WithdrawalStatus.REJECTED, "wrong account")
    assert Transfer.objects.get(pk=second.hold_id).status == TransferStatus.VOIDED
    assert reject_withdrawal(withdrawal_id=second.pk).status == WithdrawalStatus.REJECTED
    with pytest.raises(WithdrawalStateError, match="статус — отклонено"):
        approve_withdrawal(withdrawal_id=second.pk)
    assert supplier_balance(books.supplier).available == 30 * RUB
    # An approved, not yet paid, withdrawal can still be rejected.
    assert reject_withdrawal(withdrawal_id=first.pk).status == WithdrawalStatus.REJECTED
    assert supplier_balance(books.supplier) == SupplierBalance(50 * RUB, 0, 0, 0, 0)
    assert services.verify_ledger() == []


def test_a_request_whose_hold_lapsed_cannot_be_approved(books, market):
    give(books, market, 50 * RUB)
    request = request_supplier_withdrawal(supplier=books.supplier, amount=20 * RUB, idempotency_id="w1")
    services.expire_holds(now=request.hold.expires_at)
    with pytest.raises(WithdrawalStateError, match="статус — истекла"):
        approve_withdrawal(withdrawal_id=request.pk)
    request.refresh_from_db()
    assert request.status == WithdrawalStatus.LAPSED
    assert supplier_balance(books.supplier).available == 50 * RUB


@pytest.mark.django_db(transaction=True)
def test_two_approvals_at_once_decide_once(books, market, django_user_model):
    admins = [django_user_model.objects.create_user(email=f"a{i}@example.com", password="x")
              for i in range(4)]
    give(books, market, 50 * RUB)
    request = request_supplier_withdrawal(supplier=books.supplier, amount=20 * RUB, idempotency_id="w1")
    results = _in_parallel(4, lambda i: approve_withdrawal(withdrawal_id=request.pk, by=admins[i]))
    assert _outcomes(results) == {"ok": 4}
    request.refresh_from_db()
    assert request.status == WithdrawalStatus.APPROVED
    # Every caller got the one decision that won, not its own.
    assert {value.decided_by_id for _, value in results} == {request.decided_by_id}
    assert {value.decided_at for _, value in results} == {request.decided_at}


@pytest.mark.django_db(transaction=True)
def test_an_approval_racing_a_rejection_never_leaves_an_approved_request_without_its_hold(books, market):
    give(books, market, 50 * RUB)
    for round_ in range(4):
        request = request_supplier_withdrawal(supplier=books.supplier, amount=20 * RUB, idempotency_id=f"w{round_}")
        results = _in_parallel(2, lambda i, pk=request.pk: (approve_withdrawal if i == 0 else reject_withdrawal)(withdrawal_id=pk))
        request.refresh_from_db()
        # Rejection wins either way (an approved, unpaid request may still be rejected); the
        # approval either came first or was refused — never approved after the hold was voided.
        assert request.status == WithdrawalStatus.REJECTED
        assert Transfer.objects.get(pk=request.hold_id).status == TransferStatus.VOIDED
        assert results[1][0] == "ok"
        assert results[0][0] == "ok" or isinstance(results[0][1], WithdrawalStateError)
    assert supplier_balance(books.supplier).available == 50 * RUB
    assert services.verify_ledger() == []


@pytest.mark.django_db(transaction=True)
def test_parallel_requests_never_hold_more_than_is_available(books, market):
    give(books, market, 10 * RUB)
    give(books, market, 100 * RUB, age=DAY)  # on hold: must not be withdrawable by anyone
    results = _in_parallel(6, lambda i: request_supplier_withdrawal(supplier=books.supplier, amount=3 * RUB,
                                                                    idempotency_id=f"w{i}"))
    assert _outcomes(results) == {"ok": 3, "AboveAvailable": 3}
    assert supplier_balance(books.supplier) == SupplierBalance(110 * RUB, 100 * RUB, 9 * RUB, 0, 0)
    assert WithdrawalRequest.objects.count() == 3
    assert services.verify_ledger() == []


@pytest.mark.django_db(transaction=True)
def test_a_request_submitted_twice_at_once_holds_once(books, market):
    give(books, market, 10 * RUB)
    results = _in_parallel(4, lambda i: request_supplier_withdrawal(supplier=books.supplier, amount=3 * RUB,
                                                                    idempotency_id="double-click"))
    assert _outcomes(results) == {"ok": 4}
    assert {value.pk for _, value in results} == {WithdrawalRequest.objects.get().pk}
    assert Transfer.objects.filter(kind=TransferKind.PAYOUT).count() == 1
    assert supplier_balance(books.supplier).pending == 3 * RUB


# --- the worked example: a month for two suppliers ---------------------------------------------------

def _month_of_usage(books, market, start: dt.datetime, now: dt.datetime) -> None:
    rng = random.Random(9)
    # Before the period (the opening balance), the period's first microsecond and its days.
    accrue_at(books, market, key_index=0, model_index=0, at=start - dt.timedelta(microseconds=1), amount=1_111_111)
    accrue_at(books, market, key_index=2, model_index=1, at=start - 40 * DAY, amount=2_500_000)
    accrue_at(books, market, key_index=1, model_index=1, at=start, amount=333_333)
    at = start + dt.timedelta(hours=1)
    while at < now - dt.timedelta(hours=2):
        for _ in range(rng.randint(1, 4)):
            # Never in the future: run at 03:00 MSK, today's 01:00 plus ten hours would be.
            when = min(at + dt.timedelta(minutes=rng.randrange(600)), now - dt.timedelta(minutes=1))
            accrue_at(books, market, key_index=rng.randrange(3), model_index=rng.randrange(2),
                      at=when, amount=rng.randint(1, 9_999_999))
        at += DAY


def _expected_accrual_lines(market, supplier_index: int, start, end) -> dict:
    lines: dict = defaultdict(lambda: [0, 0])
    for s, key, model, at, amount in market.accruals:
        if s == supplier_index and start <= at < end:
            line = lines[(at.astimezone(MSK).date(), str(key), model.name)]
            line[0] += 1
            line[1] += amount
    return {k: tuple(v) for k, v in lines.items()}


def test_a_month_for_two_suppliers_balances_to_the_micro_ruble(books, market, settings):
    from apps.billing.payouts import registry_dataset, run_payouts

    settings.TIME_ZONE = "Europe/Moscow"
    now = timezone.now()
    start = timezone.localtime(now, MSK).replace(hour=0, minute=0, second=0, microsecond=0) - 30 * DAY
    end = now + dt.timedelta(hours=1)
    _month_of_usage(books, market, start, now)
    payables = [services.supplier_payable(s) for s in market.suppliers]

    # Withdrawals: supplier A is paid twice and has one pending; supplier B is paid once and has one rejected.
    balances = [supplier_balance(s) for s in market.suppliers]
    paid_a = [balances[0].available // 3, balances[0].available // 4]
    requests = [request_supplier_withdrawal(supplier=market.suppliers[0], amount=a, idempotency_id=f"a{i}")
                for i, a in enumerate(paid_a)]
    requests.append(request_supplier_withdrawal(supplier=market.suppliers[1], amount=balances[1].available // 2,
                                                idempotency_id="b0"))
    pending_a = request_supplier_withdrawal(supplier=market.suppliers[0], amount=1_000_001, idempotency_id="a-pending")
    rejected_b = request_supplier_withdrawal(supplier=market.suppliers[1], amount=7, idempotency_id="b-rejected")
    for request in requests:
        approve_withdrawal(withdrawal_id=request.pk)
    reject_withdrawal(withdrawal_id=rejected_b.pk)
    batch = run_payouts()
    assert run_payouts() is None  # again: nothing left to pay

    for index, supplier in enumerate(market.suppliers):
        accrued = sum(a[4] for a in market.accruals if a[0] == index)
        paid = sum(r.amount for r in requests if r.supplier_id == supplier.pk)
        pending = pending_a.amount if index == 0 else 0
        on_hold = sum(a[4] for a in market.accruals if a[0] == index and a[3] > now - 14 * DAY)
        balance = supplier_balance(supplier, now=now)
        assert balance == SupplierBalance(accrued=accrued, on_hold=on_hold, pending=pending, paid_out=paid, other_debits=0)
        assert balance.owed == services.balance(payables[index]).posted

        statement = supplier_statement(supplier=supplier, start=start, end=end)
        assert statement.opening == sum(a[4] for a in market.accruals if a[0] == index and a[3] < start)
        got = {(line.day, line.key, line.model): (line.requests, line.amount) for line in statement.accruals}
        assert got == _expected_accrual_lines(market, index, start, end)
        assert sorted(m.amount for m in statement.withdrawals) == sorted(r.amount for r in requests if r.supplier_id == supplier.pk)
        assert statement.other_credits == statement.other_debits == []
        assert statement.closing == services.balance(payables[index]).posted == accrued - paid
        # The export says the same.
        data = statement_dataset(statement)
        assert data["section"][0] == "opening" and data["section"][-1] == "closing"
        assert sum(data["amount_micro_rub"][:-1]) == data["amount_micro_rub"][-1] == statement.closing

    # The payout registry equals the ledger's payouts.
    assert (batch.count, batch.total) == (3, sum(r.amount for r in requests))
    registry = registry_dataset(batch)
    assert registry["amount_micro_rub"][-1] == batch.total == sum(registry["amount_micro_rub"][:-1])
    assert batch.total == sum(Transfer.objects.filter(kind=TransferKind.PAYOUT, status=TransferStatus.POSTED)
                              .values_list("amount", flat=True))
    # Debits equal credits: every account's sums agree with its transfers, and the platform's
    # upstream cost is exactly what the suppliers earned.
    assert services.verify_ledger() == []
    sums = Account.objects.aggregate(dr=Sum("posted_debits"), cr=Sum("posted_credits"), pdr=Sum("pending_debits"),
                                     pcr=Sum("pending_credits"))
    assert (sums["dr"], sums["pdr"]) == (sums["cr"], sums["pcr"])
    assert services.balance(books.upstream_cost).posted == -sum(a[4] for a in market.accruals)
    # The per-day credits the trigger keeps agree with the transfers, day by day.
    by_day: dict = defaultdict(int)
    for s, _key, _model, at, amount in market.accruals:
        by_day[(payables[s].pk, at.astimezone(dt.UTC).date())] += amount
    assert {(d.account_id, d.day): d.amount for d in PayableCreditDay.objects.all()} == by_day
    assert credit_day_mismatches() == []
    assert services.balance(books.cash).posted == batch.total
    assert services.balance(books.cash).pending_credits == pending_a.amount


def test_it_reports_a_per_day_figure_that_drifted_from_the_transfers(books, market):
    accrual = give(books, market, 4 * RUB, age=3 * DAY)
    assert credit_day_mismatches() == []
    PayableCreditDay.objects.filter(account_id=accrual.credit_account_id).update(amount=4 * RUB - 1)
    day = accrual.created_at.astimezone(dt.UTC).date()
    assert credit_day_mismatches() == [
        f"payable #{accrual.credit_account_id} on {day}: transfers {4 * RUB}, per-day figure {4 * RUB - 1}"]


def test_a_statement_lists_corrections_and_exports_csv_and_xlsx(books, market, tmp_path):
    give(books, market, 10 * RUB, age=40 * DAY)
    start = timezone.now() - 35 * DAY
    give(books, market, 4 * RUB, age=20 * DAY)
    services.transfer(idempotency_id="fix:1", debit=books.payable, credit=books.upstream_cost, amount=RUB,
                      kind=TransferKind.CORRECTION, description="disputed request")
    services.transfer(idempotency_id="fix:2", debit=books.upstream_cost, credit=books.payable, amount=2 * RUB,
                      kind=TransferKind.CORRECTION, description="credit note")
    statement = supplier_statement(supplier=books.supplier, start=start, end=timezone.now() + DAY)
    assert statement.opening == 10 * RUB
    assert [m.amount for m in statement.other_debits] == [RUB]
    assert [m.description for m in statement.other_credits] == ["credit note"]
    assert statement.closing == 15 * RUB == services.balance(books.payable).posted
    assert supplier_balance(books.supplier).other_debits == RUB
    data = statement_dataset(statement)
    csv = export_dataset(data, "csv").decode()
    assert csv.splitlines()[0] == "section,date,key,model,requests,amount_micro_rub,amount_rub"
    assert csv.splitlines()[-1].endswith(",15000000,15.00")
    path = tmp_path / "statement.xlsx"
    path.write_bytes(export_dataset(data, "xlsx"))
    sheet = openpyxl.load_workbook(path).active
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[-1][0] == "closing" and rows[-1][5] == 15 * RUB
    with pytest.raises(ValueError):
        export_dataset(data, "pdf")


# --- per-key spend caps ----------------------------------------------------------------------------

def test_keys_over_their_monthly_cap(books, market):
    key_a1, key_a2, key_b1 = (k for _, k in market.keys)
    key_a1.monthly_cap = 10 * RUB
    key_a2.monthly_cap = 10 * RUB
    for key in (key_a1, key_a2):
        key.full_clean()
        key.save()
    now = timezone.now()
    this_month = month_start(now)
    accrue_at(books, market, key_index=0, model_index=0, at=this_month, amount=10 * RUB)  # reaches the cap exactly
    accrue_at(books, market, key_index=1, model_index=0, at=this_month, amount=10 * RUB - 1)
    accrue_at(books, market, key_index=1, model_index=0, at=this_month - dt.timedelta(microseconds=1), amount=50 * RUB)
    accrue_at(books, market, key_index=2, model_index=0, at=this_month, amount=1000 * RUB)  # no cap
    assert keys_over_cap(now=now) == {key_a1.pk}
    assert key_month_spend(now=now) == {key_a1.pk: 10 * RUB, key_a2.pk: 10 * RUB - 1, key_b1.pk: 1000 * RUB}
    accrue_at(books, market, key_index=1, model_index=1, at=now, amount=1)
    assert keys_over_cap(now=now) == {key_a1.pk, key_a2.pk}
    # Next month starts clean.
    assert keys_over_cap(now=this_month + dt.timedelta(days=32)) == set()


@pytest.mark.parametrize("cap", [0, -1])
def test_a_cap_must_be_positive(books, market, cap):
    from django.core.exceptions import ValidationError
    from django.db import IntegrityError, transaction

    _, key = market.keys[0]
    key.monthly_cap = cap
    with pytest.raises(ValidationError):
        key.full_clean()
    with pytest.raises(IntegrityError), transaction.atomic():
        key.save()



def test_the_superadmin_sets_a_keys_monthly_cap_in_rubles(superadmin_client, books, market):
    from django.urls import reverse

    _, key = market.keys[0]
    url = reverse("admin:providers_supplierkey_change", args=[key.pk])
    form = {"supplier": key.supplier_id, "provider": key.provider_id, "name": key.name, "secret": "", "weight": 1,
            "priority": 0, "status": "active", "status_reason": "", "buy_coefficient": "1.0"}
    assert superadmin_client.post(url, {**form, "monthly_cap": "1500,5"}).status_code == 302
    key.refresh_from_db()
    assert key.monthly_cap == 1_500_500_000
    page = superadmin_client.post(url, {**form, "monthly_cap": "0"})
    assert page.status_code == 200
    assert [e.code for e in page.context["adminform"].form.errors.as_data()["monthly_cap"]] == ["zero"]
    assert superadmin_client.post(url, {**form, "monthly_cap": ""}).status_code == 302
    key.refresh_from_db()
    assert key.monthly_cap is None


def test_the_statement_command_writes_csv_and_xlsx(books, market, tmp_path):
    from io import StringIO

    from django.core.management import CommandError, call_command

    accrue_at(books, market, key_index=0, model_index=1, at=timezone.make_aware(dt.datetime(2026, 10, 15, 12)), amount=2_500_000)
    out = StringIO()
    call_command("jetstream_supplier_statement", "keys-r-us", "--from", "2026-10-01", "--to", "2026-11-01", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[2].startswith("accrual,2026-10-15,k-a1 (…et-0),gpt-4o,") and lines[2].endswith(",1,2500000,2.50")
    assert lines[-1].endswith(",2500000,2.50") and lines[-1].startswith("closing,")
    path = tmp_path / "s.xlsx"
    call_command("jetstream_supplier_statement", "keys-r-us", "--from", "2026-10-16", "--to", "2026-11-01",
                 "--format", "xlsx", "-o", str(path))
    rows = list(openpyxl.load_workbook(path).active.iter_rows(values_only=True))
    assert [(r[0], r[5]) for r in rows[1:]] == [("opening", 2_500_000), ("closing", 2_500_000)]
    for bad in (["nobody", "--from", "2026-10-01", "--to", "2026-11-01"], ["keys-r-us", "--from", "2026-11-01", "--to", "2026-10-01"],
                ["keys-r-us", "--from", "yesterday", "--to", "2026-10-01"]):
        with pytest.raises(CommandError):
            call_command("jetstream_supplier_statement", *bad)
