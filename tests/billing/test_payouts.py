"""Payout batches against real PostgreSQL: approved withdrawals paid once, with a registry file."""

from __future__ import annotations

import csv
import io

import openpyxl
import pytest
from django.utils import translation

from apps.billing import services, tasks
from apps.billing.models import PayoutBatch, Transfer, TransferKind, TransferStatus, WithdrawalRequest, WithdrawalStatus
from apps.billing.payouts import REGISTRY_HEADERS, registry_file, run_payouts
from apps.billing.suppliers import (
    SupplierBalance,
    WithdrawalStateError,
    approve_withdrawal,
    reject_withdrawal,
    request_supplier_withdrawal,
    supplier_balance,
)
from apps.billing.withdrawals import pay_withdrawal
from tests.billing.conftest import RUB
from tests.billing.test_ledger_concurrency import _in_parallel, _outcomes
from tests.billing.test_suppliers import BANK, Market, build_market, give


@pytest.fixture
def market(books) -> Market:
    return build_market(books)


def approved(supplier, amount: int, idempotency_id: str) -> WithdrawalRequest:
    request = request_supplier_withdrawal(supplier=supplier, amount=amount, idempotency_id=idempotency_id)
    return approve_withdrawal(withdrawal_id=request.pk)


def test_it_pays_approved_withdrawals_in_one_batch_and_only_those(books, market):
    give(books, market, 100 * RUB)
    give(books, market, 40 * RUB, key_index=2)
    a = approved(books.supplier, 30 * RUB, "a")
    b = approved(market.suppliers[1], 25_500_001, "b")
    waiting = request_supplier_withdrawal(supplier=books.supplier, amount=10 * RUB, idempotency_id="waiting")
    batch = run_payouts()
    assert (batch.count, batch.total) == (2, 30 * RUB + 25_500_001)
    for request in (a, b):
        request.refresh_from_db()
        assert (request.status, request.batch_id) == (WithdrawalStatus.PAID, batch.pk)
        payment = request.payment
        assert (payment.status, payment.kind, payment.amount, payment.pending_id, payment.idempotency_id) == (
            TransferStatus.POSTED, TransferKind.PAYOUT, request.amount, request.hold_id, f"payout:{request.idempotency_id}")
        assert Transfer.objects.get(pk=request.hold_id).status == TransferStatus.COMMITTED
    waiting.refresh_from_db()
    assert (waiting.status, waiting.batch_id) == (WithdrawalStatus.REQUESTED, None)
    assert supplier_balance(books.supplier) == SupplierBalance(accrued=100 * RUB, on_hold=0, pending=10 * RUB,
                                                               paid_out=30 * RUB, other_debits=0)
    assert supplier_balance(books.supplier).available == 60 * RUB
    assert services.balance(books.cash).posted == batch.total
    # A paid withdrawal can no longer be rejected.
    with translation.override("en"), pytest.raises(WithdrawalStateError, match="paid"):
        reject_withdrawal(withdrawal_id=a.pk)
    assert services.verify_ledger() == []


def test_running_it_twice_pays_nothing_twice(books, market):
    give(books, market, 100 * RUB)
    approved(books.supplier, 30 * RUB, "a")
    first = run_payouts()
    assert run_payouts() is None
    assert tasks.pay_approved_withdrawals() is None
    assert PayoutBatch.objects.count() == 1
    assert Transfer.objects.filter(kind=TransferKind.PAYOUT, status=TransferStatus.POSTED).count() == 1
    approved(books.supplier, 5 * RUB, "b")
    second_id = tasks.pay_approved_withdrawals()
    assert second_id != first.pk and PayoutBatch.objects.get(pk=second_id).total == 5 * RUB
    assert services.balance(books.payable).posted == 65 * RUB


def test_a_withdrawal_paid_before_a_crash_is_not_paid_again(books, market):
    give(books, market, 100 * RUB)
    request = approved(books.supplier, 30 * RUB, "a")
    # A run posted the hold and died before marking the request paid.
    posted = pay_withdrawal(withdrawal=request.hold, idempotency_id="payout:a")
    batch = run_payouts()
    request.refresh_from_db()
    assert (request.status, request.payment_id, batch.total) == (WithdrawalStatus.PAID, posted.pk, 30 * RUB)
    assert services.balance(books.payable).posted == 70 * RUB
    assert services.verify_ledger() == []


def test_an_approved_withdrawal_whose_hold_lapsed_is_not_paid(books, market):
    give(books, market, 100 * RUB)
    lapsed = approved(books.supplier, 30 * RUB, "lapsed")
    services.expire_holds(now=lapsed.hold.expires_at)
    assert run_payouts() is None
    lapsed.refresh_from_db()
    assert lapsed.status == WithdrawalStatus.LAPSED
    assert not PayoutBatch.objects.exists()
    assert supplier_balance(books.supplier).available == 100 * RUB


@pytest.mark.django_db(transaction=True)
def test_parallel_runs_pay_each_withdrawal_once(books, market):
    give(books, market, 100 * RUB)
    requests = [approved(books.supplier, (i + 1) * RUB, f"w{i}") for i in range(8)]
    results = _in_parallel(4, lambda i: run_payouts())
    assert _outcomes(results) == {"ok": 4}
    batches = [value for _, value in results if value is not None]
    assert sum(b.count for b in batches) == 8
    assert sum(b.total for b in batches) == sum(r.amount for r in requests) == 36 * RUB
    assert Transfer.objects.filter(kind=TransferKind.PAYOUT, status=TransferStatus.POSTED).count() == 8
    assert set(WithdrawalRequest.objects.values_list("status", flat=True)) == {WithdrawalStatus.PAID}
    assert services.balance(books.payable).posted == 64 * RUB
    assert services.verify_ledger() == []


@pytest.mark.django_db(transaction=True)
def test_a_rejection_racing_the_payout_run_either_pays_or_releases(books, market):
    give(books, market, 100 * RUB)
    request = approved(books.supplier, 30 * RUB, "a")
    results = _in_parallel(2, lambda i: run_payouts() if i == 0 else reject_withdrawal(withdrawal_id=request.pk))
    request.refresh_from_db()
    hold = Transfer.objects.get(pk=request.hold_id)
    if request.status == WithdrawalStatus.PAID:
        assert hold.status == TransferStatus.COMMITTED
        assert isinstance(results[1][1], WithdrawalStateError)
    else:
        assert (request.status, hold.status) == (WithdrawalStatus.REJECTED, TransferStatus.VOIDED)
    assert services.balance(books.payable).posted + services.balance(books.cash).posted == 100 * RUB
    assert services.verify_ledger() == []


def test_the_registry_lists_each_payment_with_its_details_and_the_total(books, market):
    give(books, market, 100 * RUB)
    give(books, market, 40 * RUB, key_index=2)
    approved(books.supplier, 30 * RUB, "a")
    approved(books.supplier, 12_345_678, "a2")
    approved(market.suppliers[1], 25_500_001, "b")
    batch = run_payouts()

    name, body = registry_file(batch, "csv")
    assert name == f"payout-batch-{batch.pk}.csv"
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert list(rows[0]) == REGISTRY_HEADERS
    assert [(r["supplier"], r["amount_micro_rub"], r["amount_rub"]) for r in rows] == [
        ("Keys R Us", "30000000", "30.00"), ("Keys R Us", "12345678", "12.345678"), ("Tokens Ltd", "25500001", "25.500001"),
        ("Итого", str(batch.total), "67.845679")]
    assert {k: rows[0][k] for k in BANK} == BANK
    assert (rows[2]["recipient"], rows[2]["card_reference"], rows[2]["account_number"]) == ("ИП Токенов", "card-ref-0042", "")
    assert {int(r["ledger_transfer"]) for r in rows[:-1]} == set(
        Transfer.objects.filter(kind=TransferKind.PAYOUT, status=TransferStatus.POSTED).values_list("pk", flat=True))

    name, body = registry_file(batch, "xlsx")
    sheet = openpyxl.load_workbook(io.BytesIO(body)).active
    cells = list(sheet.iter_rows(values_only=True))
    amount = REGISTRY_HEADERS.index("amount_micro_rub")
    assert cells[0] == tuple(REGISTRY_HEADERS)
    assert [c[amount] for c in cells[1:]] == [30 * RUB, 12_345_678, 25_500_001, 67_845_679]
    with pytest.raises(ValueError):
        registry_file(batch, "docx")


# --- the superadmin's pages -------------------------------------------------------------------------

def test_the_superadmin_approves_and_rejects_in_the_admin_and_downloads_the_registry(superadmin_client, personas, books,
                                                                                        market):
    from django.urls import reverse

    give(books, market, 100 * RUB)
    first = request_supplier_withdrawal(supplier=books.supplier, amount=30 * RUB, idempotency_id="a")
    second = request_supplier_withdrawal(supplier=books.supplier, amount=20 * RUB, idempotency_id="b")
    changelist = reverse("admin:billing_withdrawalrequest_changelist")
    assert "30.00 ₽" in superadmin_client.get(changelist).content.decode()
    superadmin_client.post(changelist, {"action": "approve_selected", "_selected_action": [first.pk]})
    superadmin_client.post(changelist, {"action": "reject_selected", "_selected_action": [second.pk]})
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, first.decided_by_id) == (WithdrawalStatus.APPROVED, personas.superadmin.pk)
    assert (second.status, Transfer.objects.get(pk=second.hold_id).status) == (WithdrawalStatus.REJECTED, TransferStatus.VOIDED)
    # Approving the rejected one is refused with the reason, and changes nothing.
    page = superadmin_client.post(changelist, {"action": "approve_selected", "_selected_action": [second.pk]}, follow=True)
    assert "Нельзя одобрить заявку на вывод" in page.content.decode()
    second.refresh_from_db()
    assert second.status == WithdrawalStatus.REJECTED

    batch = run_payouts()
    page = superadmin_client.get(reverse("admin:billing_payoutbatch_changelist")).content.decode()
    csv_url = reverse("admin:billing_payoutbatch_registry", args=[batch.pk, "csv"])
    assert csv_url in page
    response = superadmin_client.get(csv_url)
    assert response.status_code == 200 and response["Content-Disposition"] == f'attachment; filename="payout-batch-{batch.pk}.csv"'
    assert response.content.decode().splitlines()[-1].split(",")[-4:-2] == ["30000000", "30.00"]
    xlsx = superadmin_client.get(reverse("admin:billing_payoutbatch_registry", args=[batch.pk, "xlsx"]))
    assert openpyxl.load_workbook(io.BytesIO(xlsx.content)).active.max_row == 3  # header, the payment, the total
    assert superadmin_client.get(reverse("admin:billing_payoutbatch_registry", args=[batch.pk, "pdf"])).status_code == 404


def test_only_the_superadmin_sees_withdrawals_and_registries(client, personas, books, market):
    from django.urls import reverse

    give(books, market, 100 * RUB)
    request = approved(books.supplier, 30 * RUB, "a")
    batch = run_payouts()
    for user in (personas.supplier_user, personas.manager_a, personas.outsider):
        client.force_login(user)
        response = client.get(reverse("admin:billing_payoutbatch_registry", args=[batch.pk, "csv"]))
        assert response.status_code == 302 and "/login/" in response["Location"]
        client.post(reverse("admin:billing_withdrawalrequest_changelist"),
                    {"action": "reject_selected", "_selected_action": [request.pk]})
    request.refresh_from_db()
    assert request.status == WithdrawalStatus.PAID


def test_beat_runs_the_payout_task_daily(settings):
    from celery import current_app
    from celery.schedules import crontab

    entry = settings.CELERY_BEAT_SCHEDULE["pay-approved-withdrawals"]
    assert entry["task"] == tasks.pay_approved_withdrawals.name in current_app.tasks
    assert entry["schedule"] == crontab(hour=6, minute=0)
