"""The company cabinet's wallet: the balance as the gateway spends from it, the ledger history
(keyset pages, HTMX), top-up requests with their invoices, and the invoices and closing acts as
PDF downloads."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from apps.billing.wallet_history import BadCursor, wallet_history
from apps.cabinets.access import COMPANY_MANAGERS, company_object, company_view
from apps.cabinets.company.forms import HistoryFilterForm, RequisitesForm, TopUpForm, apply_errors
from apps.cabinets.company.helpers import in_company_time_zone
from apps.cabinets.rendering import render_page
from apps.invoicing import self_service
from apps.invoicing.exceptions import InvoicingError
from apps.invoicing.models import CompanyRequisites, Document, DocumentKind, TopUpRequest, TopUpStatus
from apps.proxy import services as gateway


def _page(request: HttpRequest, form: TopUpForm | None = None, *, status: int = 200) -> HttpResponse:
    company = request.company  # type: ignore[attr-defined]
    filters = HistoryFilterForm(request.GET or None)
    cursor = filters.cleaned_data.get("cursor", "") if filters.is_valid() else ""
    try:
        history = wallet_history(company=company, cursor=cursor, kinds=filters.kinds())
    except BadCursor:
        history = wallet_history(company=company, kinds=filters.kinds())
    query = request.GET.copy()
    query.pop("cursor", None)
    can_manage = request.membership.role in COMPANY_MANAGERS  # type: ignore[attr-defined]
    context = {
        "funds": gateway.company_funds(company=company), "history": history, "filters": filters, "query": query.urlencode(),
        "top_ups": self_service.company_top_ups(company=company), "can_manage": can_manage,
        "form": form or (TopUpForm() if can_manage else None),
        "invoices": self_service.company_documents(company=company, kind=DocumentKind.INVOICE)[:20],
        "acts": self_service.company_documents(company=company, kind=DocumentKind.ACT)[:24],
        "open_statuses": (TopUpStatus.REQUESTED, TopUpStatus.INVOICED),
        "requisites": CompanyRequisites.objects.filter(company=company).first(),
    }
    return render_page(request, "cabinets/company/wallet.html", context, partial="cabinets/company/wallet_history.html",
                       status=status)


@company_view()
@in_company_time_zone
def wallet(request: HttpRequest) -> HttpResponse:
    """Balance, available now, in flight; the history with its filter and "older" pages; top-ups,
    invoices and acts."""
    return _page(request)


@company_view(*COMPANY_MANAGERS)
@require_POST
@in_company_time_zone
def topup_request(request: HttpRequest) -> HttpResponse:
    """Ask for a top-up and get its invoice at once (the same form sent twice is one request)."""
    form = TopUpForm(request.POST)
    if form.is_valid():
        try:
            done = self_service.request_top_up_with_invoice(
                company=request.company, amount=form.cleaned_data["amount"],  # type: ignore[attr-defined]
                request_key=form.cleaned_data["request_key"], requested_by=request.user)
        except InvoicingError as exc:
            form.add_error("amount", str(exc))
        else:
            if done.invoice is not None:
                messages.success(request, _("Invoice № %(number)s is issued; the wallet is topped up when the payment arrives.")
                                 % {"number": done.invoice.number})
            else:
                messages.info(request, _("The top-up is requested; the platform will issue its invoice."))
            return redirect("cabinets:company:wallet")
    return _page(request, form, status=400)


@company_view(*COMPANY_MANAGERS)
def requisites(request: HttpRequest) -> HttpResponse:
    """What the company's next invoices and acts name as the buyer: legal name, INN, KPP, address."""
    company = request.company  # type: ignore[attr-defined]
    current = CompanyRequisites.objects.filter(company=company).first()
    form = RequisitesForm(request.POST or None, instance=current or CompanyRequisites(company=company))
    if request.method == "POST" and form.is_valid():
        try:
            self_service.save_company_requisites(company=company, **{name: form.cleaned_data[name] for name in self_service.REQUISITES_FIELDS})
        except ValidationError as exc:
            apply_errors(form, exc)
        else:
            messages.success(request, _("The requisites are saved; the next invoices and acts show them."))
            return redirect("cabinets:company:wallet")
    return render_page(request, "cabinets/company/wallet_requisites.html", {"form": form, "requisites": current})


@company_view(*COMPANY_MANAGERS)
@require_POST
def topup_cancel(request: HttpRequest, topup_id: int) -> HttpResponse:
    """Cancel a top-up request not paid yet (its invoice, if any, stays on record)."""
    top_up = company_object(request, TopUpRequest.objects.all(), pk=topup_id)
    try:
        self_service.cancel_own_top_up(company=request.company, top_up_request=top_up, cancelled_by=request.user)  # type: ignore[attr-defined]
    except InvoicingError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, _("The top-up request is cancelled."))
    return redirect("cabinets:company:wallet")


@company_view()
def document_pdf(request: HttpRequest, document_id: int) -> HttpResponse:
    """Download one of the company's invoices or closing acts as PDF."""
    document = company_object(request, Document.objects.all(), pk=document_id)
    response = HttpResponse(bytes(document.pdf), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{document.filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response
