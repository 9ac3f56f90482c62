"""django-import-export resources for the ledger and usage (export only: history is never imported)."""

from __future__ import annotations

from typing import Any

from import_export import fields, resources

from apps.billing.models import Transfer, UsageRecord
from lib.spreadsheets import ExportOnlyResource, SpreadsheetSafeMixin, rub_field


class TransferResource(ExportOnlyResource):
    debit_account_name = fields.Field(attribute="debit_account", column_name="debit_account_name", readonly=True)
    credit_account_name = fields.Field(attribute="credit_account", column_name="credit_account_name", readonly=True)
    amount_rub = rub_field("amount", "amount_rub")

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
    sell_cost_rub = rub_field("sell_cost", "sell_cost_rub")
    buy_cost_rub = rub_field("buy_cost", "buy_cost_rub")

    class Meta:
        model = UsageRecord
        fields = ["request_id", "started_at", "finished_at", "company", "department", "token", "token_name", "endpoint",
                  "model_name", "model", "provider", "supplier_key", "price", "fx_rub_per_unit", "stream",
                  "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "images", "usage_counted_locally",
                  "sell_cost", "sell_cost_rub", "buy_cost", "buy_cost_rub", "sell_capped", "sell_cost_uncapped",
                  "status", "http_status",
                  "error_type", "error_code", "latency_ms", "ttft_ms", "client_ip"]
        export_order = fields

    def filter_export(self, queryset, **kwargs: Any):
        return queryset.select_related("company", "department", "token", "model", "provider", "supplier_key")


# --- reports (apps/billing/reports.py): rows are dataclasses, not models -------------------------

class _ReportResource(SpreadsheetSafeMixin, resources.Resource):
    """Export-only rows of a report; amounts as exact RUB text ("1.5") next to the micro-RUB integer."""

    def import_data(self, *args: Any, **kwargs: Any):
        """Always raises ``PermissionError``: reports are never imported."""
        raise PermissionError(f"{type(self).__name__} is export-only")


def _col(name: str) -> fields.Field:
    return fields.Field(attribute=name, column_name=name, readonly=True)


class SpendRowResource(_ReportResource):
    """``reports.SpendRow``: key, label, requests, tokens, sell/buy/margin (micro-RUB and RUB)."""

    key = _col("key")
    label = _col("label")
    requests = _col("requests")
    input_tokens = _col("input_tokens")
    output_tokens = _col("output_tokens")
    cached_tokens = _col("cached_tokens")
    sell_cost = _col("sell_cost")
    sell_cost_rub = rub_field("sell_cost", "sell_cost_rub")
    buy_cost = _col("buy_cost")
    buy_cost_rub = rub_field("buy_cost", "buy_cost_rub")
    margin = _col("margin")
    margin_rub = rub_field("margin", "margin_rub")
    capped_requests = _col("capped_requests")
    capped_amount = _col("capped_amount")
    capped_amount_rub = rub_field("capped_amount", "capped_amount_rub")
    cache_write_tokens = _col("cache_write_tokens")
    images = _col("images")


class SupplierEarningsResource(_ReportResource):
    """``reports.SupplierEarnings``: per supplier, usage earned and ledger accrued/paid out."""

    supplier_id = _col("supplier_id")
    supplier = _col("supplier")
    requests = _col("requests")
    earned = _col("earned")
    earned_rub = rub_field("earned", "earned_rub")
    accrued = _col("accrued")
    accrued_rub = rub_field("accrued", "accrued_rub")
    paid_out = _col("paid_out")
    paid_out_rub = rub_field("paid_out", "paid_out_rub")


class ForecastResource(_ReportResource):
    """``reports.Forecast``: per company, spent this month and the month-end forecast."""

    company_id = _col("company_id")
    company = _col("company")
    month = _col("month")
    spent = _col("spent")
    spent_rub = rub_field("spent", "spent_rub")
    elapsed_seconds = _col("elapsed_seconds")
    month_seconds = _col("month_seconds")
    forecast = _col("forecast")
    forecast_rub = rub_field("forecast", "forecast_rub")
