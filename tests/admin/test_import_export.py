"""Exports of usage and transfers (CSV, export only); imports of models and price versions."""

from __future__ import annotations

import csv
import io

import pytest
import tablib
from django.urls import reverse

from apps.billing.resources import TransferResource, UsageRecordResource
from apps.providers.models import Model, Price
from apps.providers.resources import ModelResource, PriceResource


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


def _price_rows(*rows) -> tablib.Dataset:
    return tablib.Dataset(*rows, headers=["id", "model", "currency", "input_per_1m", "output_per_1m", "cached_input_per_1m",
                                          "valid_from"])


def test_it_imports_prices_as_new_versions_only(catalog):
    existing = catalog.price
    dataset = _price_rows(
        [existing.pk, "mock-gpt", "USD", "0.2", "0.8", "", "2031-01-01 00:00:00"],
        ["", "mock-gpt", "RUB", "15", "60.5", "7.25", "2031-02-01 00:00:00"],
    )
    result = PriceResource().import_data(dataset, dry_run=False)
    assert not result.has_errors() and not result.has_validation_errors()
    existing.refresh_from_db()
    assert existing.input_per_1m == 150_000  # the row naming its id did not update it
    new = list(Price.objects.exclude(pk=existing.pk).order_by("valid_from"))
    assert [(p.currency, p.input_per_1m, p.output_per_1m, p.cached_input_per_1m) for p in new] == [
        ("USD", 200_000, 800_000, 200_000), ("RUB", 15_000_000, 60_500_000, 7_250_000)]


def test_it_reports_bad_price_rows_and_imports_nothing(catalog):
    start = catalog.price.valid_from
    dataset = _price_rows(
        ["", "no-such-model", "USD", "1", "1", "", ""],
        ["", "mock-gpt", "USD", "0.1234567", "1", "", ""],
        ["", "mock-gpt", "XXX", "1", "1", "", ""],
        ["", "mock-gpt", "USD", "1", "1", "", start.isoformat()],
    )
    result = PriceResource().import_data(dataset, dry_run=False, rollback_on_validation_errors=True)
    assert result.has_errors() or result.has_validation_errors()
    assert len(result.invalid_rows) + len(result.row_errors()) == 4
    assert "no-such-model" in str([row.error_dict for row in result.invalid_rows])
    assert Price.objects.count() == 1


def test_it_round_trips_models_by_name(catalog):
    exported = ModelResource().export()
    assert exported.dict[0]["name"] == "mock-gpt" and exported.dict[0]["provider"] == "mock"
    dataset = tablib.Dataset(headers=exported.headers)
    for row in exported.dict:
        dataset.append([{**row, "context_window": "64000"}[h] for h in exported.headers])
    dataset.append(["mock-mini", "mock", "mock-mini-1", "chat", "32000", "4096", "1"])
    result = ModelResource().import_data(dataset, dry_run=False)
    assert not result.has_errors() and not result.has_validation_errors()
    assert Model.objects.get(name="mock-gpt").context_window == 64_000
    assert Model.objects.get(name="mock-mini").provider == catalog.provider

    bad = tablib.Dataset(["mock-x", "nope", "x", "chat", "1000", "2000", "1"], headers=exported.headers)
    result = ModelResource().import_data(bad, dry_run=False)
    assert result.has_validation_errors()
    assert not Model.objects.filter(name="mock-x").exists()


def test_it_imports_prices_through_the_admin_in_two_steps(superadmin_client, catalog):
    body = "model,currency,input_per_1m,output_per_1m,cached_input_per_1m,valid_from\nmock-gpt,USD,0.3,1.2,,2031-03-01 00:00:00\n"
    upload = io.BytesIO(body.encode())
    upload.name = "prices.csv"
    response = superadmin_client.post(reverse("admin:providers_price_import"),
                                      {"resource": "0", "format": "0", "import_file": upload})
    assert response.status_code == 200
    confirm = response.context["confirm_form"]
    assert Price.objects.count() == 1  # a dry run so far
    data = {name: value for name, value in confirm.initial.items()}
    response = superadmin_client.post(reverse("admin:providers_price_process_import"), data)
    assert response.status_code == 302
    assert Price.objects.filter(input_per_1m=300_000, output_per_1m=1_200_000, cached_input_per_1m=300_000).exists()
