"""Providers admin imports: models by name, prices as new versions only."""

from __future__ import annotations

import io

import tablib
from django.urls import reverse

from apps.providers.models import Model, Price
from apps.providers.resources import ModelResource, PriceResource


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
    dataset.append(["mock-mini", "mock", "mock-mini-1", "chat", "32000", "4096", "mock-gpt,other", "cheapest", "1"])
    result = ModelResource().import_data(dataset, dry_run=False)
    assert not result.has_errors() and not result.has_validation_errors()
    assert Model.objects.get(name="mock-gpt").context_window == 64_000
    mini = Model.objects.get(name="mock-mini")
    assert (mini.provider, mini.fallbacks, mini.routing) == (catalog.provider, ["mock-gpt", "other"], "cheapest")

    bad = tablib.Dataset(["mock-x", "nope", "x", "chat", "1000", "2000", "", "ordered", "1"], headers=exported.headers)
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
