"""Supplier keys and egress proxies: secrets are write-only, encrypted, shown as …last4 at most."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from apps.providers.models import EgressProxy, SupplierKey
from lib import crypto
from tests.conftest import PROXY_PASSWORD, SUPPLIER_SECRET

NEW_SECRET = "sk-live-ROTATEDVALUE-5555"


def _key_form(catalog, personas, **overrides) -> dict:
    data = {
        "supplier": personas.supplier.pk, "provider": catalog.provider.pk, "name": "backup", "secret": "",
        "weight": "2", "priority": "1", "status": "active", "status_reason": "", "buy_coefficient": "0.9500",
        "_save": "Save",
    }
    data.update(overrides)
    return data


def _assert_no_password_value(html: str) -> None:
    tags = re.findall(r"<input[^>]*type=\"password\"[^>]*>", html)
    assert tags, "the page has no password input"
    for tag in tags:
        assert "value=" not in tag, tag


def test_it_encrypts_the_secret_on_add_and_shows_only_last4(superadmin_client, catalog, personas):
    response = superadmin_client.post(reverse("admin:providers_supplierkey_add"),
                                      _key_form(catalog, personas, secret="  sk-new-ADDEDSECRET-1234  "), follow=True)
    assert response.status_code == 200
    key = SupplierKey.objects.get(name="backup")
    assert key.reveal_secret() == "sk-new-ADDEDSECRET-1234"
    assert "ADDEDSECRET" not in key.secret_encrypted
    assert key.secret_last4 == "1234"
    assert key.secret_key_id == crypto.current_key_id()
    assert "ADDEDSECRET" not in response.content.decode()

    page = superadmin_client.get(reverse("admin:providers_supplierkey_change", args=[key.pk])).content.decode()
    assert "…1234" in page
    assert "ADDEDSECRET" not in page and key.secret_encrypted not in page
    _assert_no_password_value(page)
    listing = superadmin_client.get(reverse("admin:providers_supplierkey_changelist")).content.decode()
    assert "…1234" in listing and "…9876" in listing


def test_it_requires_a_secret_on_add(superadmin_client, catalog, personas):
    response = superadmin_client.post(reverse("admin:providers_supplierkey_add"), _key_form(catalog, personas))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["secret"]
    assert not SupplierKey.objects.filter(name="backup").exists()


def test_it_refuses_a_short_secret_without_echoing_it(superadmin_client, catalog, personas):
    response = superadmin_client.post(reverse("admin:providers_supplierkey_add"), _key_form(catalog, personas, secret="abc-XYZ"))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["secret"]
    assert "abc-XYZ" not in response.content.decode()
    _assert_no_password_value(response.content.decode())
    assert not SupplierKey.objects.filter(name="backup").exists()


def test_it_keeps_the_secret_when_the_change_form_leaves_it_blank(superadmin_client, catalog, personas):
    key = catalog.supplier_key
    before = key.secret_encrypted
    data = _key_form(catalog, personas, name="primary", priority="7", secret="")
    response = superadmin_client.post(reverse("admin:providers_supplierkey_change", args=[key.pk]), data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    key.refresh_from_db()
    assert key.priority == 7
    assert key.secret_encrypted == before
    assert key.reveal_secret() == SUPPLIER_SECRET


def test_it_replaces_the_secret_when_a_new_one_is_given(superadmin_client, catalog, personas):
    key = catalog.supplier_key
    data = _key_form(catalog, personas, name="primary", secret=NEW_SECRET)
    response = superadmin_client.post(reverse("admin:providers_supplierkey_change", args=[key.pk]), data, follow=True)
    assert response.status_code == 200
    key.refresh_from_db()
    assert key.reveal_secret() == NEW_SECRET
    assert key.secret_last4 == "5555"
    html = response.content.decode()
    assert "ROTATEDVALUE" not in html and SUPPLIER_SECRET not in html


def _proxy_form(**overrides) -> dict:
    data = {"slug": "de-1", "country": "de", "url": "", "internal": "", "is_active": "on", "_save": "Save"}
    data.update(overrides)
    return {k: v for k, v in data.items() if v != ""}


@pytest.mark.parametrize(("url", "display"), [
    ("socks5://user:S3CRET-PROXY-PW@proxy.example.org:1080", "socks5://proxy.example.org:1080"),
    ("http://user:S3CRET-PROXY-PW@proxy.example.org:3128", "http://proxy.example.org:3128"),
])
def test_it_encrypts_an_egress_url_and_shows_it_without_credentials(superadmin_client, catalog, url, display):
    response = superadmin_client.post(reverse("admin:providers_egressproxy_add"), _proxy_form(url=url), follow=True)
    assert response.status_code == 200
    proxy = EgressProxy.objects.get(slug="de-1")
    assert proxy.country == "DE"
    assert proxy.reveal_url() == url
    assert proxy.url_display == display
    assert "S3CRET-PROXY-PW" not in response.content.decode()
    page = superadmin_client.get(reverse("admin:providers_egressproxy_change", args=[proxy.pk])).content.decode()
    assert display in page
    assert "S3CRET-PROXY-PW" not in page and proxy.url_encrypted not in page
    _assert_no_password_value(page)


def test_it_keeps_the_egress_url_when_left_blank_and_requires_it_on_add(superadmin_client, catalog):
    response = superadmin_client.post(reverse("admin:providers_egressproxy_add"), _proxy_form())
    assert response.status_code == 200 and response.context["adminform"].form.errors["url"]

    proxy = catalog.egress
    before = proxy.url_encrypted
    data = _proxy_form(slug="nl-1", country="NL", is_active="")
    response = superadmin_client.post(reverse("admin:providers_egressproxy_change", args=[proxy.pk]), data)
    assert response.status_code == 302
    proxy.refresh_from_db()
    assert proxy.is_active is False
    assert proxy.url_encrypted == before
    assert PROXY_PASSWORD in proxy.reveal_url()


def test_it_refuses_unsafe_egress_urls_without_echoing_credentials(superadmin_client, catalog):
    for url in ("socks5://user:TOPSECRET-PW@10.0.0.5:1080", "http://user:TOPSECRET-PW@[::1]:3128",
                "ftp://user:TOPSECRET-PW@proxy.example.org", "socks5://user:TOPSECRET-PW@proxy.example.org:99999"):
        response = superadmin_client.post(reverse("admin:providers_egressproxy_add"), _proxy_form(url=url))
        assert response.status_code == 200, url
        assert response.context["adminform"].form.errors, url
        assert "TOPSECRET-PW" not in response.content.decode(), url
    assert not EgressProxy.objects.filter(slug="de-1").exists()


def test_it_allows_an_internal_egress_only_when_marked_internal(superadmin_client, catalog):
    url = "socks5://10.0.0.5:1080"
    response = superadmin_client.post(reverse("admin:providers_egressproxy_add"), _proxy_form(url=url, internal="on"))
    assert response.status_code == 302
    proxy = EgressProxy.objects.get(slug="de-1")
    assert proxy.internal is True

    # Unticking "internal" re-checks the stored URL.
    response = superadmin_client.post(reverse("admin:providers_egressproxy_change", args=[proxy.pk]),
                                      _proxy_form(country="DE"))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["internal"]
    proxy.refresh_from_db()
    assert proxy.internal is True
