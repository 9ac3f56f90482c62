"""django-import-export resources for the ledger and usage (export only: history is never imported)."""

from __future__ import annotations

from typing import Any

from import_export import fields, resources, widgets

from apps.billing.models import Transfer, UsageRecord
from lib.money import MoneyFormatError, micro_to_decimal, to_micro


class MicroAmountWidget(widgets.Widget):
    """Integer micro-units ⇄ exact decimal text in whole units ("0.15"); never a float."""

    def clean(self, value: Any, row: dict | None = None, **kwargs: Any) -> int | None:
        if value is None or str(value).strip() == "":
            return None
        if isinstance(value, float):
            # Spreadsheet cells arrive as floats; their shortest repr is the number the user typed.
            value = repr(value)
        try:
            return to_micro(str(value).strip())
        except MoneyFormatError as exc:
            raise ValueError(str(exc)) from None

    def render(self, value: Any, obj: Any = None, **kwargs: Any) -> str:
        if value is None:
            return ""
        text = f"{micro_to_decimal(value):f}"
        return text.rstrip("0").rstrip(".") if "." in text else text


# A cell starting with one of these is run as a formula by spreadsheet programs (CSV injection);
# request ids, model names and descriptions come from API clients, so exports defuse them.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class SpreadsheetSafeMixin:
    def export_field(self, field: fields.Field, instance: Any, **kwargs: Any) -> Any:
        value = super().export_field(field, instance, **kwargs)  # type: ignore[misc]
        if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
            return "'" + value
        return value


def _rub_field(attribute: str, column_name: str) -> fields.Field:
    return fields.Field(attribute=attribute, column_name=column_name, widget=MicroAmountWidget(), readonly=True)


class ExportOnlyResource(SpreadsheetSafeMixin, resources.ModelResource):
    """Refuses to import whatever the admin wiring: these rows are written only by services."""

    def import_data(self, *args: Any, **kwargs: Any):
        raise PermissionError(f"{type(self).__name__} is export-only")


class TransferResource(ExportOnlyResource):
    debit_account_name = fields.Field(attribute="debit_account", column_name="debit_account_name", readonly=True)
    credit_account_name = fields.Field(attribute="credit_account", column_name="credit_account_name", readonly=True)
    amount_rub = _rub_field("amount", "amount_rub")

    class Meta:
        model = Transfer
        fields = ["id", "created_at", "idempotency_id", "kind", "status", "debit_account", "debit_account_name",
                  "credit_account", "credit_account_name", "amount", "amount_rub", "pending", "expires_at",
                  "resolved_at", "description", "metadata"]
        export_order = fields

    def filter_export(self, queryset, **kwargs: Any):
        owners = ("company", "department__company", "supplier")
        return queryset.select_related(*(f"{side}__{path}" for side in ("debit_account", "credit_account") for path in owners))


class UsageRecordResource(ExportOnlyResource):
    company = fields.Field(attribute="company__slug", column_name="company", readonly=True)
    department = fields.Field(attribute="department__slug", column_name="department", readonly=True)
    token = fields.Field(attribute="token__key_prefix", column_name="token_prefix", readonly=True)
    token_name = fields.Field(attribute="token__name", column_name="token_name", readonly=True)
    model = fields.Field(attribute="model__name", column_name="model", readonly=True)
    provider = fields.Field(attribute="provider__slug", column_name="provider", readonly=True)
    supplier_key = fields.Field(attribute="supplier_key__name", column_name="supplier_key", readonly=True)
    sell_cost_rub = _rub_field("sell_cost", "sell_cost_rub")
    buy_cost_rub = _rub_field("buy_cost", "buy_cost_rub")

    class Meta:
        model = UsageRecord
        fields = ["request_id", "started_at", "finished_at", "company", "department", "token", "token_name", "endpoint",
                  "model_name", "model", "provider", "supplier_key", "price", "fx_rub_per_unit", "stream",
                  "input_tokens", "output_tokens", "cached_tokens", "usage_counted_locally",
                  "sell_cost", "sell_cost_rub", "buy_cost", "buy_cost_rub", "status", "http_status",
                  "error_type", "error_code", "latency_ms", "ttft_ms", "client_ip"]
        export_order = fields

    def filter_export(self, queryset, **kwargs: Any):
        return queryset.select_related("company", "department", "token", "model", "provider", "supplier_key")
