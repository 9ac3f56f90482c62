"""What a company does for itself in its cabinet: ask for a top-up and get the invoice at once,
cancel a request not paid yet, and find its documents. Built on ``apps.invoicing.services``
(the payment itself is still confirmed by the platform when the money arrives)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import QuerySet

from apps.invoicing import services
from apps.invoicing.exceptions import InvalidTopUpState, RequisitesMissing
from apps.invoicing.models import CompanyRequisites, Document, TopUpRequest, TopUpStatus

logger = logging.getLogger("jetstream.invoicing")


@dataclass(frozen=True)
class TopUpRequested:
    """The request made (or found again, for a repeated ``request_key``) and its ``invoice`` — None
    when the platform's requisites are not configured yet (the operator issues it later)."""

    request: TopUpRequest
    invoice: Document | None


def request_top_up_with_invoice(*, company: Any, amount: int, request_key: str, requested_by: Any = None) -> TopUpRequested:
    """``services.request_top_up`` for ``amount`` micro-RUB (whole kopecks) and, at once,
    ``services.issue_invoice`` — a numbered invoice PDF the company can pay. Idempotent by
    ``request_key`` (the form's one-time key). Raises ``InvalidTopUpAmount`` / ``InvalidTopUpState``
    as those do; a platform without requisites leaves the request ``requested`` (no error)."""
    with transaction.atomic():
        request = services.request_top_up(company=company, amount=amount, request_key=request_key, requested_by=requested_by)
        if request.status == TopUpStatus.CANCELLED:
            return TopUpRequested(request, None)
        try:
            # A savepoint: a refused invoice must leave the request itself in place.
            with transaction.atomic():
                invoice = services.issue_invoice(top_up_request=request, issued_by=requested_by)
        except RequisitesMissing:
            logger.warning("top-up request #%s: no invoice, the platform's requisites are not configured", request.pk)
            return TopUpRequested(request, None)
        request.refresh_from_db()
        return TopUpRequested(request, invoice)


def cancel_own_top_up(*, company: Any, top_up_request: TopUpRequest, cancelled_by: Any = None) -> TopUpRequest:
    """Cancel the company's own request while it is not paid (``services.cancel_top_up``). Raises
    ``InvalidTopUpState`` for another company's request or a paid one."""
    if top_up_request.company_id != company.pk:
        raise InvalidTopUpState("not this company's request")
    return services.cancel_top_up(top_up_request=top_up_request, cancelled_by=cancelled_by)


def company_documents(*, company: Any, kind: str) -> QuerySet[Document]:
    """The company's invoices or acts (``DocumentKind``), newest first, without their PDF bytes."""
    return Document.objects.filter(company=company, kind=kind).defer("pdf", "details").order_by("-date", "-number")


def company_top_ups(*, company: Any, limit: int = 20) -> list[TopUpRequest]:
    """The company's latest top-up requests with their invoices (without PDF bytes), newest first."""
    return list(TopUpRequest.objects.filter(company=company).select_related("invoice").defer("invoice__pdf", "invoice__details")
                .order_by("-requested_at", "-pk")[:limit])




REQUISITES_FIELDS = ("legal_name", "inn", "kpp", "address")


def save_company_requisites(*, company: Any, legal_name: str, inn: str, kpp: str = "", address: str = "") -> CompanyRequisites:
    """Set what the company's next invoices and acts name as the buyer (its legal name, INN, KPP,
    address; the contract is the platform's to record). Documents already issued keep what they
    showed. Raises ``ValidationError`` (an INN of neither 10 nor 12 digits, a KPP not of 9)."""
    with transaction.atomic():
        # Lock: two managers saving at once must not both INSERT the one-to-one row.
        requisites = CompanyRequisites.objects.select_for_update().filter(company=company).first() or CompanyRequisites(company=company)
        requisites.legal_name, requisites.inn, requisites.kpp, requisites.address = legal_name.strip(), inn.strip(), kpp.strip(), address.strip()
        requisites.full_clean(exclude=["company"] if requisites.pk is None else None)
        requisites.save()
        return requisites
