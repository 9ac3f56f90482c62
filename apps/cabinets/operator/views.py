"""The operator cabinet's pages (the superadmin's, beside the Django admin): companies and suppliers
at a glance, the approvals queue, the catalogue with per-company coefficients, health of keys,
egress points and local nodes, turnover and margin by day.

``operator_view`` answers 404 to anyone but a superuser. Views are thin: money moves only through
``apps/invoicing/services.py`` (top-ups) and ``apps/billing/suppliers.py`` (withdrawals), each step
idempotent, so a double click moves nothing twice.
"""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.models import Company, CompanyModelCoefficient
from apps.billing.exceptions import LedgerError
from apps.billing.models import WithdrawalStatus
from apps.billing.reports import platform_margin, spend_by
from apps.billing.suppliers import approve_withdrawal, reject_withdrawal, withdrawal_requests
from apps.cabinets.access import operator_view, recent_auth_required
from apps.cabinets.operator.forms import CoefficientForm, PeriodDaysForm, RejectForm
from apps.cabinets.operator.overview import company_rows, month_margin, supplier_rows
from apps.cabinets.rendering import render_page
from apps.invoicing.exceptions import InvoicingError
from apps.invoicing.models import TopUpRequest
from apps.invoicing.services import cancel_top_up, confirm_payment, issue_invoice, open_top_up_requests
from apps.providers.models import EgressProxy, LocalNode, Model, Provider, SupplierKey
from apps.providers.node_health import outstanding_by_node
from apps.providers.services import key_overviews, model_catalog, set_company_model_coefficient


@operator_view
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    """Companies and suppliers with their balances, what waits for approval, this month's turnover."""
    return render_page(request, "cabinets/operator/dashboard.html", {
        "companies": company_rows(), "suppliers": supplier_rows(), "margin": month_margin(),
        "open_top_ups": open_top_up_requests().count(),
        "open_withdrawals": withdrawal_requests(statuses=[WithdrawalStatus.REQUESTED]).count()})


# --- approvals ---------------------------------------------------------------------------------

def _approvals(request: HttpRequest, *, status: int = 200) -> HttpResponse:
    return render_page(request, "cabinets/operator/approvals.html", {
        "top_ups": open_top_up_requests(),
        "withdrawals": withdrawal_requests(statuses=[WithdrawalStatus.REQUESTED, WithdrawalStatus.APPROVED]),
        "reject_form": RejectForm()}, partial="cabinets/operator/_approvals.html", status=status)


@operator_view
@require_GET
def approvals(request: HttpRequest) -> HttpResponse:
    """Top-ups to invoice and to confirm, withdrawals to approve or reject."""
    return _approvals(request)


def _after_action(request: HttpRequest) -> HttpResponse:
    """HTMX: the queue again (the messages with it); otherwise back to the queue page."""
    if getattr(request, "htmx", False):
        return _approvals(request)
    return redirect("cabinets:operator:approvals")


def _top_up_step(request: HttpRequest, topup_id: int, step) -> HttpResponse:
    top_up = get_object_or_404(TopUpRequest.objects.select_related("company"), pk=topup_id)
    try:
        message = step(top_up)
    except (InvoicingError, LedgerError) as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, message)
    return _after_action(request)


@operator_view
@require_POST
def top_up_invoice(request: HttpRequest, topup_id: int) -> HttpResponse:
    """Issue the invoice for a requested top-up (again: the same invoice)."""
    def step(top_up: TopUpRequest) -> str:
        invoice = issue_invoice(top_up_request=top_up, issued_by=request.user)
        return _("Invoice № %(number)s issued to %(company)s.") % {"number": invoice.number, "company": top_up.company}
    return _top_up_step(request, topup_id, step)


@operator_view
@require_POST
@recent_auth_required
def top_up_confirm(request: HttpRequest, topup_id: int) -> HttpResponse:
    """The invoice is paid: credit the wallet, exactly once however often it is clicked (after a
    recent password or TOTP check: it creates money in a wallet)."""
    def step(top_up: TopUpRequest) -> str:
        confirm_payment(top_up_request=top_up, confirmed_by=request.user)
        return _("Payment of top-up #%(pk)s confirmed; %(company)s's wallet is credited.") % {"pk": top_up.pk, "company": top_up.company}
    return _top_up_step(request, topup_id, step)


@operator_view
@require_POST
def top_up_cancel(request: HttpRequest, topup_id: int) -> HttpResponse:
    """Cancel a top-up not yet paid."""
    def step(top_up: TopUpRequest) -> str:
        cancel_top_up(top_up_request=top_up, cancelled_by=request.user)
        return _("Top-up #%(pk)s cancelled.") % {"pk": top_up.pk}
    return _top_up_step(request, topup_id, step)


def _withdrawal_step(request: HttpRequest, withdrawal_id: int, step) -> HttpResponse:
    withdrawal = get_object_or_404(withdrawal_requests(), pk=withdrawal_id)
    try:
        message = step(withdrawal)
    except LedgerError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, message)
    return _after_action(request)


@operator_view
@require_POST
@recent_auth_required
def withdrawal_approve(request: HttpRequest, withdrawal_id: int) -> HttpResponse:
    """Approve a requested withdrawal for the next payout run (again: unchanged), after a recent
    password or TOTP check: approving sends money out."""
    def step(withdrawal) -> str:
        approve_withdrawal(withdrawal_id=withdrawal.pk, by=request.user)
        return _("Withdrawal #%(pk)s of %(supplier)s approved for payout.") % {"pk": withdrawal.pk, "supplier": withdrawal.supplier}
    return _withdrawal_step(request, withdrawal_id, step)


@operator_view
@require_POST
def withdrawal_reject(request: HttpRequest, withdrawal_id: int) -> HttpResponse:
    """Reject a withdrawal not yet paid: its hold is released (again: unchanged)."""
    form = RejectForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(form.errors["reason"]))
        return _after_action(request)
    reason = form.cleaned_data["reason"]

    def step(withdrawal) -> str:
        reject_withdrawal(withdrawal_id=withdrawal.pk, by=request.user, reason=reason)
        return _("Withdrawal #%(pk)s of %(supplier)s rejected; the amount is available to it again.") % {
            "pk": withdrawal.pk, "supplier": withdrawal.supplier}
    return _withdrawal_step(request, withdrawal_id, step)


# --- catalogue ---------------------------------------------------------------------------------

@operator_view
@require_GET
def catalog(request: HttpRequest) -> HttpResponse:
    """Providers, models and their current prices, with links to the admin for edits."""
    return render_page(request, "cabinets/operator/catalog.html", {
        "providers": Provider.objects.order_by("slug"), "models": model_catalog()})


def _coefficient_rows(company: Company, *, failed: tuple[int, CoefficientForm] | None = None) -> list[dict]:
    """One row per model: its catalogue entry, the company's own coefficient (None: the company's
    default applies) and the inline form (``failed``: the form that did not validate, for its model)."""
    own = {row.model_id: row.sell_coefficient for row in CompanyModelCoefficient.objects.filter(company=company)}
    rows = []
    for item in model_catalog():
        form = failed[1] if failed and failed[0] == item.model.pk else CoefficientForm(
            initial={"sell_coefficient": own.get(item.model.pk) or ""})
        rows.append({"item": item, "coefficient": own.get(item.model.pk), "form": form})
    return rows


def _coefficients_page(request: HttpRequest, company: Company | None, *, failed: tuple[int, CoefficientForm] | None = None,
                       status: int = 200) -> HttpResponse:
    return render_page(request, "cabinets/operator/coefficients.html", {
        "companies": Company.objects.order_by("name"), "company": company,
        "rows": _coefficient_rows(company, failed=failed) if company else []},
        partial="cabinets/operator/_coefficients.html", status=status)


@operator_view
@require_GET
def coefficients(request: HttpRequest) -> HttpResponse:
    """A company's sell coefficient per model (its own, else the company's, else the platform
    default), each editable inline. ``?company=<id>`` picks the company (HTMX swaps the table)."""
    companies = Company.objects.order_by("name")
    chosen = request.GET.get("company", "")
    company = companies.filter(pk=chosen).first() if chosen.isdigit() else companies.first()
    return _coefficients_page(request, company)


@operator_view
@require_POST
def coefficient_set(request: HttpRequest, company_id: int, model_id: int) -> HttpResponse:
    """Set (or, empty, remove) ``company_id``'s sell coefficient for ``model_id``. HTMX gets the
    table back; a plain form post is redirected to it (or shown again with the error, 400)."""
    company = get_object_or_404(Company, pk=company_id)
    model = get_object_or_404(Model, pk=model_id)
    form = CoefficientForm(request.POST)
    if form.is_valid():
        try:
            row = set_company_model_coefficient(company=company, model=model, sell_coefficient=form.cleaned_data["sell_coefficient"])
        except ValidationError as exc:
            form.add_error("sell_coefficient", exc.messages)
        else:
            messages.success(request, _("%(company)s pays %(coefficient)s for %(model)s.") % {
                "company": company, "model": model.name,
                "coefficient": row.sell_coefficient if row else _("its default coefficient")})
            if getattr(request, "htmx", False):
                return _coefficients_page(request, company)
            return redirect(f"{reverse('cabinets:operator:coefficients')}?company={company.pk}")
    # HTMX swaps only a 2xx answer: the row's error comes back with 200 there.
    return _coefficients_page(request, company, failed=(model.pk, form), status=200 if getattr(request, "htmx", False) else 400)


# --- health ------------------------------------------------------------------------------------

@operator_view
@require_GET
def health(request: HttpRequest) -> HttpResponse:
    """Every supplier key (status, health, circuit, month), egress point and local node."""
    keys = SupplierKey.objects.select_related("provider", "supplier").order_by("provider__slug", "priority", "name")
    return render_page(request, "cabinets/operator/health.html", {
        "keys": key_overviews(keys), "egresses": EgressProxy.objects.order_by("slug"),
        "nodes": LocalNode.objects.select_related("provider", "supplier").order_by("provider__slug", "name"),
        "load": outstanding_by_node()})


# --- turnover ----------------------------------------------------------------------------------

def _turnover_chart(rows) -> dict:
    """The data island ``static/cabinets/charts.js`` draws: turnover and margin per day, in rubles
    (floats only here, for drawing; every figure in the table stays exact)."""
    def rubles(micro: int) -> float:
        return round(micro / 1_000_000, 2)

    return {"type": "bar", "unit": "rub", "labels": [row.label for row in rows], "datasets": [
        {"label": _("Turnover"), "data": [rubles(row.sell_cost) for row in rows]},
        {"label": _("Margin"), "data": [rubles(row.margin) for row in rows]}]}


@operator_view
@require_GET
def turnover(request: HttpRequest) -> HttpResponse:
    """Platform turnover (what companies paid), cost (what suppliers earn) and margin by day, with
    the period's totals from usage and as the ledger booked them."""
    form = PeriodDaysForm(request.GET)
    days = form.cleaned_data["days"] if form.is_valid() else 30
    end = timezone.localtime()
    start = (end - dt.timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = spend_by("day", start, end)
    return render_page(request, "cabinets/operator/turnover.html", {
        "form": form, "days": days, "rows": rows, "margin": platform_margin(start, end), "chart": _turnover_chart(rows),
        "totals": {"requests": sum(r.requests for r in rows), "sell": sum(r.sell_cost for r in rows),
                   "buy": sum(r.buy_cost for r in rows), "margin": sum(r.margin for r in rows)}},
        partial="cabinets/operator/_turnover.html", status=200 if form.is_valid() else 400)
