"""Egress points without the gateway: the order a worker tries them in, the health probe through real
loopback proxies, and the admin's health columns (the configuration file's ``egress:`` list:
``tests/config/test_apply_egress.py``)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
from django.urls import reverse

from apps.proxy.egress import REST_SECONDS, EgressPools, EgressRoute, describe_failure, probe
from tests.fakes import openai_upstream
from tests.fakes.egress_proxies import FakeHttpProxy, FakeSocks5Proxy, dead_proxy_url

fake_openai_server = openai_upstream.fake_openai_server
fake_openai = openai_upstream.fake_openai

PASSWORD = "Pr0be-Secret-Passw0rd"


def _pools() -> EgressPools:
    import aiohttp

    return EgressPools(timeout=aiohttp.ClientTimeout(total=None, connect=2), guard=None)


def test_it_tries_healthy_egresses_in_order_then_the_down_and_resting_ones(monkeypatch):
    fi, pl, ee, de = (EgressRoute(n, s, f"http://{s}:3128") for n, s in enumerate(["fi-1", "pl-1", "ee-1", "de-1"], 1))
    ee = EgressRoute(3, "ee-1", "http://ee-1:3128", healthy=False)
    pools = _pools()
    assert [e.slug for e in pools.order([fi, pl, ee, de])] == ["fi-1", "pl-1", "de-1", "ee-1"]

    clock = [1000.0]
    monkeypatch.setattr("apps.proxy.egress.time.monotonic", lambda: clock[0])
    pools.failed(fi, "openai")
    assert [e.slug for e in pools.order([fi, pl, ee, de])] == ["pl-1", "de-1", "fi-1", "ee-1"]
    assert list(pools.resting()) == [fi.id]
    clock[0] += REST_SECONDS + 1
    assert [e.slug for e in pools.order([fi, pl, ee, de])] == ["fi-1", "pl-1", "de-1", "ee-1"]
    pools.failed(pl, "openai")
    pools.succeeded(pl)
    assert [e.slug for e in pools.order([fi, pl])] == ["fi-1", "pl-1"]


def test_it_keeps_one_session_per_egress_and_a_new_one_when_the_url_changes():
    async def run() -> None:
        pools = _pools()
        http, socks = EgressRoute(1, "fi-1", "http://u:p@127.0.0.1:3128"), EgressRoute(2, "pl-1", "socks5://u:p@127.0.0.1:1080")
        assert pools.session(http) is pools.session(http)
        assert pools.session(socks) is not pools.session(http)
        assert pools.session(EgressRoute(1, "fi-1", "http://u:q@127.0.0.1:3128")) is not pools.session(http)
        assert (http.proxy, socks.proxy) == ("http://u:p@127.0.0.1:3128", None)
        with pytest.raises(ValueError):
            pools.session(EgressRoute(3, "old", "socks4://127.0.0.1:1080"))
        await pools.close()

    asyncio.run(run())


@pytest.mark.parametrize("proxy_class", [FakeHttpProxy, FakeSocks5Proxy])
def test_the_probe_goes_through_the_proxy_and_reports_latency(fake_openai, proxy_class):
    port = urlsplit(fake_openai.base_url).port
    with proxy_class(credentials=("probe", PASSWORD), hosts={"api.upstream.test": "127.0.0.1"}) as proxy:
        route = EgressRoute(1, "fi-1", proxy.url, internal=True)
        result = asyncio.run(probe(route, f"http://api.upstream.test:{port}/v1/models", timeout=5))
        wrong = EgressRoute(1, "fi-1", proxy.url.replace(PASSWORD, "wrong-password"), internal=True)
        refused = asyncio.run(probe(wrong, f"http://api.upstream.test:{port}/v1/models", timeout=5))

    assert result.up and result.latency_ms is not None and result.error == ""
    assert proxy.targets[0] == ("api.upstream.test", port)
    if proxy_class is FakeHttpProxy:  # a 407 is an HTTP answer: the proxy is up, only its credentials are wrong
        assert refused.up
    else:
        assert not refused.up and "wrong-password" not in refused.error


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_a_dead_proxy_probes_down_with_a_scrubbed_error(scheme):
    url = dead_proxy_url(scheme)
    result = asyncio.run(probe(EgressRoute(1, "fi-1", url, internal=True), "https://api.openai.com/v1", timeout=2))
    assert not result.up and result.latency_ms is None and result.error
    assert "proxy-pass" not in result.error and "127.0.0.1" not in result.error and str(urlsplit(url).port) not in result.error


def test_a_probe_through_a_private_proxy_not_marked_internal_is_refused_before_connecting():
    with FakeSocks5Proxy() as proxy:
        result = asyncio.run(probe(EgressRoute(1, "fi-1", proxy.url, internal=False), "https://api.openai.com/v1", timeout=2))
    assert not result.up and proxy.connections == 0
    assert "not a public address" in result.error and "127.0.0.1" not in result.error


def test_a_failure_description_names_no_credential_or_host():
    route = EgressRoute(1, "fi-1", "socks5://user:S3cret-Value@proxy.internal.example:1080")
    text = describe_failure(OSError("connect to socks5://user:S3cret-Value@proxy.internal.example:1080 failed"), route)
    assert text.startswith("OSError:") and "S3cret-Value" not in text and "proxy.internal.example" not in text


# --- admin --------------------------------------------------------------------------------------

def test_the_admin_shows_each_egress_health_without_credentials(superadmin_client, catalog):
    from django.utils import timezone

    from apps.providers.models import EgressHealth, EgressProxy

    EgressProxy.objects.filter(pk=catalog.egress.pk).update(
        health=EgressHealth.DOWN, health_checked_at=timezone.now(), health_latency_ms=None,
        health_error="ClientConnectorError: Cannot connect to host *** ssl:default")
    catalog.egress.refresh_from_db()
    pages = [reverse("admin:providers_egressproxy_changelist"),
             reverse("admin:providers_egressproxy_change", args=[catalog.egress.pk]),
             reverse("admin:providers_provider_change", args=[catalog.provider.pk]),
             reverse("admin:providers_provider_changelist"),
             reverse("admin:providers_provideregress_changelist")]
    for url in pages:
        html = superadmin_client.get(url).content.decode()
        assert "Недоступен" in html, url  # "Down", in Russian (the default)
        assert catalog.egress.reveal_url() not in html and "egress-user:" not in html, url
    assert "ClientConnectorError" in superadmin_client.get(pages[0]).content.decode()
    assert "socks5://proxy.example.net:1080" in superadmin_client.get(pages[2]).content.decode()


# --- migration ----------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_the_migration_makes_a_providers_single_egress_the_first_of_its_list():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("providers", "0006_local_nodes")], [("providers", "0007_egress_points")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        old = executor.loader.project_state(before).apps
        proxy = old.get_model("providers", "EgressProxy").objects.create(slug="fi-1", country="FI", url_encrypted="x",
                                                                         url_display="http://fi:3128")
        Provider = old.get_model("providers", "Provider")
        Provider.objects.create(slug="with", kind="mock", egress=proxy)
        Provider.objects.create(slug="without", kind="mock")

        executor = MigrationExecutor(connection)
        executor.migrate(after)
        new = executor.loader.project_state(after).apps
        links = new.get_model("providers", "ProviderEgress").objects.order_by("pk")
        assert [(link.provider.slug, link.egress.slug, link.priority) for link in links] == [("with", "fi-1", 0)]
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


def test_beat_runs_the_egress_health_check_as_a_registered_task():
    from django.conf import settings

    from apps.proxy import tasks
    from jetstream.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["check-egress-health"]
    assert entry["task"] == tasks.check_egress_health.name == "apps.proxy.tasks.check_egress_health"
    assert entry["schedule"] == 30.0
    app.loader.import_default_modules()
    assert entry["task"] in app.tasks
