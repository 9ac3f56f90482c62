"""Billing admin: transfers and usage records are view-only, FX rates add-only, accounts never deleted."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.billing.models import Account, FxRate, Transfer, UsageRecord
from tests.conftest import admin_urls as _urls


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
