"""The database itself guards the books: raw SQL cannot rewrite, delete or overdraw.

These go around the services on purpose, as a buggy script or a careless psql session would.
"""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction

from apps.billing import services
from apps.billing.models import Transfer, TransferKind, TransferStatus
from tests.billing.conftest import RUB

pytestmark = pytest.mark.django_db


@pytest.fixture
def funded(books):
    services.top_up(company=books.company, amount=10 * RUB, idempotency_id="t")
    books.spent = services.transfer(idempotency_id="s", debit=books.wallet, credit=books.revenue, amount=3 * RUB,
                                    kind=TransferKind.USAGE)
    books.held = services.hold(idempotency_id="h", debit=books.wallet, credit=books.revenue, amount=2 * RUB)
    return books


def _refused(sql: str, params: list) -> IntegrityError:
    with pytest.raises(IntegrityError) as info, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
    return info.value


def _unchanged(books) -> None:
    assert services.balance(books.wallet) == services.Balance(posted=7 * RUB, pending_debits=2 * RUB, pending_credits=0,
                                                              available=5 * RUB)
    assert services.balance(books.revenue).posted == 3 * RUB
    assert services.verify_ledger() == []


def test_it_refuses_to_change_a_posted_transfers_amount(funded):
    error = _refused("UPDATE billing_transfer SET amount = 1 WHERE id = %s", [funded.spent.pk])
    assert "final" in str(error)
    assert Transfer.objects.get(pk=funded.spent.pk).amount == 3 * RUB
    _unchanged(funded)


def test_it_refuses_to_change_a_posted_transfers_accounts_or_status(funded):
    _refused("UPDATE billing_transfer SET credit_account_id = %s WHERE id = %s", [funded.cash.pk, funded.spent.pk])
    _refused("UPDATE billing_transfer SET status = 'voided' WHERE id = %s", [funded.spent.pk])
    _unchanged(funded)


def test_it_refuses_to_change_anything_about_a_hold_but_its_status(funded):
    _refused("UPDATE billing_transfer SET amount = amount * 2 WHERE id = %s", [funded.held.pk])
    _refused("UPDATE billing_transfer SET status = 'committed', description = 'sneaky' WHERE id = %s", [funded.held.pk])
    _refused("UPDATE billing_transfer SET status = 'posted' WHERE id = %s", [funded.held.pk])
    _unchanged(funded)


def test_it_refuses_to_reopen_or_re_resolve_a_resolved_hold(funded):
    services.void_hold(hold=funded.held)
    _refused("UPDATE billing_transfer SET status = 'expired' WHERE id = %s", [funded.held.pk])
    _refused("UPDATE billing_transfer SET status = 'pending' WHERE id = %s", [funded.held.pk])
    assert Transfer.objects.get(pk=funded.held.pk).status == TransferStatus.VOIDED
    assert services.balance(funded.wallet).available == 7 * RUB
    assert services.verify_ledger() == []


def test_it_refuses_to_delete_a_transfer(funded):
    error = _refused("DELETE FROM billing_transfer WHERE id = %s", [funded.spent.pk])
    assert "never deleted" in str(error)
    with pytest.raises(IntegrityError), transaction.atomic():
        Transfer.objects.filter(pk=funded.held.pk).delete()
    assert Transfer.objects.count() == 3
    _unchanged(funded)


def test_it_refuses_an_overdraft_by_raw_insert(funded):
    error = _refused(
        "INSERT INTO billing_transfer (idempotency_id, debit_account_id, credit_account_id, amount, status, kind,"
        " description, metadata, created_at) VALUES ('raw', %s, %s, %s, 'posted', 'usage', '', '{}', now())",
        [funded.wallet.pk, funded.revenue.pk, 5 * RUB + 1],
    )
    assert error.__cause__.diag.constraint_name == "account_debits_within_credits"
    _unchanged(funded)


def test_it_refuses_a_raw_insert_born_resolved(funded):
    # A transfer born "committed" would never have entered the sums; the trigger refuses it.
    _refused(
        "INSERT INTO billing_transfer (idempotency_id, debit_account_id, credit_account_id, amount, status, kind,"
        " description, metadata, created_at) VALUES ('raw', %s, %s, 1, 'committed', 'hold', '', '{}', now())",
        [funded.wallet.pk, funded.revenue.pk],
    )
    _unchanged(funded)


def test_it_refuses_to_post_a_hold_twice_even_by_raw_insert(funded):
    services.post_hold(hold=funded.held, idempotency_id="h:post", amount=RUB)
    _refused(
        "INSERT INTO billing_transfer (idempotency_id, debit_account_id, credit_account_id, amount, status, kind,"
        " pending_id, description, metadata, created_at) VALUES ('again', %s, %s, 1, 'posted', 'hold', %s, '', '{}', now())",
        [funded.wallet.pk, funded.revenue.pk, funded.held.pk],
    )
    assert services.balance(funded.wallet).posted == 6 * RUB
    assert services.verify_ledger() == []
