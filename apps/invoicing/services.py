"""Top-ups against invoices, and monthly closing acts: the service API the admin, the Celery task
and (later) the company cabinet call.

Top-up flow: ``request_top_up`` (a manager asks for an amount) → ``issue_invoice`` (a numbered
«Счёт на оплату» PDF) → ``confirm_payment`` (the superadmin saw the money arrive: the wallet is
credited through the ledger, exactly once) — or ``cancel_top_up`` before it is paid. A superadmin
may also credit a wallet directly with ``apps.billing.services.top_up``.

Every step is idempotent: calling it again returns what the first call did and changes nothing,
and two concurrent calls on one request take turns on its row lock. Amounts are integer
micro-rubles; an invoice's amount is a whole number of kopecks. Errors are ``InvoicingError``
subclasses (apps/invoicing/exceptions.py); the ledger's own errors pass through.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.billing import services as ledger
from apps.billing.models import Account, AccountKind, Transfer, TransferKind, TransferStatus
from apps.invoicing import rendering
from apps.invoicing.amounts import format_amount, vat_included
from apps.invoicing.exceptions import InvalidPeriod, InvalidTopUpAmount, InvalidTopUpState, NothingToInvoice
from apps.invoicing.models import KOPECK, Document, DocumentKind, DocumentSequence, TopUpRequest, TopUpStatus

logger = logging.getLogger("jetstream.invoicing")

MAX_TOP_UP = 10_000_000_000 * 1_000_000  # ten billion rubles, micro-RUB: far beyond any real payment
_REQUEST_KEY_MAX = 100


# --- top-ups ---------------------------------------------------------------------------------

def check_top_up_amount(amount: object) -> int:
    """``amount`` if it is a positive whole number of kopecks in micro-RUB (at most ``MAX_TOP_UP``);
    raises ``InvalidTopUpAmount`` with a message a person can act on otherwise."""
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise InvalidTopUpAmount(_("A top-up amount is a whole number of micro-rubles, got %(value)r.") % {"value": amount})
    if amount <= 0:
        raise InvalidTopUpAmount(_("A top-up amount must be greater than zero, got %(amount)s RUB.")
                                 % {"amount": format_amount(amount)})
    if amount % KOPECK:
        raise InvalidTopUpAmount(_("An invoice is paid in whole kopecks; %(amount)s micro-RUB is not.") % {"amount": amount})
    if amount > MAX_TOP_UP:
        raise InvalidTopUpAmount(_("A top-up amount may not exceed %(max)s RUB.") % {"max": format_amount(MAX_TOP_UP)})
    return amount


def request_top_up(*, company: Any, amount: int, request_key: str, requested_by: Any = None) -> TopUpRequest:
    """Record a company's request to top up ``amount`` micro-RUB; return it (status ``requested``).

    ``request_key`` is the caller's idempotency key (e.g. the form's one-time id): the same key for
    the same company returns the request already made; with a different amount it raises
    ``InvalidTopUpState``. Raises ``InvalidTopUpAmount`` for a zero, negative, fractional-kopeck or
    huge amount (nothing is written).
    """
    check_top_up_amount(amount)
    if not isinstance(request_key, str) or not request_key.strip() or len(request_key) > _REQUEST_KEY_MAX:
        raise InvalidTopUpState(_("A request key is 1 to %(max)d characters.") % {"max": _REQUEST_KEY_MAX})
    try:
        # A savepoint: a lost race must leave the caller's transaction usable.
        with transaction.atomic():
            created = TopUpRequest.objects.create(company=company, amount=amount, request_key=request_key,
                                                  requested_by=requested_by)
            logger.info("top-up request #%s: company %s asked for %s micro-RUB", created.pk, company.pk, amount)
            return created
    except IntegrityError:
        # Race or retry: the unique (company, request_key) let one INSERT through; ours waited
        # for it to commit, so this read sees it.
        existing = TopUpRequest.objects.filter(company=company, request_key=request_key).first()
        if existing is None:
            raise
    if existing.amount != amount:
        raise InvalidTopUpState(_("Request key %(key)r was already used for a top-up of %(amount)s RUB.")
                                % {"key": request_key, "amount": format_amount(existing.amount)})
    return existing


def credit_directly(*, company: Any, amount: int, credit_key: str, credited_by: Any = None, description: str = "") -> Transfer:
    """The superadmin credits the company's wallet now, without an invoice (platform cash → wallet,
    kind ``top_up``); return the ledger transfer.

    ``credit_key`` is the caller's idempotency key (the form's one-time id): the same key and amount
    again returns the same transfer and moves nothing; another amount raises the ledger's
    ``IdempotencyConflict``. Raises ``InvalidTopUpAmount`` as ``request_top_up`` does.
    """
    check_top_up_amount(amount)
    if not isinstance(credit_key, str) or not credit_key.strip() or len(credit_key) > _REQUEST_KEY_MAX:
        raise InvalidTopUpState(_("A request key is 1 to %(max)d characters.") % {"max": _REQUEST_KEY_MAX})
    who = getattr(credited_by, "email", None) or str(credited_by or "")
    text = description.strip() or _("Direct credit")
    transfer = ledger.top_up(company=company, amount=amount, idempotency_id=f"invoicing:direct:{credit_key}",
                             description=(f"{text} ({who})" if who else text)[:300])
    logger.info("direct credit: company %s, %s micro-RUB, transfer #%s", company.pk, amount, transfer.pk)
    return transfer


def _lock_request(top_up_request: TopUpRequest | int) -> TopUpRequest:
    pk = top_up_request.pk if isinstance(top_up_request, TopUpRequest) else top_up_request
    try:
        return TopUpRequest.objects.select_for_update().select_related("company").get(pk=pk)
    except TopUpRequest.DoesNotExist:
        raise InvalidTopUpState(_("No such top-up request: #%(pk)s.") % {"pk": pk}) from None


def issue_invoice(*, top_up_request: TopUpRequest | int, issued_by: Any = None) -> Document:
    """Issue the invoice for a request (status → ``invoiced``) and return it; a request already
    invoiced (or paid) returns its invoice, unchanged. Raises ``InvalidTopUpState`` for a cancelled
    request and ``RequisitesMissing`` if the platform's requisites are not configured."""
    with transaction.atomic():
        # Race: two "issue" clicks at once would take two numbers; the row lock makes the second
        # wait and then find the first one's invoice.
        request = _lock_request(top_up_request)
        if request.invoice_id is not None:
            assert request.invoice is not None
            return request.invoice
        if request.status == TopUpStatus.CANCELLED:
            raise InvalidTopUpState(_("Top-up request #%(pk)s is cancelled; it cannot be invoiced.") % {"pk": request.pk})
        day = timezone.localdate()
        document = _issue_document(
            kind=DocumentKind.INVOICE, company=request.company, day=day, amount=request.amount, issued_by=issued_by,
            details=lambda number, vat_percent, vat: rendering.invoice_details(
                number=number, day=day, amount=request.amount, vat_percent=vat_percent, vat=vat, company=request.company,
                top_up_request_id=request.pk))
        request.invoice, request.status, request.invoiced_at = document, TopUpStatus.INVOICED, timezone.now()
        request.save(update_fields=["invoice", "status", "invoiced_at"])
        logger.info("top-up request #%s: invoice %s issued", request.pk, document)
        return document


def confirm_payment(*, top_up_request: TopUpRequest | int, confirmed_by: Any = None) -> Transfer:
    """The invoice was paid: credit the company's wallet with the request's amount (platform cash →
    wallet, kind ``top_up``), mark the request ``paid`` and return the ledger transfer.

    Exactly once: a second confirmation, concurrent or later, returns the same transfer and moves
    nothing. Raises ``InvalidTopUpState`` for a cancelled request or one not invoiced yet.
    """
    with transaction.atomic():
        # Race: two confirmations at once (a double-submitted form, two admins). The row lock
        # makes the second wait until the first commits, then it sees status "paid". The ledger's
        # idempotency id is a second guard should anything bypass this lock.
        request = _lock_request(top_up_request)
        if request.status == TopUpStatus.PAID:
            assert request.transfer is not None
            return request.transfer
        if request.status == TopUpStatus.CANCELLED:
            raise InvalidTopUpState(_("Top-up request #%(pk)s is cancelled; its payment cannot be confirmed.") % {"pk": request.pk})
        if request.status != TopUpStatus.INVOICED or request.invoice is None:
            raise InvalidTopUpState(_("Top-up request #%(pk)s has no invoice yet; issue it first.") % {"pk": request.pk})
        invoice = request.invoice
        transfer = ledger.top_up(
            company=request.company, amount=request.amount, idempotency_id=f"invoicing:top_up_request:{request.pk}",
            description=_("Payment of invoice № %(number)s of %(date)s") % {"number": invoice.number, "date": invoice.date.isoformat()})
        request.transfer, request.status, request.paid_at, request.confirmed_by = transfer, TopUpStatus.PAID, timezone.now(), confirmed_by
        request.save(update_fields=["transfer", "status", "paid_at", "confirmed_by"])
        logger.info("top-up request #%s: payment confirmed, transfer #%s", request.pk, transfer.pk)
        return transfer


def cancel_top_up(*, top_up_request: TopUpRequest | int, cancelled_by: Any = None) -> TopUpRequest:
    """Cancel a request not yet paid (its invoice, if any, stays on record); cancelling again is a
    no-op. Raises ``InvalidTopUpState`` for a paid request (money that arrived is not un-received)."""
    with transaction.atomic():
        request = _lock_request(top_up_request)
        if request.status == TopUpStatus.CANCELLED:
            return request
        if request.status == TopUpStatus.PAID:
            raise InvalidTopUpState(_("Top-up request #%(pk)s is paid; it cannot be cancelled.") % {"pk": request.pk})
        request.status, request.cancelled_at, request.cancelled_by = TopUpStatus.CANCELLED, timezone.now(), cancelled_by
        request.save(update_fields=["status", "cancelled_at", "cancelled_by"])
        logger.info("top-up request #%s cancelled", request.pk)
        return request


# --- closing acts ----------------------------------------------------------------------------

def month_bounds(*, company: Any, year: int, month: int) -> tuple[dt.datetime, dt.datetime]:
    """The month in the company's time zone as [start, end) aware datetimes. Raises ``InvalidPeriod``."""
    if not isinstance(year, int) or not isinstance(month, int) or not (2000 <= year <= 9998 and 1 <= month <= 12):
        raise InvalidPeriod(_("%(year)s-%(month)s is not a month.") % {"year": year, "month": month})
    zone = zoneinfo.ZoneInfo(company.time_zone)
    start = dt.datetime(year, month, 1, tzinfo=zone)
    end = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone)
    return start, end


def month_usage_total(*, company: Any, year: int, month: int) -> int:
    """What the company's wallet paid for usage in that month (company time zone), micro-RUB: posted
    ``usage`` debits of the wallet less any ``usage`` credits back to it, by the ledger's own time."""
    start, end = month_bounds(company=company, year=year, month=month)
    wallet = Account.objects.filter(kind=AccountKind.COMPANY_WALLET, company=company).first()
    if wallet is None:
        return 0
    usage = Transfer.objects.filter(kind=TransferKind.USAGE, status=TransferStatus.POSTED, created_at__gte=start, created_at__lt=end)
    debits = usage.filter(debit_account=wallet).aggregate(total=Sum("amount"))["total"] or 0
    credits = usage.filter(credit_account=wallet).aggregate(total=Sum("amount"))["total"] or 0
    return debits - credits


def issue_act(*, company: Any, year: int, month: int, issued_by: Any = None, now: dt.datetime | None = None) -> Document:
    """The closing act for the company's month, issued now if it has none (idempotent: an act, once
    issued, is returned as it is, never re-numbered or re-rendered).

    The act states the wallet's usage for the month (``month_usage_total``, to the kopeck) and is
    dated the month's last day. Raises ``InvalidPeriod`` for a month that has not ended in the
    company's time zone (its total could still change) and ``NothingToInvoice`` for a month
    without usage.
    """
    start, end = month_bounds(company=company, year=year, month=month)
    first, last = start.date(), (end - dt.timedelta(days=1)).date()
    with transaction.atomic():
        existing = Document.objects.filter(kind=DocumentKind.ACT, company=company, period_start=first).first()
        if existing is not None:
            return existing
        if (now or timezone.now()) < end:
            raise InvalidPeriod(_("%(month)s has not ended yet in %(zone)s; its act can be issued from %(end)s.")
                                % {"month": f"{year}-{month:02d}", "zone": company.time_zone, "end": end.isoformat()})
        amount = month_usage_total(company=company, year=year, month=month)
        if amount <= 0:
            raise NothingToInvoice(_("%(company)s used nothing in %(month)s; there is no act to issue.")
                                   % {"company": company, "month": f"{year}-{month:02d}"})
        try:
            with transaction.atomic():
                return _issue_document(
                    kind=DocumentKind.ACT, company=company, day=last, amount=amount, issued_by=issued_by, period=(first, last),
                    details=lambda number, vat_percent, vat: rendering.act_details(
                        number=number, day=last, amount=amount, vat_percent=vat_percent, vat=vat, company=company,
                        period=(first, last)))
        except IntegrityError:
            # Race: the task and an admin issuing the same act at once. one_act_per_company_month
            # let one through; our INSERT waited for it, so this read finds it (our number rolled back).
            winner = Document.objects.filter(kind=DocumentKind.ACT, company=company, period_start=first).first()
            if winner is None:
                raise
            return winner


def previous_month(*, company: Any, now: dt.datetime | None = None) -> tuple[int, int]:
    """(year, month) of the last month that has ended in the company's time zone."""
    local = (now or timezone.now()).astimezone(zoneinfo.ZoneInfo(company.time_zone))
    return (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)


def issue_acts_for_previous_month(*, now: dt.datetime | None = None) -> list[Document]:
    """Issue the act for the month just ended (company time zone) for every company that has a wallet
    and used something in it; return the acts issued now. Safe to run any number of times."""
    from apps.accounts.models import Company

    issued: list[Document] = []
    companies = Company.objects.filter(ledger_accounts__kind=AccountKind.COMPANY_WALLET).select_related("requisites")
    for company in companies:
        year, month = previous_month(company=company, now=now)
        first = dt.date(year, month, 1)
        if Document.objects.filter(kind=DocumentKind.ACT, company=company, period_start=first).exists():
            continue
        try:
            issued.append(issue_act(company=company, year=year, month=month, now=now))
        except NothingToInvoice:
            continue
    return issued


# --- numbering -------------------------------------------------------------------------------

def _next_number(*, kind: str, year: int) -> DocumentSequence:
    # The row for (kind, year) is created once; ON CONFLICT DO NOTHING makes creating it race-free.
    DocumentSequence.objects.bulk_create([DocumentSequence(kind=kind, year=year)], ignore_conflicts=True)
    # Race: two documents of one kind and year at once. The row lock makes the second wait for
    # the first to commit (or roll back: then its number is free again), so numbers never repeat
    # and never skip.
    sequence = DocumentSequence.objects.select_for_update().get(kind=kind, year=year)
    sequence.last_number += 1
    sequence.save(update_fields=["last_number"])
    return sequence


def _issue_document(*, kind: str, company: Any, day: dt.date, amount: int, issued_by: Any, details: Any,
                    period: tuple[dt.date, dt.date] | None = None) -> Document:
    """Take the next number, render the PDF and write the document, in the caller's transaction
    (so a failure anywhere gives the number back). ``details(number, vat_percent, vat)`` builds
    what the document shows."""
    vat_percent = settings.INVOICING["VAT_PERCENT"]
    vat = vat_included(amount, vat_percent)
    sequence = _next_number(kind=kind, year=day.year)
    shown = details(sequence.last_number, vat_percent, vat)
    pdf, sha256 = rendering.render_pdf(shown)
    return Document.objects.create(
        kind=kind, year=day.year, number=sequence.last_number, date=day, company=company, amount=amount,
        vat_percent=vat_percent, vat_amount=vat, period_start=period[0] if period else None,
        period_end=period[1] if period else None, details=shown, pdf=pdf, sha256=sha256, created_by=issued_by)


# --- the operator's approvals queue ----------------------------------------------------------

def open_top_up_requests() -> Any:
    """Top-up requests waiting for the platform, oldest first: ``requested`` (to invoice) and
    ``invoiced`` (to confirm once the money arrives). A queryset with the company and invoice."""
    return (TopUpRequest.objects.select_related("company", "invoice", "requested_by")
            .filter(status__in=[TopUpStatus.REQUESTED, TopUpStatus.INVOICED]).order_by("requested_at", "pk"))
