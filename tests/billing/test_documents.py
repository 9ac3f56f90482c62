"""Top-ups against invoices and monthly closing acts (apps/invoicing): the flow through services
and the admin, idempotency and concurrency of every step, amounts in words, totals = ledger, and
the PDFs themselves (valid PDF, Russian text extracted with pypdf)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import threading
import zoneinfo
from collections.abc import Callable
from decimal import Decimal

import pytest
from django.db import DatabaseError, connection, transaction
from django.urls import reverse
from django.utils import translation
from pypdf import PdfReader

from apps.billing import services as ledger
from apps.billing.models import AccountKind, Transfer, TransferKind
from apps.invoicing import services
from apps.invoicing.amounts import amount_in_words, format_amount, vat_included
from apps.invoicing.exceptions import InvalidPeriod, InvalidTopUpAmount, InvalidTopUpState, NothingToInvoice, RequisitesMissing
from apps.invoicing.models import CompanyRequisites, Document, DocumentKind, TopUpRequest, TopUpStatus
from tests.conftest import admin_urls

RUB = 1_000_000
KOP = 10_000
MSK = zoneinfo.ZoneInfo("Europe/Moscow")


def pdf_text(pdf: bytes) -> str:
    assert pdf.startswith(b"%PDF-"), "not a PDF"
    reader = PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text() for page in reader.pages)


def flat(text: str) -> str:
    """Text with every run of white space (line breaks, no-break spaces) as one space."""
    return " ".join(text.replace("\u00a0", " ").split())


@pytest.fixture(autouse=True)
def english_messages():
    """Service errors are matched in English here; the admin pages (Russian by default) are checked in Russian."""
    with translation.override("en"):
        yield


@pytest.fixture
def company(db):
    from apps.accounts.models import Company

    company = Company.objects.create(slug="romashka", name="Romashka")
    CompanyRequisites.objects.create(company=company, legal_name="ООО «Ромашка»", inn="7701234567", kpp="770101001",
                                     address="г. Москва, ул. Ленина, д. 1", contract="№ 17/2026 от 01.02.2026")
    return company


def wallet_balance(company) -> int:
    return ledger.balance(ledger.company_wallet(company)).posted


# --- amounts ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("micro", "words"), [
    (1 * RUB + 1 * KOP, "Один рубль 01 копейка"),
    (21 * RUB, "Двадцать один рубль 00 копеек"),
    (1_000_000 * RUB, "Один миллион рублей 00 копеек"),
    (2 * RUB + 22 * KOP, "Два рубля 22 копейки"),
    (11 * RUB + 11 * KOP, "Одиннадцать рублей 11 копеек"),
    (1_001_001 * RUB + 99 * KOP, "Один миллион одна тысяча один рубль 99 копеек"),
    (0, "Ноль рублей 00 копеек"),
    (1_005_000, "Один рубль 01 копейка"),  # half a kopeck rounds up
    (1_004_999, "Один рубль 00 копеек"),
])
def test_it_writes_amounts_in_russian_words(micro, words):
    assert amount_in_words(micro) == words


def test_it_formats_figures_and_vat_to_the_kopeck():
    assert format_amount(1_000_000 * RUB) == "1\u00a0000\u00a0000,00"
    assert format_amount(1 * RUB + 1 * KOP) == "1,01"
    assert vat_included(122 * RUB, Decimal("22")) == 22 * RUB
    assert vat_included(100 * RUB, Decimal("22")) == 18 * RUB + 3 * KOP  # 18.0327… → 18.03
    assert vat_included(100 * RUB, Decimal("20")) == 16 * RUB + 67 * KOP
    assert vat_included(100 * RUB, Decimal("0")) == 0


# --- the top-up flow -------------------------------------------------------------------------

def test_it_runs_a_top_up_from_request_to_credited_wallet(company, personas):
    request = services.request_top_up(company=company, amount=15_000 * RUB + 50 * KOP, request_key="k1",
                                      requested_by=personas.manager_a)
    assert request.status == TopUpStatus.REQUESTED and wallet_balance(company) == 0

    invoice = services.issue_invoice(top_up_request=request, issued_by=personas.superadmin)
    request.refresh_from_db()
    assert request.status == TopUpStatus.INVOICED and request.invoice == invoice
    assert (invoice.kind, invoice.amount, invoice.vat_percent) == (DocumentKind.INVOICE, 15_000 * RUB + 50 * KOP, Decimal("22.00"))
    assert invoice.vat_amount == 2_705 * RUB + 1 * KOP  # 15000.50 × 22 / 122 = 2705.0901…
    assert invoice.sha256 == hashlib.sha256(bytes(invoice.pdf)).hexdigest()
    assert wallet_balance(company) == 0  # an invoice moves no money

    transfer = services.confirm_payment(top_up_request=request, confirmed_by=personas.superadmin)
    request.refresh_from_db()
    assert request.status == TopUpStatus.PAID and request.transfer == transfer and request.confirmed_by == personas.superadmin
    assert (transfer.kind, transfer.amount) == (TransferKind.TOP_UP, 15_000 * RUB + 50 * KOP)
    assert transfer.debit_account == ledger.platform_account(AccountKind.PLATFORM_CASH)
    assert wallet_balance(company) == 15_000 * RUB + 50 * KOP
    assert ledger.verify_ledger() == []


def test_it_prints_the_invoice_in_russian_with_requisites_words_and_vat(company, settings):
    settings.INVOICING = {**settings.INVOICING, "VAT_PERCENT": Decimal("22.00")}
    request = services.request_top_up(company=company, amount=1_000_000 * RUB, request_key="big")
    invoice = services.issue_invoice(top_up_request=request)
    text = flat(pdf_text(bytes(invoice.pdf)))
    seller = settings.INVOICING["SELLER"]
    assert f"Счёт на оплату № {invoice.number} от" in text
    for value in (seller["inn"], seller["kpp"], seller["bik"], seller["corr_account"], seller["account"], "ИНН 7701234567",
                  "КПП 770101001", "ООО «Ромашка»"):
        assert value in text
    assert "Услуги доступа к LLM API по договору № 17/2026 от 01.02.2026" in text
    assert "1 000 000,00" in text
    assert "Один миллион рублей 00 копеек" in text
    assert "В т.ч. НДС (22%): 180 327,87" in text  # 1 000 000 × 22 / 122


def test_it_prints_without_vat_when_the_rate_is_zero(company, settings):
    settings.INVOICING = {**settings.INVOICING, "VAT_PERCENT": Decimal("0.00")}
    invoice = services.issue_invoice(top_up_request=services.request_top_up(company=company, amount=21 * RUB, request_key="k"))
    text = flat(pdf_text(bytes(invoice.pdf)))
    assert invoice.vat_amount == 0 and "Без налога (НДС)" in text and "Двадцать один рубль 00 копеек" in text


def test_it_names_a_company_without_requisites_by_its_name(personas):
    request = services.request_top_up(company=personas.company_b, amount=1 * RUB + 1 * KOP, request_key="k")
    text = flat(pdf_text(bytes(services.issue_invoice(top_up_request=request).pdf)))
    assert "Company B" in text and "по договору-оферте" in text and "Один рубль 01 копейка" in text


@pytest.mark.parametrize(("amount", "message"), [
    (0, "greater than zero"), (-5 * RUB, "greater than zero"), (1, "whole kopecks"), (RUB + 1, "whole kopecks"),
    ("100", "whole number"), (1.5, "whole number"), (True, "whole number"), (10**20, "may not exceed"),
])
def test_it_refuses_bad_amounts_and_writes_nothing(company, amount, message):
    with pytest.raises(InvalidTopUpAmount, match=message):
        services.request_top_up(company=company, amount=amount, request_key="bad")
    assert not TopUpRequest.objects.exists() and not Transfer.objects.exists()


def test_it_makes_one_request_per_key(company):
    first = services.request_top_up(company=company, amount=100 * RUB, request_key="form-1")
    assert services.request_top_up(company=company, amount=100 * RUB, request_key="form-1") == first
    with pytest.raises(InvalidTopUpState, match="already used"):
        services.request_top_up(company=company, amount=200 * RUB, request_key="form-1")
    assert TopUpRequest.objects.count() == 1


def test_every_step_is_idempotent(company):
    request = services.request_top_up(company=company, amount=100 * RUB, request_key="k")
    invoice = services.issue_invoice(top_up_request=request)
    assert services.issue_invoice(top_up_request=request.pk) == invoice
    transfer = services.confirm_payment(top_up_request=request)
    assert services.confirm_payment(top_up_request=request.pk) == transfer
    assert services.issue_invoice(top_up_request=request) == invoice  # a paid request keeps its invoice
    assert Transfer.objects.filter(kind=TransferKind.TOP_UP).count() == 1 and Document.objects.count() == 1
    assert wallet_balance(company) == 100 * RUB
    other = services.request_top_up(company=company, amount=5 * RUB, request_key="k2")
    assert services.cancel_top_up(top_up_request=other).status == TopUpStatus.CANCELLED
    assert services.cancel_top_up(top_up_request=other).status == TopUpStatus.CANCELLED


def test_it_refuses_steps_out_of_order_and_moves_nothing(company):
    request = services.request_top_up(company=company, amount=100 * RUB, request_key="k")
    with pytest.raises(InvalidTopUpState, match="no invoice yet"):
        services.confirm_payment(top_up_request=request)
    services.cancel_top_up(top_up_request=request)
    with pytest.raises(InvalidTopUpState, match="cancelled"):
        services.issue_invoice(top_up_request=request)
    with pytest.raises(InvalidTopUpState, match="cancelled"):
        services.confirm_payment(top_up_request=request)
    paid = services.request_top_up(company=company, amount=7 * RUB, request_key="k2")
    services.issue_invoice(top_up_request=paid)
    services.confirm_payment(top_up_request=paid)
    with pytest.raises(InvalidTopUpState, match="paid"):
        services.cancel_top_up(top_up_request=paid)
    with pytest.raises(InvalidTopUpState, match="No such"):
        services.confirm_payment(top_up_request=10**9)
    assert wallet_balance(company) == 7 * RUB


def test_it_refuses_an_invoice_without_the_platforms_requisites(company, settings):
    settings.INVOICING = {**settings.INVOICING, "SELLER": {**settings.INVOICING["SELLER"], "inn": "", "bik": ""}}
    request = services.request_top_up(company=company, amount=100 * RUB, request_key="k")
    with pytest.raises(RequisitesMissing, match="JETSTREAM_SELLER_INN, JETSTREAM_SELLER_BIK"):
        services.issue_invoice(top_up_request=request)
    request.refresh_from_db()
    assert request.status == TopUpStatus.REQUESTED and not Document.objects.exists()


def test_it_numbers_invoices_per_year_without_gaps(company, settings):
    numbers = []
    for i in range(3):
        request = services.request_top_up(company=company, amount=(i + 1) * RUB, request_key=f"k{i}")
        if i == 1:  # a failed rendering gives its number back
            broken = {**settings.INVOICING["SELLER"], "account": ""}
            settings.INVOICING = {**settings.INVOICING, "SELLER": broken}
            with pytest.raises(RequisitesMissing):
                services.issue_invoice(top_up_request=request)
            settings.INVOICING = {**settings.INVOICING, "SELLER": {**broken, "account": "40702810900000000001"}}
        numbers.append(services.issue_invoice(top_up_request=request).number)
    assert numbers == [1, 2, 3]


def test_the_database_refuses_to_change_or_delete_a_document(company):
    invoice = services.issue_invoice(top_up_request=services.request_top_up(company=company, amount=RUB, request_key="k"))
    for statement in ("UPDATE invoicing_document SET number = 99 WHERE id = %s",
                      "UPDATE invoicing_document SET pdf = '\\x00' WHERE id = %s",
                      "DELETE FROM invoicing_document WHERE id = %s"):
        with pytest.raises(DatabaseError, match="never"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement, [invoice.pk])
    invoice.refresh_from_db()
    assert invoice.number == 1 and invoice.sha256 == hashlib.sha256(bytes(invoice.pdf)).hexdigest()


# --- concurrency -----------------------------------------------------------------------------

def _in_parallel(count: int, work: Callable[[int], object]) -> list[tuple[str, object]]:
    """Run work(i) in ``count`` threads, each on its own connection, released together by a barrier."""
    barrier = threading.Barrier(count)
    results: list[tuple[str, object]] = [("missing", None)] * count

    def run(i: int) -> None:
        try:
            connection.ensure_connection()
            barrier.wait(timeout=30)
            results[i] = ("ok", work(i))
        except Exception as exc:  # reported to the test thread
            results[i] = ("error", exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return results


@pytest.mark.django_db(transaction=True)
def test_two_confirmations_at_once_credit_the_wallet_once(company):
    request = services.request_top_up(company=company, amount=500 * RUB, request_key="k")
    services.issue_invoice(top_up_request=request)
    results = _in_parallel(2, lambda i: services.confirm_payment(top_up_request=request.pk).pk)
    assert [status for status, _ in results] == ["ok", "ok"], results
    assert results[0][1] == results[1][1]
    assert Transfer.objects.filter(kind=TransferKind.TOP_UP).count() == 1
    assert wallet_balance(company) == 500 * RUB
    assert ledger.verify_ledger() == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_invoices_and_acts_take_distinct_gapless_numbers(company):
    requests = [services.request_top_up(company=company, amount=(i + 1) * RUB, request_key=f"k{i}") for i in range(4)]
    # Every request issued twice at once: one invoice each, numbers 1..4.
    results = _in_parallel(8, lambda i: services.issue_invoice(top_up_request=requests[i % 4].pk).number)
    assert all(status == "ok" for status, _ in results), results
    assert sorted(Document.objects.values_list("number", flat=True)) == [1, 2, 3, 4]
    for i in range(4):
        assert results[i][1] == results[i + 4][1]


# --- closing acts ----------------------------------------------------------------------------

def post_usage(wallet, revenue, amount: int, at: dt.datetime, request_id: str) -> None:
    """A usage charge as the meter writes it (wallet → platform revenue), dated ``at`` in the ledger.

    Raw SQL so the transfer can carry a past time; the ledger's triggers keep the sums as for any insert."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_transfer (idempotency_id, debit_account_id, credit_account_id, amount, status, kind, "
            "description, metadata, created_at) VALUES (%s, %s, %s, %s, 'posted', 'usage', '', '{}', %s)",
            [f"usage:{request_id}:sell", wallet.pk, revenue.pk, amount, at])


@pytest.fixture
def october(company):
    """A month of usage for two companies; amounts in micro-RUB with fractions of a kopeck, and
    charges either side of the month's edges in Moscow time."""
    from apps.accounts.models import Company

    other = Company.objects.create(slug="other", name="Other", time_zone="Asia/Vladivostok")
    ledger.top_up(company=company, amount=100_000 * RUB, idempotency_id="seed-a")
    ledger.top_up(company=other, amount=100_000 * RUB, idempotency_id="seed-b")
    wallet, revenue = ledger.company_wallet(company), ledger.platform_account(AccountKind.PLATFORM_REVENUE)
    inside = [
        (dt.datetime(2026, 10, 1, 0, 0, tzinfo=MSK), 1_234_567),  # the first instant of October in Moscow
        (dt.datetime(2026, 10, 15, 12, 0, tzinfo=MSK), 250 * RUB + 333_333),
        (dt.datetime(2026, 10, 31, 23, 59, 59, tzinfo=MSK), 7 * RUB + 5_000),
    ]
    for day in range(1, 31):
        inside.append((dt.datetime(2026, 10, day, 9, 30, tzinfo=MSK), 3 * RUB + day * 1_111))
    outside = [
        (dt.datetime(2026, 9, 30, 23, 59, 59, tzinfo=MSK), 999 * RUB),
        (dt.datetime(2026, 11, 1, 0, 0, tzinfo=MSK), 888 * RUB),
    ]
    for n, (at, amount) in enumerate(inside + outside):
        post_usage(wallet, revenue, amount, at, f"a{n}")
    post_usage(ledger.company_wallet(other), revenue, 42 * RUB, dt.datetime(2026, 10, 10, tzinfo=MSK), "b0")
    # A usage refund (revenue → wallet) lowers the month's total.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_transfer (idempotency_id, debit_account_id, credit_account_id, amount, status, kind, "
            "description, metadata, created_at) VALUES ('refund', %s, %s, %s, 'posted', 'usage', '', '{}', %s)",
            [revenue.pk, wallet.pk, 1 * RUB, dt.datetime(2026, 10, 20, tzinfo=MSK)])
    return {"expected": sum(amount for _, amount in inside) - 1 * RUB, "other": other}


AFTER_OCTOBER = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)


def test_the_act_states_the_ledgers_usage_to_the_kopeck(company, october):
    expected = october["expected"]
    assert services.month_usage_total(company=company, year=2026, month=10) == expected
    act = services.issue_act(company=company, year=2026, month=10, now=AFTER_OCTOBER)
    assert act.amount == expected and act.kind == DocumentKind.ACT
    assert (act.period_start, act.period_end, act.date) == (dt.date(2026, 10, 1), dt.date(2026, 10, 31), dt.date(2026, 10, 31))
    assert act.vat_amount == vat_included(expected, Decimal("22"))
    text = flat(pdf_text(bytes(act.pdf)))
    assert f"Акт № {act.number} от 31 октября 2026 г." in text
    assert f"Итого: {flat(format_amount(expected))}" in text
    assert amount_in_words(expected) in text
    assert "за октябрь 2026 г." in text and "ООО «Ромашка»" in text


def test_it_issues_an_act_once_and_never_renumbers_it(company, october):
    act = services.issue_act(company=company, year=2026, month=10, now=AFTER_OCTOBER)
    # Late usage in the month cannot happen (the ledger dates transfers itself), but even if the
    # total changed, the issued act stays what it was.
    post_usage(ledger.company_wallet(company), ledger.platform_account(AccountKind.PLATFORM_REVENUE), 5 * RUB,
               dt.datetime(2026, 10, 5, tzinfo=MSK), "late")
    again = services.issue_act(company=company, year=2026, month=10, now=AFTER_OCTOBER)
    assert (again.pk, again.number, again.amount, again.sha256) == (act.pk, act.number, act.amount, act.sha256)
    assert Document.objects.filter(kind=DocumentKind.ACT).count() == 1


def test_it_refuses_an_act_for_a_month_not_ended_or_empty(company, october):
    with pytest.raises(InvalidPeriod, match="has not ended"):
        services.issue_act(company=company, year=2026, month=10, now=dt.datetime(2026, 10, 31, 20, 59, tzinfo=dt.UTC))
    with pytest.raises(NothingToInvoice):
        services.issue_act(company=company, year=2026, month=8, now=AFTER_OCTOBER)
    with pytest.raises(InvalidPeriod, match="not a month"):
        services.issue_act(company=company, year=2026, month=13, now=AFTER_OCTOBER)
    assert not Document.objects.exists()


def test_the_task_issues_last_months_acts_in_each_companys_time_zone(company, october):
    from apps.invoicing.tasks import generate_monthly_acts

    other = october["other"]
    # 1 November, 00:30 in Vladivostok (UTC+10), still 31 October 17:30 in Moscow: Vladivostok's October
    # has ended, Moscow's has not (its last ended month is September, which had one charge).
    early = dt.datetime(2026, 10, 31, 14, 30, tzinfo=dt.UTC)
    issued = {a.company: (a.period_start, a.amount) for a in services.issue_acts_for_previous_month(now=early)}
    assert issued == {other: (dt.date(2026, 10, 1), 42 * RUB), company: (dt.date(2026, 9, 1), 999 * RUB)}
    issued = services.issue_acts_for_previous_month(now=AFTER_OCTOBER)
    assert [(a.company, a.period_start, a.amount) for a in issued] == [(company, dt.date(2026, 10, 1), october["expected"])]
    assert services.issue_acts_for_previous_month(now=AFTER_OCTOBER) == []  # safe to run twice
    assert sorted(Document.objects.values_list("number", flat=True)) == [1, 2, 3]
    # The task itself, at the real time: whatever it issues (the fixture's 1 November charge, once
    # November has ended), a second run issues nothing.
    before = Document.objects.count()
    issued_now = generate_monthly_acts.run()
    assert Document.objects.count() - before == issued_now
    assert generate_monthly_acts.run() == 0


# --- the admin -------------------------------------------------------------------------------

def test_the_admin_runs_the_flow_and_downloads_the_invoice(superadmin_client, company, personas):
    index = superadmin_client.get(reverse("admin:index")).content.decode()
    assert "Пополнения и документы" in index and "Заявки на пополнение" in index  # the app's own catalog
    urls = admin_urls(TopUpRequest, 0)
    page = superadmin_client.get(urls["add"])
    assert page.status_code == 200
    key = page.context["adminform"].form["form_key"].value()
    data = {"company": company.pk, "amount": "1500.50", "form_key": key, "_save": "Save"}
    assert superadmin_client.post(urls["add"], data).status_code == 302
    assert superadmin_client.post(urls["add"], data).status_code == 302  # double submit: still one request
    request = TopUpRequest.objects.get()
    assert (request.amount, request.requested_by) == (1500 * RUB + 50 * KOP, personas.superadmin)

    change = admin_urls(TopUpRequest, request.pk)["change"]
    assert "_issue_invoice" in superadmin_client.get(change).content.decode()
    superadmin_client.post(change, {"_issue_invoice": "1"})
    request.refresh_from_db()
    assert request.status == TopUpStatus.INVOICED
    for _ in range(2):  # a double-submitted confirmation moves the money once
        superadmin_client.post(change, {"_confirm_payment": "1"})
    request.refresh_from_db()
    assert request.status == TopUpStatus.PAID and wallet_balance(company) == 1500 * RUB + 50 * KOP
    assert Transfer.objects.filter(kind=TransferKind.TOP_UP).count() == 1

    pdf = superadmin_client.get(reverse("admin:invoicing_document_pdf", args=[request.invoice_id]))
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    assert "Одна тысяча пятьсот рублей 50 копеек" in flat(pdf_text(pdf.content))
    listing = superadmin_client.get(admin_urls(Document, 0)["changelist"])
    assert listing.status_code == 200 and "invoice-" in listing.content.decode()
    assert superadmin_client.get(admin_urls(Document, request.invoice_id)["change"]).status_code == 200


def test_the_admin_refuses_a_zero_amount_with_a_clear_error(superadmin_client, company):
    urls = admin_urls(TopUpRequest, 0)
    for amount, code in (("0", "zero"), ("-5", "invalid")):
        response = superadmin_client.post(urls["add"], {"company": company.pk, "amount": amount, "form_key": "x"})
        assert response.status_code == 200
        assert [e.code for e in response.context["adminform"].form.errors.as_data()["amount"]] == [code]
    response = superadmin_client.post(urls["add"], {"company": company.pk, "amount": "1.001", "form_key": "x"})
    assert response.status_code == 200 and "Счёт оплачивается в целых копейках" in response.content.decode()
    assert not TopUpRequest.objects.exists()


def test_the_admin_shows_step_errors_and_actions_work(superadmin_client, company):
    request = services.request_top_up(company=company, amount=10 * RUB, request_key="k")
    changelist = admin_urls(TopUpRequest, 0)["changelist"]
    response = superadmin_client.post(changelist, {"action": "confirm_payments", "_selected_action": [request.pk]}, follow=True)
    assert "ещё нет счёта; сначала выставьте его" in response.content.decode()
    superadmin_client.post(changelist, {"action": "issue_invoices", "_selected_action": [request.pk]})
    superadmin_client.post(changelist, {"action": "confirm_payments", "_selected_action": [request.pk]})
    request.refresh_from_db()
    assert request.status == TopUpStatus.PAID and wallet_balance(company) == 10 * RUB


def test_the_admin_issues_an_act_on_demand(superadmin_client, company, october):
    url = reverse("admin:invoicing_document_issue_act")
    assert superadmin_client.get(url).status_code == 200
    response = superadmin_client.post(url, {"company": company.pk, "month": "2026-10"})
    assert response.status_code == 302
    act = Document.objects.get(kind=DocumentKind.ACT)
    assert act.amount == october["expected"]
    response = superadmin_client.post(url, {"company": company.pk, "month": "2026-08"})
    assert response.status_code == 200 and "Расходов Romashka за 2026-08 нет" in response.content.decode()


def test_only_staff_with_permission_reach_documents(client, personas, company):
    invoice = services.issue_invoice(top_up_request=services.request_top_up(company=company, amount=RUB, request_key="k"))
    url = reverse("admin:invoicing_document_pdf", args=[invoice.pk])
    client.force_login(personas.manager_a)
    response = client.get(url)
    assert response.status_code == 302 and b"%PDF" not in response.content


def test_the_act_sums_what_the_meter_charged(company, personas):
    """Charges written by billing's real door for metered usage (record_usage_batch) are what the act states."""
    import time

    from apps.accounts.models import Supplier
    from apps.billing.models import UsageStatus
    from apps.billing.usage import UsageEvent
    from apps.billing.usage_records import record_usage_batch

    ledger.top_up(company=company, amount=1_000 * RUB, idempotency_id="seed")
    supplier = Supplier.objects.create(slug="keys", name="Keys")
    costs = [1_234_567, 89 * RUB + 4_999, 5_000, 0]
    now = time.time()
    events = [UsageEvent(request_id=f"req_{i}", endpoint="chat", status=UsageStatus.OK, http_status=200, started_at=now,
                         finished_at=now + 1, company_id=company.pk, supplier_id=supplier.pk, model_name="m",
                         input_tokens=10, output_tokens=5, sell_cost=cost, buy_cost=cost // 2) for i, cost in enumerate(costs)]
    record_usage_batch(events=events)
    charged = Transfer.objects.filter(kind=TransferKind.USAGE).order_by("created_at")
    assert charged.count() == 3  # a free request moves nothing
    first, last = charged.first().created_at.astimezone(MSK), charged.last().created_at.astimezone(MSK)
    if (first.year, first.month) != (last.year, last.month):
        pytest.skip("the charges straddle a month's end in Moscow")
    assert services.month_usage_total(company=company, year=first.year, month=first.month) == sum(costs)
    _start, end = services.month_bounds(company=company, year=first.year, month=first.month)
    act = services.issue_act(company=company, year=first.year, month=first.month, now=end)
    assert act.amount == sum(costs) and act.details["total_text"] == format_amount(sum(costs))


def test_the_admin_lists_do_not_query_per_row_or_load_pdfs(superadmin_client, company):
    from django.test.utils import CaptureQueriesContext

    def listing_queries(model) -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            assert superadmin_client.get(admin_urls(model, 0)["changelist"]).status_code == 200
        return [q["sql"] for q in queries.captured_queries]

    def add_invoiced(i: int) -> None:
        services.issue_invoice(top_up_request=services.request_top_up(company=company, amount=RUB, request_key=f"k{i}"))

    add_invoiced(0)
    few = {model: listing_queries(model) for model in (TopUpRequest, Document)}
    for i in range(1, 5):
        add_invoiced(i)
    for model, queries in few.items():
        many = listing_queries(model)
        assert len(many) == len(queries), (model, many[len(queries) - 2:])
        assert not any('"pdf"' in sql for sql in many), model


@pytest.mark.django_db(transaction=True)
def test_the_task_and_an_admin_issuing_one_act_at_once_make_one_act(company, october):
    results = _in_parallel(3, lambda i: services.issue_act(company=company, year=2026, month=10, now=AFTER_OCTOBER).pk)
    assert all(status == "ok" for status, _ in results), results
    assert len({pk for _, pk in results}) == 1
    act = Document.objects.get(kind=DocumentKind.ACT)
    assert (act.number, act.amount) == (1, october["expected"])
    assert services.issue_act(company=company, year=2026, month=11, now=dt.datetime(2026, 12, 2, tzinfo=dt.UTC)).number == 2


def test_a_direct_credit_moves_money_once_per_key(company, personas):
    from apps.billing.exceptions import IdempotencyConflict

    first = services.credit_directly(company=company, amount=300 * RUB, credit_key="form-1", credited_by=personas.superadmin,
                                     description="п/п № 42")
    assert services.credit_directly(company=company, amount=300 * RUB, credit_key="form-1") == first
    assert (first.kind, first.description) == (TransferKind.TOP_UP, "п/п № 42 (root@example.com)")
    with pytest.raises(IdempotencyConflict):
        services.credit_directly(company=company, amount=301 * RUB, credit_key="form-1")
    with pytest.raises(InvalidTopUpAmount):
        services.credit_directly(company=company, amount=0, credit_key="form-2")
    assert wallet_balance(company) == 300 * RUB


def test_the_admin_credits_a_company_directly(superadmin_client, company, client, personas):
    url = reverse("admin:invoicing_topuprequest_credit")
    assert url in superadmin_client.get(admin_urls(TopUpRequest, 0)["changelist"]).content.decode()
    page = superadmin_client.get(url)
    assert page.status_code == 200
    key = page.context["form"]["form_key"].value()
    data = {"company": company.pk, "amount": "250.25", "description": "п/п № 7", "form_key": key}
    for _ in range(2):  # a double submit credits once
        assert superadmin_client.post(url, data).status_code == 302
    assert wallet_balance(company) == 250 * RUB + 25 * KOP
    response = superadmin_client.post(url, {**data, "amount": "-1", "form_key": "other"})
    assert response.status_code == 200 and response.context["form"].errors["amount"]
    assert wallet_balance(company) == 250 * RUB + 25 * KOP
    client.force_login(personas.manager_a)
    assert client.post(url, {**data, "form_key": "x"}).status_code == 302  # to the admin login
    assert wallet_balance(company) == 250 * RUB + 25 * KOP
