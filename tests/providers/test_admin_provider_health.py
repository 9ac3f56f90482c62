"""The provider admin shows, per provider: keys healthy/total (the keys' shared health in Redis),
requests, errors and average latency in the last hour, and the last upstream error — from one
annotated query for the whole list, never a query per row."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
import redis as redis_lib
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import Supplier
from apps.billing.models import UsageRecord
from apps.providers import admin as providers_admin
from apps.providers.key_health import HEALTH_KEY
from apps.providers.models import Provider, SupplierKey


@pytest.fixture
def health(db):
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    client.delete(HEALTH_KEY)
    providers_admin._health._read_at = 0.0
    yield client
    client.delete(HEALTH_KEY)
    providers_admin._health._read_at = 0.0
    client.close()


def make_provider(slug: str, supplier: Supplier, keys: int = 3) -> tuple[Provider, list[SupplierKey]]:
    provider = Provider.objects.create(slug=slug, kind="openai", base_url="http://127.0.0.1:9/v1", internal=True)
    made = []
    for i in range(keys):
        key = SupplierKey(supplier=supplier, provider=provider, name=f"{slug}-{i}", buy_coefficient=Decimal("1"))
        key.set_secret(f"sk-test-{slug}-{i:04d}")
        key.save()
        made.append(key)
    return provider, made


def record(provider: Provider, key: SupplierKey, n: int, *, ago: timedelta, status: str = "ok", latency: int = 100,
           http: int = 200, code: str = "") -> UsageRecord:
    at = timezone.now() - ago
    return UsageRecord.objects.create(request_id=f"r-{provider.slug}-{n}", endpoint="chat", model_name="m", provider=provider,
                                      supplier_key=key, status=status, http_status=http, error_code=code, latency_ms=latency,
                                      started_at=at, finished_at=at + timedelta(milliseconds=latency))


def row_of(page: str, slug: str) -> str:
    start = page.index(f">{slug}<")
    return page[start:page.index("</tr>", start)]


def test_the_list_shows_health_traffic_latency_and_the_last_error(superadmin_client, health):
    supplier = Supplier.objects.create(slug="s", name="S")
    provider, (good, tripped, disabled) = make_provider("alpha", supplier)
    disabled.status = "disabled"
    disabled.save()
    now = time.time()
    health.hset(HEALTH_KEY, tripped.pk, orjson.dumps({"s": "open", "f": 5, "ou": now + 60, "at": now, "c": "upstream_error",
                                                      "h": 502, "e": "overloaded"}))
    record(provider, good, 1, ago=timedelta(minutes=5), latency=100)
    record(provider, good, 2, ago=timedelta(minutes=10), latency=300)
    record(provider, tripped, 3, ago=timedelta(minutes=20), status="upstream_error", http=502, code="upstream_unavailable",
           latency=50)
    record(provider, good, 4, ago=timedelta(hours=3), latency=9000)  # outside the hour: not counted
    record(provider, tripped, 5, ago=timedelta(hours=5), status="upstream_error", http=429, code="upstream_rate_limited")
    quiet, _keys = make_provider("quiet", supplier, keys=1)

    page = superadmin_client.get(reverse("admin:providers_provider_changelist"), HTTP_ACCEPT_LANGUAGE="en").content.decode()

    alpha = row_of(page, "alpha")
    assert '<td class="field-keys_health">1/3</td>' in alpha  # the open breaker and the disabled key are out
    assert '<td class="field-requests_last_hour">3</td>' in alpha
    assert '<td class="field-errors_last_hour">1</td>' in alpha
    assert '<td class="field-latency_last_hour">200 ms</td>' in alpha  # answers only: (100 + 300) / 2
    assert "502 upstream_unavailable" in alpha  # the newest upstream error of the last 24 h
    other = row_of(page, "quiet")
    assert '<td class="field-keys_health">1/1</td>' in other and '<td class="field-requests_last_hour">0</td>' in other
    assert '<td class="field-latency_last_hour">—</td>' in other

    detail = superadmin_client.get(reverse("admin:providers_provider_change", args=[provider.pk]),
                                   HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "1/3" in detail and "502 upstream_unavailable" in detail and "200 ms" in detail


def test_the_list_costs_the_same_queries_for_one_provider_or_many(superadmin_client, health):
    supplier = Supplier.objects.create(slug="s", name="S")
    url = reverse("admin:providers_provider_changelist")

    def queries() -> int:
        superadmin_client.get(url)  # warm: session, content types
        with CaptureQueriesContext(connection) as captured:
            assert superadmin_client.get(url).status_code == 200
        return len(captured)

    provider, keys = make_provider("p0", supplier)
    record(provider, keys[0], 0, ago=timedelta(minutes=1))
    one = queries()
    for i in range(1, 6):
        provider, keys = make_provider(f"p{i}", supplier)
        record(provider, keys[0], i, ago=timedelta(minutes=1), status="upstream_error", http=500, code="upstream_error")
    assert queries() == one


def test_without_redis_the_healthy_count_is_unknown(superadmin_client, health, settings):
    make_provider("alpha", Supplier.objects.create(slug="s", name="S"), keys=2)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    page = superadmin_client.get(reverse("admin:providers_provider_changelist"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert '<td class="field-keys_health">?/2</td>' in page
