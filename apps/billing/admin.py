"""Superadmin pages for the ledger, FX rates and usage records.

History never changes here: transfers and usage records are view-only (the database refuses
edits and deletes anyway, see migration 0002), FX rates are append-only versions, and an
account's sums are kept by the database's triggers, so they are shown, never edited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from import_export.admin import ExportActionMixin

from apps.billing.exceptions import LedgerError
from apps.billing.models import (
    Account,
    FeedRun,
    FxRate,
    PayableCreditDay,
    PayoutBatch,
    SupplierPayoutDetails,
    Transfer,
    UsageDay,
    UsageRecord,
    WithdrawalRequest,
)
from apps.billing.payouts import registry_file
from apps.billing.resources import TransferResource, UsageRecordResource
from apps.billing.suppliers import approve_withdrawal, reject_withdrawal
from lib.admin import (
    SPREADSHEET_FORMATS,
    AppendOnlyAdminMixin,
    ExportPermissionMixin,
    MicroAmountField,
    ViewOnlyAdminMixin,
    rub_column,
)
from lib.money import Currency

if TYPE_CHECKING:
    from lib.admin import FieldGroups

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

    balance_rub = rub_column("credit_balance", _("balance, RUB"), ordering=False)
    available_rub = rub_column("available", _("available, RUB"), ordering=False)

    def get_fields(self, request: HttpRequest, obj: Account | None = None) -> FieldGroups:
        editable = ["kind", "company", "department", "supplier", "debits_must_not_exceed_credits", "credit_limit"]
        return [*editable] if obj is None else [*editable, *self._sum_fields]

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
    readonly_fields = ["idempotency_id", "kind", "status", "debit_account", "credit_account", "amount", "amount_rub",
                       "pending", "expires_at", "resolved_at", "description", "metadata", "created_at"]
    fields = [*readonly_fields]  # every field shown, none editable

    amount_rub = rub_column("amount", _("amount, RUB"))

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related(*self.list_select_related)


@admin.register(UsageRecord)
class UsageRecordAdmin(ExportPermissionMixin, ViewOnlyAdminMixin, ExportActionMixin, admin.ModelAdmin):
    resource_classes = [UsageRecordResource]
    formats = SPREADSHEET_FORMATS
    list_display = ["started_at", "request_id", "company", "token", "model_name", "status", "http_status",
                    "input_tokens", "output_tokens", "sell_cost", "sell_cost_rub", "sell_capped", "buy_cost", "buy_cost_rub",
                    "latency_ms"]
    list_display_links = ["started_at", "request_id"]
    list_filter = ["status", "stream", "usage_counted_locally", "sell_capped", "usage_clamped", "provider", "endpoint"]
    search_fields = ["=request_id", "model_name", "company__name", "company__slug", "token__name", "=token__key_prefix"]
    list_select_related = ["company", "token"]
    date_hierarchy = "started_at"
    show_full_result_count = False
    readonly_fields = ["request_id", "status", "http_status", "error_type", "error_code", "company", "department",
                       "token", "endpoint", "model_name", "model", "provider", "supplier_key", "price",
                       "fx_rub_per_unit", "stream", "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
                       "images", "usage_counted_locally", "sell_cost", "sell_cost_rub", "sell_capped", "sell_cost_uncapped",
                       "sell_cost_uncapped_rub", "buy_cost", "buy_cost_rub", "latency_ms",
                       "ttft_ms", "attempts", "client_ip", "started_at", "finished_at", "recorded_at"]
    fields = [*readonly_fields]  # every field shown, none editable

    sell_cost_rub = rub_column("sell_cost", _("sell cost, RUB"))
    buy_cost_rub = rub_column("buy_cost", _("buy cost, RUB"))
    sell_cost_uncapped_rub = rub_column("sell_cost_uncapped", _("sell cost before the cap, RUB"))

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
    list_display = ["currency", "rub_per_unit", "rate", "valid_from", "confirmed_for", "source", "created_at"]
    list_filter = ["currency", "source"]
    search_fields = ["currency", "source"]
    date_hierarchy = "valid_from"

    rate = rub_column("rub_per_unit", _("RUB per unit"), places=4, exact=True)

    _add_fields = ["currency", "rub_per_unit", "valid_from", "source"]
    _view_fields = ["currency", "rate", "rub_per_unit", "valid_from", "confirmed_for", "source", "created_at"]

    def get_fields(self, request: HttpRequest, obj: FxRate | None = None) -> FieldGroups:
        return [*self._add_fields] if obj is None else [*self._view_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: FxRate | None = None) -> list[str]:
        # A saved rate is a version: every field of it is read-only.
        return [] if obj is None else [*self._view_fields]


@admin.register(FeedRun)
class FeedRunAdmin(ViewOnlyAdminMixin, admin.ModelAdmin):
    """Runs of the price and FX feeds (docs/billing.md "Prices and currencies"): a refused document and why."""

    list_display = ["created_at", "feed", "ok", "added", "source", "detail"]
    list_filter = ["feed", "ok"]
    search_fields = ["source", "detail"]
    date_hierarchy = "created_at"



# --- suppliers: payout details, withdrawal requests, payout batches ---------------------------------
# Status changes go through apps/billing/suppliers.py and payouts.py (each a ledger movement);
# nothing here edits a request's amount, status or hold.

@admin.register(PayableCreditDay)
class PayableCreditDayAdmin(ViewOnlyAdminMixin, admin.ModelAdmin):
    """Credits per supplier payable and UTC day, kept by a database trigger (``billing.suppliers``:
    the holding period reads it): shown for checking, never edited."""

    list_display = ["account", "day", "amount_rub"]
    list_filter = ["day"]
    search_fields = ["account__supplier__name", "account__supplier__slug"]
    list_select_related = ["account", "account__supplier"]
    date_hierarchy = "day"

    amount_rub = rub_column("amount", _("credits, RUB"))


@admin.register(UsageDay)
class UsageDayAdmin(ViewOnlyAdminMixin, admin.ModelAdmin):
    """Usage per day × company × department × token × model, kept by database triggers from the usage
    records (``billing.rollups``): what dashboards and reports read; shown for checking, never edited."""

    list_display = ["day", "company", "department", "token", "model", "requests", "errors", "sell_rub", "buy_rub"]
    list_filter = ["day"]
    search_fields = ["company__name", "token__name", "model__name"]
    list_select_related = ["company", "department", "token", "model"]
    date_hierarchy = "day"

    sell_rub = rub_column("sell_cost", _("sell, RUB"))
    buy_rub = rub_column("buy_cost", _("buy, RUB"))


@admin.register(SupplierPayoutDetails)
class SupplierPayoutDetailsAdmin(admin.ModelAdmin):
    list_display = ["supplier", "recipient", "inn", "bik", "account_number", "card_reference", "updated_at"]
    search_fields = ["supplier__name", "supplier__slug", "recipient", "=inn"]
    list_select_related = ["supplier"]
    autocomplete_fields = ["supplier"]

    def has_delete_permission(self, request: HttpRequest, obj: SupplierPayoutDetails | None = None) -> bool:
        return False


@admin.register(WithdrawalRequest)
class WithdrawalRequestAdmin(ViewOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "created_at", "supplier", "amount_rub", "status", "decided_by", "decided_at", "batch", "paid_at"]
    list_filter = ["status"]
    search_fields = ["=id", "supplier__name", "supplier__slug", "=idempotency_id"]
    list_select_related = ["supplier", "decided_by", "batch"]
    date_hierarchy = "created_at"
    actions = ["approve_selected", "reject_selected"]
    readonly_fields = ["supplier", "amount", "amount_rub", "status", "payout_details", "idempotency_id", "hold", "payment",
                       "batch", "requested_by", "decided_by", "decided_at", "reject_reason", "paid_at", "created_at"]
    fields = [*readonly_fields]

    amount_rub = rub_column("amount", _("amount, RUB"))

    def has_decide_permission(self, request: HttpRequest) -> bool:
        """Only a superadmin approves or rejects withdrawals."""
        return bool(request.user.is_active and request.user.is_superuser)

    @admin.action(description=_("Approve the selected withdrawals"), permissions=["decide"])
    def approve_selected(self, request: HttpRequest, queryset: Any) -> None:
        self._decide(request, queryset, lambda pk: approve_withdrawal(withdrawal_id=pk, by=request.user))

    @admin.action(description=_("Reject the selected withdrawals (their amounts become available again)"),
                  permissions=["decide"])
    def reject_selected(self, request: HttpRequest, queryset: Any) -> None:
        self._decide(request, queryset, lambda pk: reject_withdrawal(withdrawal_id=pk, by=request.user,
                                                                     reason=str(_("Rejected in the admin"))))

    def _decide(self, request: HttpRequest, queryset: Any, decide: Any) -> None:
        done = 0
        for pk in queryset.values_list("pk", flat=True):
            try:
                decide(pk)
                done += 1
            except LedgerError as exc:
                self.message_user(request, str(exc), level=messages.ERROR)
        if done:
            self.message_user(request, _("%(count)d withdrawal(s) updated.") % {"count": done}, level=messages.SUCCESS)


@admin.register(PayoutBatch)
class PayoutBatchAdmin(ViewOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "created_at", "count", "total_rub", "registry"]
    date_hierarchy = "created_at"
    readonly_fields = ["created_at", "count", "total", "total_rub", "registry"]
    fields = [*readonly_fields]

    total_rub = rub_column("total", _("total, RUB"))

    @admin.display(description=_("registry"))
    def registry(self, obj: PayoutBatch) -> str:
        links = [format_html('<a href="{}">{}</a>', reverse("admin:billing_payoutbatch_registry", args=[obj.pk, fmt]),
                             fmt.upper()) for fmt in ("csv", "xlsx")]
        return format_html_join(" · ", "{}", ((link,) for link in links))

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.registry_view)
        return [path("<int:pk>/registry.<str:fmt>", view, name="billing_payoutbatch_registry"), *super().get_urls()]

    def registry_view(self, request: HttpRequest, pk: int, fmt: str) -> HttpResponse:
        """The batch's registry file (``csv`` or ``xlsx``) for accounting; 404 for another format."""
        batch = get_object_or_404(PayoutBatch, pk=pk)
        if not self.has_view_permission(request, batch):
            raise PermissionDenied
        if fmt not in ("csv", "xlsx"):
            raise Http404
        name, body = registry_file(batch, fmt)
        types = {"csv": "text/csv; charset=utf-8",
                 "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}
        response = HttpResponse(body, content_type=types[fmt])
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
