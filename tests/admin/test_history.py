"""Transfers and usage records are view-only; prices and FX rates are add-only; accounts are never deleted."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.billing.models import Account, FxRate, Transfer, UsageRecord
from apps.providers.models import Price


def _urls(model, pk: int) -> dict[str, str]:
    prefix = f"admin:{model._meta.app_label}_{model._meta.model_name}"
    return {
        "changelist": reverse(f"{prefix}_changelist"),
        "add": reverse(f"{prefix}_add"),
        "change": reverse(f"{prefix}_change", args=[pk]),
        "delete": reverse(f"{prefix}_delete", args=[pk]),
    }


@pytest.mark.parametrize("name", ["transfer", "usage"])
def test_it_shows_history_read_only(superadmin_client, catalog, name):
    obj = getattr(catalog, name)
    urls = _urls(type(obj), obj.pk)
    page = superadmin_client.get(urls["change"])
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="_save"' not in html and "<form" in html
    assert superadmin_client.get(urls["add"]).status_code == 403
    assert superadmin_client.get(urls["delete"]).status_code == 403
    listing = superadmin_client.get(urls["changelist"]).content.decode()
    assert "delete_selected" not in listing
    assert reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_add") not in listing


def test_it_refuses_to_change_a_transfer_by_post(superadmin_client, catalog):
    transfer = catalog.transfer
    urls = _urls(Transfer, transfer.pk)
    response = superadmin_client.post(urls["change"], {"amount": "1", "description": "edited", "status": "voided", "_save": "Save"})
    assert response.status_code == 403
    response = superadmin_client.post(urls["delete"], {"post": "yes"})
    assert response.status_code == 403
    response = superadmin_client.post(urls["changelist"], {"action": "delete_selected", "_selected_action": [transfer.pk]})
    transfer.refresh_from_db()
    assert (transfer.amount, transfer.description, transfer.status) == (1_500_250_000, "", "posted")
    assert Transfer.objects.filter(pk=transfer.pk).exists()


def test_it_refuses_to_change_a_usage_record_by_post(superadmin_client, catalog):
    usage = catalog.usage
    urls = _urls(UsageRecord, usage.pk)
    assert superadmin_client.post(urls["change"], {"sell_cost": "0", "_save": "Save"}).status_code == 403
    assert superadmin_client.post(urls["delete"], {"post": "yes"}).status_code == 403
    superadmin_client.post(urls["changelist"], {"action": "delete_selected", "_selected_action": [usage.pk]})
    usage.refresh_from_db()
    assert usage.sell_cost == 1_234_567


def test_it_shows_amounts_in_rubles_beside_the_integers(superadmin_client, catalog):
    transfers = superadmin_client.get(reverse("admin:billing_transfer_changelist")).content.decode()
    assert "1500.25 ₽" in transfers and "1500250000" in transfers
    usage = superadmin_client.get(reverse("admin:billing_usagerecord_changelist")).content.decode()
    assert "1.23 ₽" in usage and "1234567" in usage
    detail = superadmin_client.get(reverse("admin:billing_usagerecord_change", args=[catalog.usage.pk])).content.decode()
    assert "1.23 ₽" in detail and "1.00 ₽" in detail


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


def test_it_adds_fx_rates_but_never_changes_or_deletes_them(superadmin_client, catalog):
    now = timezone.localtime()
    response = superadmin_client.post(reverse("admin:billing_fxrate_add"), {
        "currency": "EUR", "rub_per_unit": "101.2345", "valid_from_0": now.strftime("%Y-%m-%d"),
        "valid_from_1": now.strftime("%H:%M:%S"), "source": "manual", "_save": "Save"})
    assert response.status_code == 302
    rate = FxRate.objects.get(currency="EUR")
    assert rate.rub_per_unit == 101_234_500
    urls = _urls(FxRate, rate.pk)
    assert 'name="_save"' not in superadmin_client.get(urls["change"]).content.decode()
    assert superadmin_client.post(urls["change"], {"rub_per_unit": "1", "_save": "Save"}).status_code == 403
    assert superadmin_client.post(urls["delete"], {"post": "yes"}).status_code == 403
    rate.refresh_from_db()
    assert rate.rub_per_unit == 101_234_500

    zero = superadmin_client.post(reverse("admin:billing_fxrate_add"), {
        "currency": "CNY", "rub_per_unit": "0", "valid_from_0": now.strftime("%Y-%m-%d"), "valid_from_1": now.strftime("%H:%M:%S"),
        "source": "manual", "_save": "Save"})
    assert zero.status_code == 200 and zero.context["adminform"].form.errors["rub_per_unit"]


def test_it_shows_account_sums_read_only_and_never_deletes(superadmin_client, catalog):
    wallet = catalog.wallet
    urls = _urls(Account, wallet.pk)
    html = superadmin_client.get(urls["change"]).content.decode()
    assert "1500.25 ₽" in html
    assert 'name="posted_credits"' not in html and 'name="kind"' not in html
    response = superadmin_client.post(urls["change"], {
        "debits_must_not_exceed_credits": "on", "credit_limit": "250.5", "posted_credits": "1", "kind": "platform_revenue",
        "_save": "Save"})
    assert response.status_code == 302
    wallet.refresh_from_db()
    assert wallet.credit_limit == 250_500_000
    assert wallet.posted_credits == 1_500_250_000 and wallet.kind == "company_wallet"
    assert superadmin_client.post(urls["delete"], {"post": "yes"}).status_code == 403
    assert Account.objects.filter(pk=wallet.pk).exists()
    listing = superadmin_client.get(urls["changelist"]).content.decode()
    assert "1500.25 ₽" in listing and "delete_selected" not in listing
