"""The supplier cabinet's pages: balance, keys, statements with export, withdrawals, payout details.

Every view is thin: ``supplier_view`` scopes it to the signed-in user's supplier (404 for anything
else, 403 for a member on an owner's action), objects addressed by URL come through
``supplier_object``, and the work is done by ``apps/providers/services.py`` (keys) and
``apps/billing/suppliers.py`` (money). Amounts are integer micro-rubles until the template.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from apps.billing.exceptions import LedgerError
from apps.billing.models import PAYOUT_DETAIL_FIELDS, SupplierPayoutDetails
from apps.billing.suppliers import (
    export_dataset,
    hold_days,
    request_supplier_withdrawal,
    save_payout_details,
    statement_dataset,
    supplier_balance,
    supplier_statement,
    withdrawal_requests,
)
from apps.cabinets.access import SUPPLIER_MANAGERS, recent_auth_required, supplier_object, supplier_view
from apps.cabinets.rendering import render_page
from apps.cabinets.supplier.forms import AddKeyForm, CapForm, PayoutDetailsForm, PeriodForm, RotateForm, WithdrawalForm
from apps.providers.models import SupplierKey
from apps.providers.services import (
    add_supplier_key,
    key_overviews,
    rotate_supplier_key_secret,
    set_supplier_key_cap,
    set_supplier_key_enabled,
)
from lib.money import format_rub

WITHDRAWALS_PER_PAGE = 25
EXPORT_TYPES = {"csv": "text/csv; charset=utf-8",
                "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


def _is_manager(request: HttpRequest) -> bool:
    return request.supplier_membership.role in SUPPLIER_MANAGERS  # type: ignore[attr-defined]


def _keys(request: HttpRequest):
    return SupplierKey.objects.select_related("provider").filter(supplier=request.supplier)  # type: ignore[attr-defined]


def _form_errors(form, exc: ValidationError) -> None:
    """Put a service's ``ValidationError`` on the form: per field where the form has one, else on top."""
    if hasattr(exc, "error_dict"):
        for field, errors in exc.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, exc)


@supplier_view()
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    """Balance (accrued / on hold / pending / paid out / available), the keys at a glance and the
    latest withdrawal requests."""
    supplier = request.supplier  # type: ignore[attr-defined]
    return render_page(request, "cabinets/supplier/dashboard.html", {
        "supplier": supplier, "balance": supplier_balance(supplier), "hold_days": hold_days(),
        "keys": key_overviews(_keys(request)), "withdrawals": withdrawal_requests(supplier=supplier)[:5],
        "can_manage": _is_manager(request)})


# --- keys --------------------------------------------------------------------------------------

@supplier_view()
@require_GET
def keys(request: HttpRequest) -> HttpResponse:
    """Every key: status, health, circuit, consumption and errors this month, cap."""
    return render_page(request, "cabinets/supplier/keys.html", {
        "keys": key_overviews(_keys(request)), "can_manage": _is_manager(request), "form": AddKeyForm()})


@supplier_view(*SUPPLIER_MANAGERS)
def key_add(request: HttpRequest) -> HttpResponse:
    """Add a key (GET: the form; POST: create it, then the keys page)."""
    form = AddKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            key = add_supplier_key(supplier=request.supplier, provider=data["provider"], name=data["name"],  # type: ignore[attr-defined]
                                   secret=data["secret"], monthly_cap=data["monthly_cap"])
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            messages.success(request, _("Key %(name)s added; it is stored encrypted and shown as %(masked)s.")
                             % {"name": key.name, "masked": key.masked_secret})
            return redirect("cabinets:supplier:key", key_id=key.pk)
    return render_page(request, "cabinets/supplier/key_add.html", {"form": form},
                       status=400 if request.method == "POST" else 200)


@supplier_view()
@require_GET
def key_detail(request: HttpRequest, key_id: int) -> HttpResponse:
    """One key: its figures, and for an owner the cap, rotation and enable/disable forms."""
    key = supplier_object(request, _keys(request), pk=key_id)
    return _key_page(request, key)


def _key_page(request: HttpRequest, key: SupplierKey, *, cap_form: CapForm | None = None,
              rotate_form: RotateForm | None = None, status: int = 200) -> HttpResponse:
    cap = None if key.monthly_cap is None else format_rub(key.monthly_cap, 2, exact=True)
    return render_page(request, "cabinets/supplier/key.html", {
        "overview": key_overviews([key])[0], "can_manage": _is_manager(request),
        "cap_form": cap_form or CapForm(initial={"monthly_cap": cap}), "rotate_form": rotate_form or RotateForm()},
        status=status)


@supplier_view(*SUPPLIER_MANAGERS)
@require_POST
def key_cap(request: HttpRequest, key_id: int) -> HttpResponse:
    """Set or clear the key's monthly spend cap."""
    key = supplier_object(request, _keys(request), pk=key_id)
    form = CapForm(request.POST)
    if form.is_valid():
        try:
            set_supplier_key_cap(key=key, monthly_cap=form.cleaned_data["monthly_cap"])
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            messages.success(request, _("The spend cap is saved."))
            return redirect("cabinets:supplier:key", key_id=key.pk)
    return _key_page(request, key, cap_form=form, status=400)


@supplier_view(*SUPPLIER_MANAGERS)
@require_POST
def key_rotate(request: HttpRequest, key_id: int) -> HttpResponse:
    """Replace the key's secret."""
    key = supplier_object(request, _keys(request), pk=key_id)
    form = RotateForm(request.POST)
    if form.is_valid():
        try:
            key = rotate_supplier_key_secret(key=key, secret=form.cleaned_data["secret"])
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            messages.success(request, _("The key's secret is replaced; it is now shown as %(masked)s.")
                             % {"masked": key.masked_secret})
            return redirect("cabinets:supplier:key", key_id=key.pk)
    return _key_page(request, key, rotate_form=form, status=400)


def _set_enabled(request: HttpRequest, key_id: int, *, enabled: bool) -> HttpResponse:
    key = set_supplier_key_enabled(key=supplier_object(request, _keys(request), pk=key_id), enabled=enabled)
    if getattr(request, "htmx", False):
        return render_page(request, "cabinets/supplier/_key_row.html",
                           {"row": key_overviews([key])[0], "can_manage": True})
    messages.success(request, _("Key %(name)s is enabled.") % {"name": key.name} if enabled
                     else _("Key %(name)s is disabled.") % {"name": key.name})
    return redirect("cabinets:supplier:key", key_id=key.pk)


@supplier_view(*SUPPLIER_MANAGERS)
@require_POST
def key_disable(request: HttpRequest, key_id: int) -> HttpResponse:
    """Stop routing requests to the key (idempotent)."""
    return _set_enabled(request, key_id, enabled=False)


@supplier_view(*SUPPLIER_MANAGERS)
@require_POST
def key_enable(request: HttpRequest, key_id: int) -> HttpResponse:
    """Route requests to the key again (idempotent)."""
    return _set_enabled(request, key_id, enabled=True)


# --- statements --------------------------------------------------------------------------------

def recent_months(count: int = 12) -> list[dict[str, Any]]:
    """The last ``count`` calendar months (TIME_ZONE), this one first, as ``{"month": date of the
    1st, "query": "start=…&end=…"}`` for the statement links (the current month ends today)."""
    today = timezone.localdate()
    first = today.replace(day=1)
    months = []
    for _i in range(count):
        last = min(today, (first + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1))
        months.append({"month": first, "query": urlencode({"start": first.isoformat(), "end": last.isoformat()})})
        first = (first - dt.timedelta(days=1)).replace(day=1)
    return months


@supplier_view()
@require_GET
def statement(request: HttpRequest) -> HttpResponse:
    """Accruals by day, key and model and every other movement of a period, opening to closing
    balance (HTMX swaps the statement when the period changes)."""
    form = PeriodForm(request.GET)
    context = {"form": form, "statement": None, "months": recent_months()}
    if form.is_valid():
        start, end = form.bounds()
        context["statement"] = supplier_statement(supplier=request.supplier, start=start, end=end)  # type: ignore[attr-defined]
        context["query"] = request.GET.urlencode()
    return render_page(request, "cabinets/supplier/statement.html", context, partial="cabinets/supplier/_statement.html",
                       status=200 if form.is_valid() else 400)


@supplier_view()
@require_GET
def statement_export(request: HttpRequest) -> HttpResponse:
    """The period's statement as CSV or XLSX (``?format=csv|xlsx``, default CSV), a download."""
    form = PeriodForm(request.GET)
    fmt = request.GET.get("format", "csv")
    if fmt not in EXPORT_TYPES or not form.is_valid():
        return render_page(request, "cabinets/supplier/statement.html", {"form": form, "statement": None}, status=400)
    start, end = form.bounds()
    data = statement_dataset(supplier_statement(supplier=request.supplier, start=start, end=end))  # type: ignore[attr-defined]
    response = HttpResponse(export_dataset(data, fmt), content_type=EXPORT_TYPES[fmt])
    last = form.cleaned_data["end"]
    response["Content-Disposition"] = (f'attachment; filename="statement-{request.supplier.slug}-'  # type: ignore[attr-defined]
                                       f'{form.cleaned_data["start"]:%Y%m%d}-{last:%Y%m%d}.{fmt}"')
    return response


# --- withdrawals -------------------------------------------------------------------------------

@supplier_view()
@require_GET
def withdrawals(request: HttpRequest) -> HttpResponse:
    """Withdrawal requests and their status, newest first, paginated (HTMX swaps the table), and
    the request form."""
    return _withdrawals_page(request, WithdrawalForm())


def _withdrawals_page(request: HttpRequest, form: WithdrawalForm, *, status: int = 200) -> HttpResponse:
    supplier = request.supplier  # type: ignore[attr-defined]
    page = Paginator(withdrawal_requests(supplier=supplier), WITHDRAWALS_PER_PAGE).get_page(request.GET.get("page"))
    return render_page(request, "cabinets/supplier/withdrawals.html", {
        "page": page, "form": form, "balance": supplier_balance(supplier), "hold_days": hold_days(),
        "has_details": SupplierPayoutDetails.objects.filter(supplier=supplier).exists(),
        "can_manage": _is_manager(request)}, partial="cabinets/supplier/_withdrawals_table.html", status=status)


@supplier_view(*SUPPLIER_MANAGERS)
@require_POST
def withdrawal_request(request: HttpRequest) -> HttpResponse:
    """Request a withdrawal of an amount up to the available balance, to the saved payout details.
    The form's one-time id makes a double submit one request."""
    form = WithdrawalForm(request.POST)
    if form.is_valid():
        try:
            created = request_supplier_withdrawal(
                supplier=request.supplier, amount=form.cleaned_data["amount"],  # type: ignore[attr-defined]
                idempotency_id=f"cabinet:{form.cleaned_data['request_id']}", requested_by=request.user)
        except LedgerError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("Withdrawal request #%(pk)s is sent; the platform will review it.") % {"pk": created.pk})
            return redirect("cabinets:supplier:withdrawal", withdrawal_id=created.pk)
    return _withdrawals_page(request, form, status=400)


@supplier_view()
@require_GET
def withdrawal_detail(request: HttpRequest, withdrawal_id: int) -> HttpResponse:
    """One withdrawal request: amount, status, dates, the payout details it will be paid to."""
    withdrawal = supplier_object(request, withdrawal_requests(), pk=withdrawal_id)
    paid_to = [(SupplierPayoutDetails._meta.get_field(name).verbose_name, withdrawal.payout_details.get(name))
               for name in PAYOUT_DETAIL_FIELDS if withdrawal.payout_details.get(name)]
    return render_page(request, "cabinets/supplier/withdrawal.html", {"withdrawal": withdrawal, "paid_to": paid_to})


# --- payout details ----------------------------------------------------------------------------

@supplier_view(*SUPPLIER_MANAGERS)
@recent_auth_required
def payout_details(request: HttpRequest) -> HttpResponse:
    """Where withdrawals are paid: bank requisites or a card/account reference (owners only, after a
    recent password or TOTP check: changing them redirects money). Requests already made keep the
    details they were made with."""
    supplier = request.supplier  # type: ignore[attr-defined]
    current = SupplierPayoutDetails.objects.filter(supplier=supplier).first()
    form = PayoutDetailsForm(request.POST or None, instance=current)
    if request.method == "POST" and form.is_valid():
        try:
            save_payout_details(supplier=supplier, details={name: form.cleaned_data.get(name, "") for name in form.fields})
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            messages.success(request, _("Payout details saved at %(time)s.") % {"time": timezone.localtime().strftime("%H:%M")})
            return redirect("cabinets:supplier:payout_details")
    return render_page(request, "cabinets/supplier/payout_details.html", {"form": form, "current": current},
                       status=400 if request.method == "POST" else 200)
