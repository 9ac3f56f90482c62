"""The company cabinet's wallet: balance, the ledger history (keyset pages with the balance after
each row), top-ups with their invoice at once, cancelling, invoice and act downloads — own only."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from django.urls import reverse

from apps.accounts.models import CompanyRole, Membership
from apps.billing import services as ledger
from apps.billing.models import AccountKind, TransferKind
from apps.billing.wallet_history import BadCursor, wallet_history
from apps.invoicing import services as invoicing
from apps.invoicing.models import DocumentKind, TopUpRequest, TopUpStatus
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

RUB = 1_000_000


@pytest.fixture
def manager(personas, signed_in):
    return signed_in(personas.manager_a)


def _spend(company, amount, n):
    wallet = ledger.company_wallet(company)
    revenue = ledger.platform_account(AccountKind.PLATFORM_REVENUE)
    return ledger.transfer(idempotency_id=f"usage:test-{company.pk}-{n}:sell", debit=wallet, credit=revenue, amount=amount,
                           kind=TransferKind.USAGE, metadata={"request_id": f"req-{n}"})


def test_it_shows_the_balance_and_the_history_with_the_balance_after_each_row(personas, manager):
    ledger.top_up(company=personas.company_a, amount=1000 * RUB, idempotency_id="t-1", description="Payment 1")
    _spend(personas.company_a, 250_000, 1)
    ledger.top_up(company=personas.company_b, amount=777 * RUB, idempotency_id="t-b")
    page = manager.get(reverse("cabinets:company:wallet"))
    assert page.status_code == 200
    assert page.context["funds"].balance == 1000 * RUB - 250_000
    entries = page.context["history"].entries
    assert [(e.amount, e.balance_after) for e in entries] == [(-250_000, 999_750_000), (1000 * RUB, 1000 * RUB)]
    assert entries[0].request_id == "req-1"
    body = page.content.decode()
    assert "999,75" in body and "Payment 1" in body and "777" not in body


def test_it_pages_the_history_by_keyset_and_keeps_the_running_balance(personas, manager):
    ledger.top_up(company=personas.company_a, amount=100 * RUB, idempotency_id="t-1")
    for n in range(7):
        _spend(personas.company_a, RUB, n)
    first = wallet_history(company=personas.company_a, limit=3)
    second = wallet_history(company=personas.company_a, cursor=first.next_cursor, limit=3)
    third = wallet_history(company=personas.company_a, cursor=second.next_cursor, limit=3)
    rows = first.entries + second.entries + third.entries
    assert [e.balance_after for e in rows] == [93 * RUB, 94 * RUB, 95 * RUB, 96 * RUB, 97 * RUB, 98 * RUB, 99 * RUB, 100 * RUB]
    assert third.next_cursor is None and len({e.transfer.pk for e in rows}) == 8
    # Through the page (HTMX swaps the history alone).
    response = manager.get(reverse("cabinets:company:wallet"), {"cursor": first.next_cursor}, HTTP_HX_REQUEST="true",
                           HTTP_HX_TARGET="wallet-history")
    assert "<html" not in response.content.decode()


def test_it_filters_the_history_by_kind_and_refuses_a_forged_cursor(personas, manager):
    ledger.top_up(company=personas.company_a, amount=100 * RUB, idempotency_id="t-1")
    _spend(personas.company_a, RUB, 1)
    top_ups = manager.get(reverse("cabinets:company:wallet"), {"kind": "top_up"}).context["history"].entries
    assert [(e.amount, e.balance_after) for e in top_ups] == [(100 * RUB, None)]
    with pytest.raises(BadCursor):
        wallet_history(company=personas.company_a, cursor="forged")
    b_page = wallet_history(company=personas.company_b, limit=1)
    assert b_page.next_cursor is None
    assert manager.get(reverse("cabinets:company:wallet"), {"cursor": "forged"}).status_code == 200  # back to the newest


def test_it_requests_a_top_up_and_issues_its_invoice_once(personas, manager):
    form = manager.get(reverse("cabinets:company:wallet")).context["form"]
    key = form["request_key"].value()
    for _ in range(2):  # the same form sent twice
        response = manager.post(reverse("cabinets:company:topup_request"), {"amount": "50 000,50", "request_key": key})
        assert response.status_code == 302
    request = TopUpRequest.objects.get(company=personas.company_a)
    assert (request.amount, request.status, request.requested_by) == (50_000_500_000, TopUpStatus.INVOICED, personas.manager_a)
    pdf = manager.get(reverse("cabinets:company:document_pdf", kwargs={"document_id": request.invoice_id}))
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf" and pdf.content.startswith(b"%PDF")


def test_it_refuses_a_bad_top_up_amount(personas, manager):
    for amount in ("0", "-5", "1.001", "abc"):
        response = manager.post(reverse("cabinets:company:topup_request"), {"amount": amount, "request_key": f"k-{amount}"})
        assert response.status_code == 400 and "amount" in response.context["form"].errors
    assert not TopUpRequest.objects.exists()


def test_it_keeps_the_request_when_the_platform_has_no_requisites(personas, manager, settings):
    settings.INVOICING = {**settings.INVOICING, "SELLER": {**settings.INVOICING["SELLER"], "inn": ""}}
    manager.post(reverse("cabinets:company:topup_request"), {"amount": "100", "request_key": "k1"})
    request = TopUpRequest.objects.get(company=personas.company_a)
    assert (request.status, request.invoice) == (TopUpStatus.REQUESTED, None)


def test_it_cancels_an_unpaid_top_up(personas, manager):
    request = invoicing.request_top_up(company=personas.company_a, amount=100 * RUB, request_key="k1")
    manager.post(reverse("cabinets:company:topup_cancel", kwargs={"topup_id": request.pk}))
    request.refresh_from_db()
    assert request.status == TopUpStatus.CANCELLED


def test_it_downloads_the_companys_acts(personas, manager):
    ledger.top_up(company=personas.company_a, amount=100 * RUB, idempotency_id="t-1")
    _spend(personas.company_a, 5 * RUB, 1)
    now = dt.datetime.now(zoneinfo.ZoneInfo(personas.company_a.time_zone))  # the act's month is the company's
    year, month = (now.year, now.month + 1) if now.month < 12 else (now.year + 1, 1)
    act = invoicing.issue_act(company=personas.company_a, year=now.year, month=now.month,
                              now=dt.datetime(year, month, 2, tzinfo=dt.UTC))
    page = manager.get(reverse("cabinets:company:wallet"))
    assert act in list(page.context["acts"])
    pdf = manager.get(reverse("cabinets:company:document_pdf", kwargs={"document_id": act.pk}))
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF") and act.filename in pdf["Content-Disposition"]


def test_a_viewer_sees_the_wallet_but_cannot_top_up(personas, signed_in, django_user_model):
    user = django_user_model.objects.create_user("viewer@example.com", PASSWORD)
    Membership.objects.create(user=user, company=personas.company_a, role=CompanyRole.VIEWER)
    request = invoicing.request_top_up(company=personas.company_a, amount=100 * RUB, request_key="k1")
    viewer = signed_in(user)
    page = viewer.get(reverse("cabinets:company:wallet"))
    assert page.status_code == 200 and page.context["form"] is None
    assert viewer.post(reverse("cabinets:company:topup_request"), {"amount": "100", "request_key": "k2"}).status_code == 403
    assert viewer.post(reverse("cabinets:company:topup_cancel", kwargs={"topup_id": request.pk})).status_code == 403


def test_another_companys_top_ups_and_documents_are_404(personas, manager):
    request = invoicing.request_top_up(company=personas.company_b, amount=100 * RUB, request_key="k1")
    invoice = invoicing.issue_invoice(top_up_request=request)
    assert manager.get(reverse("cabinets:company:document_pdf", kwargs={"document_id": invoice.pk})).status_code == 404
    assert manager.post(reverse("cabinets:company:topup_cancel", kwargs={"topup_id": request.pk})).status_code == 404
    request.refresh_from_db()
    assert request.status == TopUpStatus.INVOICED
    assert invoice.kind == DocumentKind.INVOICE


def test_it_saves_the_companys_requisites_and_the_next_invoice_names_them(personas, manager):
    url = reverse("cabinets:company:requisites")
    assert manager.get(url).status_code == 200
    bad = manager.post(url, {"legal_name": "ООО «Ромашка»", "inn": "123", "kpp": "12"})
    assert bad.status_code == 200 and set(bad.context["form"].errors) == {"inn", "kpp"}
    assert manager.post(url, {"legal_name": "ООО «Ромашка»", "inn": "7701234567", "kpp": "770101001",
                              "address": "Москва"}).status_code == 302
    manager.post(reverse("cabinets:company:topup_request"), {"amount": "100", "request_key": "k1"})
    invoice = TopUpRequest.objects.get(company=personas.company_a).invoice
    assert invoice.details["buyer"]["inn"] == "7701234567" and "Ромашка" in invoice.details["buyer"]["name"]


def test_a_viewer_cannot_change_the_requisites_and_another_companys_stay_apart(personas, signed_in, django_user_model):
    from apps.invoicing.models import CompanyRequisites

    user = django_user_model.objects.create_user("viewer@example.com", PASSWORD)
    Membership.objects.create(user=user, company=personas.company_a, role=CompanyRole.VIEWER)
    assert signed_in(user).get(reverse("cabinets:company:requisites")).status_code == 403
    CompanyRequisites.objects.create(company=personas.company_b, legal_name="ООО «Бета»", inn="7709876543")
    page = signed_in(personas.manager_a).get(reverse("cabinets:company:wallet"))
    assert "Бета" not in page.content.decode() and "7709876543" not in page.content.decode()
