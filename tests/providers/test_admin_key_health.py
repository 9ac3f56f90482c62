"""The supplier key admin shows each key's shared health: circuit, cooldown, last error, latency."""

from __future__ import annotations

import time

import orjson
import pytest
import redis as redis_lib
from django.conf import settings
from django.urls import reverse

from apps.providers import admin as providers_admin
from apps.providers.key_health import HEALTH_KEY, read_health


@pytest.fixture
def health(db):
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    client.delete(HEALTH_KEY)
    providers_admin._health._read_at = 0.0  # no record read by an earlier test
    yield client
    client.delete(HEALTH_KEY)
    providers_admin._health._read_at = 0.0
    client.close()


def test_the_list_and_page_show_circuit_cooldown_last_error_and_latency(superadmin_client, catalog, health):
    now = time.time()
    health.hset(HEALTH_KEY, catalog.supplier_key.pk, orjson.dumps({
        "s": "open", "f": 3, "ou": now + 60, "cu": now + 30, "at": now, "c": "upstream_error", "h": 502,
        "e": "HTTP 503: The engine is currently overloaded"}))
    listing = superadmin_client.get(reverse("admin:providers_supplierkey_changelist"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "open until" in listing
    assert "upstream_error: HTTP 503: The engine is currently overloaded" in listing
    assert "420 ms" in listing  # the catalog's one successful answer in the last hour
    page = superadmin_client.get(reverse("admin:providers_supplierkey_change", args=[catalog.supplier_key.pk]),
                                 HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "open until" in page and "Rate-limited until" in page


def test_a_healthy_key_reads_closed_and_unknown_without_redis(superadmin_client, catalog, health, settings):
    listing = superadmin_client.get(reverse("admin:providers_supplierkey_changelist"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert ">closed (serving)<" in listing
    providers_admin._health._read_at = 0.0
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    listing = superadmin_client.get(reverse("admin:providers_supplierkey_changelist"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert ">unknown<" in listing


def test_re_enabling_a_key_clears_its_health_but_other_saves_do_not(superadmin_client, catalog, health):
    key = catalog.supplier_key
    health.hset(HEALTH_KEY, key.pk, orjson.dumps({"s": "invalid", "at": time.time(), "c": "upstream_auth_failed"}))
    form = {"supplier": key.supplier_id, "provider": key.provider_id, "name": key.name, "secret": "", "weight": "3",
            "priority": "0", "status": "invalid", "status_reason": "HTTP 401", "buy_coefficient": "1.0000"}
    key.status = "invalid"
    key.save()
    url = reverse("admin:providers_supplierkey_change", args=[key.pk])
    assert superadmin_client.post(url, form).status_code == 302
    assert key.pk in read_health(health)  # a weight change keeps the record
    assert superadmin_client.post(url, {**form, "status": "active", "status_reason": ""}).status_code == 302
    assert read_health(health) == {}
