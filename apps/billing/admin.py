"""Superadmin pages for the ledger, FX rates and usage records.

History never changes here: transfers and usage records are view-only (the database refuses
edits and deletes anyway, see migration 0002), FX rates are append-only versions, and an
account's sums are kept by the database's triggers, so they are shown, never edited.

The small helpers at the top (amount fields and columns, the read-only and append-only mixins)
are shared by the other apps' admin modules.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import Model as DjangoModel
from django.http import HttpRequest
from django.utils import timezone
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from import_export.admin import ExportActionMixin
from import_export.formats import base_formats

from apps.billing.models import Account, FxRate, Transfer, UsageRecord
from apps.billing.resources import TransferResource, UsageRecordResource
from apps.providers.models import Currency
from lib.money import MoneyFormatError, format_rub, micro_to_decimal, to_micro

# The file formats offered for export and import. XLSX is offered only while openpyxl is installed.
SPREADSHEET_FORMATS = [f for f in (base_formats.CSV, base_formats.XLSX) if f.is_available()]


def micro_as_decimal_text(micro: int) -> str:
    """1_500_000 → '1.5'; exact (every micro-unit kept), for form inputs and exports."""
    text = f"{micro_to_decimal(micro):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_units(micro: int | None, places: int = 2) -> str:
    """Display: at least ``places`` decimals, more only when the amount needs them (0.075)."""
    if micro is None:
        return "—"
    exact = micro_as_decimal_text(micro)
    decimals = len(exact.partition(".")[2])
    return format_rub(micro, max(places, decimals))


_BIGINT_MAX = 2**63 - 1  # the amount columns are PostgreSQL bigint


class MicroAmountField(forms.Field):
    """An amount typed as a decimal string ("1500", "0.15") and cleaned to integer micro-units.

    Floats never appear: the text goes straight to ``lib.money.to_micro``. The bound initial
    value (an integer from the model) is shown back as the same decimal text.
    """

    widget = forms.TextInput
    max_chars = 32
    default_error_messages = {
        "invalid": _("Enter a non-negative amount with at most 6 decimal places, e.g. 1500 or 0.15."),
        "zero": _("The amount must be greater than zero."),
        "too_large": _("The amount is too large."),
    }

    def __init__(self, *, allow_zero: bool = True, **kwargs: Any) -> None:
        self.allow_zero = allow_zero
        if kwargs.get("label"):
            # Model fields get this from Django; declared form fields must do it themselves.
            kwargs["label"] = capfirst(kwargs["label"])
        super().__init__(**kwargs)

    def widget_attrs(self, widget: forms.Widget) -> dict[str, Any]:
        return {**super().widget_attrs(widget), "inputmode": "decimal", "maxlength": str(self.max_chars)}

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return micro_as_decimal_text(value)
        return value

    def to_python(self, value: Any) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if value in self.empty_values:
            return None
        text = str(value).strip().replace(" ", "").replace("\u00a0", "").replace(",", ".")
        if not text:
            return None
        if len(text) > self.max_chars:
            raise ValidationError(self.error_messages["invalid"], code="invalid")
        try:
            micro = to_micro(text)
        except MoneyFormatError:
            raise ValidationError(self.error_messages["invalid"], code="invalid") from None
        if micro > _BIGINT_MAX:
            raise ValidationError(self.error_messages["too_large"], code="too_large")
        if micro == 0 and not self.allow_zero:
            raise ValidationError(self.error_messages["zero"], code="zero")
        return micro


def rub_column(field: str, description: str, *, ordering: bool = True):
    """A list/detail column showing an integer micro-RUB field as rubles."""

    def column(self, obj: DjangoModel) -> str:
        value = getattr(obj, field)
        return "—" if value is None else f"{format_rub(value)} ₽"

    column.short_description = description  # type: ignore[attr-defined]
    if ordering:
        column.admin_order_field = field  # type: ignore[attr-defined]
    column.__name__ = f"{field}_rub"
    return column


class ViewOnlyAdminMixin:
    """History: visible, never added, changed or deleted through the admin."""

    def has_add_permission(self, request: HttpRequest, obj: DjangoModel | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DjangoModel | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DjangoModel | None = None) -> bool:
        return False


class AppendOnlyAdminMixin:
    """Versioned rows: new versions are added, existing ones are only viewed, nothing is deleted."""

    def has_change_permission(self, request: HttpRequest, obj: DjangoModel | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DjangoModel | None = None) -> bool:
        return False


class ExportPermissionMixin:
    """Export (and import, where mixed in) follow the model permissions, not a blanket yes."""

    def has_export_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)  # type: ignore[attr-defined]

    def has_import_permission(self, request: HttpRequest) -> bool:
        return self.has_add_permission(request)  # type: ignore[attr-defined]


# Every column that prints an account goes through Account.__str__, which reads its owner.
_ACCOUNT_OWNER_RELATED = ("company", "department__company", "supplier")


def _account_related(prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}__{path}" for path in _ACCOUNT_OWNER_RELATED)


class AccountForm(forms.ModelForm):
    credit_limit = MicroAmountField(
        label=_("credit limit, RUB"), initial=0,
        help_text=_("How far debits may exceed credits when the account must not go negative."),
    )

    class Meta:
        model = Account
        fields = ["kind", "company", "department", "supplier", "debits_must_not_exceed_credits", "credit_limit"]


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    form = AccountForm
    list_display = ["id", "kind", "owner", "posted_credits_rub", "posted_debits_rub", "pending_debits_rub",
                    "balance_rub", "available_rub", "debits_must_not_exceed_credits", "credit_limit_rub"]
    list_display_links = ["id", "kind"]
    list_filter = ["kind", "debits_must_not_exceed_credits"]
    search_fields = ["company__name", "company__slug", "department__name", "supplier__name", "supplier__slug"]
    list_select_related = _ACCOUNT_OWNER_RELATED
    autocomplete_fields = ["company", "department", "supplier"]
    date_hierarchy = "created_at"
    _sum_fields = ["currency", "posted_credits", "posted_credits_rub", "posted_debits", "posted_debits_rub",
                   "pending_credits", "pending_credits_rub", "pending_debits", "pending_debits_rub",
                   "balance_rub", "available_rub", "created_at"]

    posted_credits_rub = rub_column("posted_credits", _("posted credits, RUB"))
    posted_debits_rub = rub_column("posted_debits", _("posted debits, RUB"))
    pending_credits_rub = rub_column("pending_credits", _("pending credits, RUB"))
    pending_debits_rub = rub_column("pending_debits", _("pending debits, RUB"))
    credit_limit_rub = rub_column("credit_limit", _("credit limit, RUB"))

    @admin.display(description=_("owner"))
    def owner(self, obj: Account) -> str:
        owner = obj.company or obj.department or obj.supplier
        return str(owner) if owner else "—"

    @admin.display(description=_("balance, RUB"))
    def balance_rub(self, obj: Account) -> str:
        return f"{format_rub(obj.credit_balance)} ₽"

    @admin.display(description=_("available, RUB"))
    def available_rub(self, obj: Account) -> str:
        return f"{format_rub(obj.available)} ₽"

    def get_fields(self, request: HttpRequest, obj: Account | None = None) -> list[str]:
        editable = ["kind", "company", "department", "supplier", "debits_must_not_exceed_credits", "credit_limit"]
        return editable if obj is None else editable + self._sum_fields

    def get_readonly_fields(self, request: HttpRequest, obj: Account | None = None) -> list[str]:
        if obj is None:
            return []
        # An account's owner and kind are its identity: transfers already point at it.
        return ["kind", "company", "department", "supplier", *self._sum_fields]

    def has_delete_permission(self, request: HttpRequest, obj: Account | None = None) -> bool:
        return False


@admin.register(Transfer)
class TransferAdmin(ExportPermissionMixin, ViewOnlyAdminMixin, ExportActionMixin, admin.ModelAdmin):
    resource_classes = [TransferResource]
    formats = SPREADSHEET_FORMATS
    list_display = ["id", "created_at", "kind", "status", "debit_account", "credit_account", "amount", "amount_rub",
                    "idempotency_id"]
    list_filter = ["status", "kind"]
    search_fields = ["=idempotency_id", "description", "debit_account__company__name", "credit_account__company__name",
                     "debit_account__supplier__name", "credit_account__supplier__name"]
    list_select_related = _account_related("debit_account") + _account_related("credit_account")
    date_hierarchy = "created_at"
    # The table grows with every request; skip the full COUNT(*) on filtered pages.
    show_full_result_count = False
    fields = ["idempotency_id", "kind", "status", "debit_account", "credit_account", "amount", "amount_rub",
              "pending", "expires_at", "resolved_at", "description", "metadata", "created_at"]
    readonly_fields = fields

    amount_rub = rub_column("amount", _("amount, RUB"))

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related(*self.list_select_related)


@admin.register(UsageRecord)
class UsageRecordAdmin(ExportPermissionMixin, ViewOnlyAdminMixin, ExportActionMixin, admin.ModelAdmin):
    resource_classes = [UsageRecordResource]
    formats = SPREADSHEET_FORMATS
    list_display = ["started_at", "request_id", "company", "token", "model_name", "status", "http_status",
                    "input_tokens", "output_tokens", "sell_cost", "sell_cost_rub", "buy_cost", "buy_cost_rub", "latency_ms"]
    list_display_links = ["started_at", "request_id"]
    list_filter = ["status", "stream", "usage_counted_locally", "provider", "endpoint"]
    search_fields = ["=request_id", "model_name", "company__name", "company__slug", "token__name", "=token__key_prefix"]
    list_select_related = ["company", "token"]
    date_hierarchy = "started_at"
    show_full_result_count = False
    fields = ["request_id", "status", "http_status", "error_type", "error_code", "company", "department", "token",
              "endpoint", "model_name", "model", "provider", "supplier_key", "price", "fx_rub_per_unit", "stream",
              "input_tokens", "output_tokens", "cached_tokens", "usage_counted_locally",
              "sell_cost", "sell_cost_rub", "buy_cost", "buy_cost_rub", "latency_ms", "ttft_ms", "client_ip",
              "started_at", "finished_at", "recorded_at"]
    readonly_fields = fields

    sell_cost_rub = rub_column("sell_cost", _("sell cost, RUB"))
    buy_cost_rub = rub_column("buy_cost", _("buy cost, RUB"))

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related(
            "company", "department__company", "token", "model", "provider", "supplier_key", "price__model")


class FxRateForm(forms.ModelForm):
    currency = forms.ChoiceField(label=capfirst(_("currency")), choices=[c for c in Currency.choices if c[0] != Currency.RUB])
    rub_per_unit = MicroAmountField(label=_("RUB per unit"), allow_zero=False, help_text=_("e.g. 92.5 for 92.50 RUB per US dollar"))

    class Meta:
        model = FxRate
        fields = ["currency", "rub_per_unit", "valid_from", "source"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "valid_from" in self.fields:
            self.fields["valid_from"].initial = timezone.now


@admin.register(FxRate)
class FxRateAdmin(AppendOnlyAdminMixin, admin.ModelAdmin):
    form = FxRateForm
    list_display = ["currency", "rub_per_unit", "rate", "valid_from", "source", "created_at"]
    list_filter = ["currency", "source"]
    search_fields = ["currency", "source"]
    date_hierarchy = "valid_from"

    @admin.display(description=_("RUB per unit"), ordering="rub_per_unit")
    def rate(self, obj: FxRate) -> str:
        return f"{format_units(obj.rub_per_unit, 4)} ₽"

    def get_fields(self, request: HttpRequest, obj: FxRate | None = None) -> list[str]:
        if obj is None:
            return ["currency", "rub_per_unit", "valid_from", "source"]
        return ["currency", "rate", "rub_per_unit", "valid_from", "source", "created_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: FxRate | None = None) -> list[str]:
        return [] if obj is None else self.get_fields(request, obj)

