"""Providers admin: prices are versions — added (also prefilled from the current one), never edited."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.providers.models import Price
from tests.conftest import admin_urls as _urls


def test_it_shows_a_price_read_only_and_refuses_edits(superadmin_client, catalog):
    price = catalog.price
    urls = _urls(Price, price.pk)
    html = superadmin_client.get(urls["change"]).content.decode()
    assert 'name="_save"' not in html
    assert "0.15 USD" in html and "0.60 USD" in html and "0.075 USD" in html
    assert superadmin_client.post(urls["change"], {"input_per_1m": "9", "_save": "Save"}).status_code == 403
    assert superadmin_client.post(urls["delete"], {"post": "yes"}).status_code == 403
    price.refresh_from_db()
    assert price.input_per_1m == 150_000


def _price_form(catalog, **overrides) -> dict:
    valid_from = timezone.localtime() + dt.timedelta(days=1)
    data = {
        "model": catalog.model.pk, "currency": "USD", "input_per_1m": "0.25", "output_per_1m": "1.5",
        "cached_input_per_1m": "", "valid_from_0": valid_from.strftime("%Y-%m-%d"), "valid_from_1": valid_from.strftime("%H:%M:%S"),
        "_save": "Save",
    }
    data.update(overrides)
    return data


def test_it_adds_a_price_version_from_decimal_strings(superadmin_client, catalog):
    response = superadmin_client.post(reverse("admin:providers_price_add"), _price_form(catalog))
    assert response.status_code == 302
    new = Price.objects.exclude(pk=catalog.price.pk).get()
    assert (new.input_per_1m, new.output_per_1m, new.cached_input_per_1m) == (250_000, 1_500_000, 250_000)
    listing = superadmin_client.get(reverse("admin:providers_price_changelist")).content.decode()
    assert "0.25 USD" in listing and "1.50 USD" in listing
    catalog.price.refresh_from_db()
    assert catalog.price.input_per_1m == 150_000


@pytest.mark.parametrize("bad", ["0.1234567", "-1", "abc", "NaN", "1e400"])
def test_it_refuses_malformed_price_amounts(superadmin_client, catalog, bad):
    response = superadmin_client.post(reverse("admin:providers_price_add"), _price_form(catalog, input_per_1m=bad))
    assert response.status_code == 200
    assert "input_per_1m" in response.context["adminform"].form.errors
    assert Price.objects.count() == 1


def test_it_refuses_a_second_price_with_the_same_start(superadmin_client, catalog):
    start = timezone.localtime(catalog.price.valid_from)
    data = _price_form(catalog, valid_from_0=start.strftime("%Y-%m-%d"), valid_from_1=start.strftime("%H:%M:%S.%f"))
    response = superadmin_client.post(reverse("admin:providers_price_add"), data)
    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    assert Price.objects.count() == 1


def test_it_offers_a_prefilled_new_price_version(superadmin_client, catalog):
    html = superadmin_client.get(_urls(Price, catalog.price.pk)["change"]).content.decode()
    assert "input_per_1m=0.15" in html
    add = superadmin_client.get(reverse("admin:providers_price_add") + f"?model={catalog.model.pk}&input_per_1m=0.15&cached_input_per_1m=0.075")
    form = add.context["adminform"].form
    assert form.initial["input_per_1m"] == "0.15"
    assert 'value="0.075"' in add.content.decode()
