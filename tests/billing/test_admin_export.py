"""Billing admin exports: usage and transfers as CSV, export only (history is never imported)."""

from __future__ import annotations

import csv
import io

import pytest
import tablib
from django.urls import reverse

from apps.billing.resources import TransferResource, UsageRecordResource


def _export_form(resource_class) -> dict:
    prefix = resource_class.__name__.lower()
    data = {"format": "0", "resource": "0"}
    data.update({f"{prefix}_{name}": "on" for name in resource_class().get_export_order()})
    return data


def _rows(response) -> list[dict]:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment;" in response["Content-Disposition"]
    return list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))


def test_it_exports_usage_records_as_csv(superadmin_client, catalog):
    response = superadmin_client.post(reverse("admin:billing_usagerecord_export"), _export_form(UsageRecordResource))
    rows = _rows(response)
    assert len(rows) == 1
    row = rows[0]
    assert row["request_id"] == "req-0001"
    assert row["company"] == "company-a" and row["department"] == "research"
    assert row["token_prefix"] == catalog.token.key_prefix and row["supplier_key"] == "primary"
    assert row["sell_cost"] == "1234567" and row["sell_cost_rub"] == "1.234567"
    assert row["buy_cost_rub"] == "1" and row["input_tokens"] == "1200"
    text = response.content.decode()
    for secret in catalog.secrets():
        assert secret not in text


def test_it_exports_only_the_filtered_rows(superadmin_client, catalog):
    from apps.billing.models import UsageRecord

    UsageRecord.objects.create(request_id="req-0002", company=catalog.usage.company, model_name="x", status="rejected",
                               http_status=403, started_at=catalog.usage.started_at, finished_at=catalog.usage.finished_at)
    url = reverse("admin:billing_usagerecord_export") + "?status__exact=rejected"
    rows = _rows(superadmin_client.post(url, _export_form(UsageRecordResource)))
    assert [r["request_id"] for r in rows] == ["req-0002"]


def test_it_defuses_spreadsheet_formulas_from_clients(superadmin_client, catalog):
    from apps.billing.models import UsageRecord

    UsageRecord.objects.filter(pk=catalog.usage.pk).update(model_name='=HYPERLINK("http://evil.example","x")')
    rows = _rows(superadmin_client.post(reverse("admin:billing_usagerecord_export"), _export_form(UsageRecordResource)))
    assert rows[0]["model_name"].startswith("'=")


def test_it_exports_transfers_with_rubles(superadmin_client, catalog):
    rows = _rows(superadmin_client.post(reverse("admin:billing_transfer_export"), _export_form(TransferResource)))
    assert len(rows) == 1
    assert rows[0]["idempotency_id"] == "topup-1"
    assert rows[0]["amount"] == "1500250000" and rows[0]["amount_rub"] == "1500.25"
    assert rows[0]["credit_account_name"].endswith("Company A")


def test_it_exports_selected_rows_through_the_action(superadmin_client, catalog):
    data = {"action": "export_admin_action", "_selected_action": [catalog.usage.pk]}
    response = superadmin_client.post(reverse("admin:billing_usagerecord_changelist"), data)
    assert response.status_code == 200
    assert 'name="export_items"' in response.content.decode()


def test_it_offers_no_import_of_history(superadmin_client, catalog):
    from django.urls import NoReverseMatch

    for name in ("billing_usagerecord_import", "billing_transfer_import"):
        with pytest.raises(NoReverseMatch):
            reverse(f"admin:{name}")
    with pytest.raises(PermissionError):
        UsageRecordResource().import_data(tablib.Dataset(headers=["request_id"]))
