"""django-import-export resources for the ledger and usage (export only: history is never imported)."""

from __future__ import annotations

from typing import Any

from import_export import fields

from apps.billing.models import Transfer, UsageRecord
from lib.spreadsheets import ExportOnlyResource, rub_field


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
                  "input_tokens", "output_tokens", "cached_tokens", "usage_counted_locally",
                  "sell_cost", "sell_cost_rub", "buy_cost", "buy_cost_rub", "status", "http_status",
                  "error_type", "error_code", "latency_ms", "ttft_ms", "client_ip"]
        export_order = fields

    def filter_export(self, queryset, **kwargs: Any):
        return queryset.select_related("company", "department", "token", "model", "provider", "supplier_key")
