"""Egress points through the real gateway: calls leave through HTTP and SOCKS5 proxies (real loopback
servers, ``tests/fakes/egress_proxies.py``) in front of FakeOpenAI, driven by the official SDK.

The provider's base URL is a name only the proxies know (``api.upstream.test``): a call that reached
FakeOpenAI went through a proxy, and the gateway never resolved that name (``dns.asked``).
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import pytest

from tests.fakes import openai_upstream
from tests.fakes.egress_proxies import FakeHttpProxy, FakeSocks5Proxy, dead_proxy_url
from tests.lib.test_ssrf import AnswerMap
from tests.proxy.conftest import Gateway, ServerThread, build_world, flush_gateway_keys, free_port
from tests.proxy.helpers import GOOD, expected_cost, post

fake_openai_server = openai_upstream.fake_openai_server
fake_openai = openai_upstream.fake_openai

PROXY_PASSWORD = "Egr3ss-Pr0xy-Passw0rd"
UPSTREAM_NAME = "api.upstream.test"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@pytest.fixture
def dns() -> AnswerMap:
    return AnswerMap()


@pytest.fixture
def http_proxy(fake_openai):
    with FakeHttpProxy(credentials=("egress", PROXY_PASSWORD), hosts={UPSTREAM_NAME: "127.0.0.1"}) as proxy:
        yield proxy


@pytest.fixture
def socks_proxy(fake_openai):
    with FakeSocks5Proxy(credentials=("egress", PROXY_PASSWORD), hosts={UPSTREAM_NAME: "127.0.0.1"}) as proxy:
        yield proxy


@pytest.fixture
def world(transactional_db, fake_openai):
    flush_gateway_keys()
    world = build_world(fake_openai)
    port = urlsplit(fake_openai.base_url).port
    world.provider.base_url, world.provider.internal = f"http://{UPSTREAM_NAME}:{port}/v1", False
    world.provider.save()
    return world


def egress(slug: str, url: str, *, internal: bool = True, country: str = "FI"):
    from apps.providers.models import EgressProxy

    proxy = EgressProxy(slug=slug, country=country, internal=internal)
    proxy.set_url(url)
    proxy.save()
    return proxy


def route_through(world, *proxies) -> None:
    from apps.providers.services import set_provider_egresses

    set_provider_egresses(provider=world.provider, egresses=list(proxies))


@pytest.fixture
def start_gateway(world, dns):
    """Start the real gateway (after the test set its egress proxies) whose names resolve through ``dns``."""
    from django.conf import settings

    from apps.proxy.pipeline.app import ProxyApp
    from apps.proxy.pipeline.upstream import Timeouts, UpstreamClient
    from jetstream.asgi import build_application

    servers: list[ServerThread] = []

    def start() -> Gateway:
        app = ProxyApp()
        app.upstream = UpstreamClient(timeouts=Timeouts.from_settings(settings.JETSTREAM), resolver=dns)
        server = ServerThread(build_application(app), free_port())
        server.__enter__()
        servers.append(server)
        return Gateway(world, server)

    yield start
    for server in servers:
        server.__exit__(None, None, None)
    flush_gateway_keys()


def _records():
    from apps.billing.models import UsageRecord

    return list(UsageRecord.objects.order_by("started_at"))


def test_it_calls_through_an_http_proxy_with_credentials(world, http_proxy, start_gateway, fake_openai, dns):
    route_through(world, egress("fi-1", http_proxy.url))
    gateway = start_gateway()

    completion = gateway.client().chat.completions.create(**GOOD)

    assert completion.choices[0].message.content
    assert http_proxy.targets == [(UPSTREAM_NAME, urlsplit(fake_openai.base_url).port)] and http_proxy.refused_auth == 0
    assert http_proxy.tunnels == 0  # an http:// upstream is sent in absolute form
    assert "Proxy-Authorization" not in fake_openai.last_request.headers  # the proxy's, not the provider's
    assert UPSTREAM_NAME not in dns.asked  # the proxy resolved the provider
    gateway.drain(expect=1)
    (record,) = _records()
    assert (record.input_tokens, record.output_tokens) == (completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert record.sell_cost == expected_cost(completion.usage.prompt_tokens, completion.usage.completion_tokens) > 0


def test_it_calls_through_a_socks5_proxy_sync_async_streaming_and_tools(world, socks_proxy, start_gateway, fake_openai):
    route_through(world, egress("pl-1", socks_proxy.url, country="PL"))
    gateway = start_gateway()

    completion = gateway.client().chat.completions.create(**GOOD)
    streamed = list(gateway.client().chat.completions.create(**GOOD, stream=True, stream_options={"include_usage": True}))

    async def async_call():
        async with gateway.async_client() as client:
            return await client.chat.completions.create(**GOOD)

    async_completion = asyncio.run(async_call())
    tool_call = gateway.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather in Tallinn?"}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})

    assert completion.choices[0].message.content and async_completion.choices[0].message.content
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert streamed[-1].usage is not None
    assert tool_call.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert len(fake_openai.requests) == 4 and socks_proxy.refused_auth == 0
    assert {target[0] for target in socks_proxy.targets} == {UPSTREAM_NAME}  # the name, resolved by the proxy (socks5h)
    gateway.drain(expect=4)
    records = _records()
    assert all(record.status == "ok" and record.sell_cost > 0 for record in records)
    assert records[0].sell_cost == expected_cost(completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert records[1].output_tokens == streamed[-1].usage.completion_tokens


def test_a_dead_egress_is_skipped_and_the_call_leaves_through_the_next_with_the_same_key(world, socks_proxy, start_gateway,
                                                                                          fake_openai, caplog):
    route_through(world, egress("fi-1", dead_proxy_url("http")), egress("ee-1", dead_proxy_url("socks5"), country="EE"),
                  egress("pl-1", socks_proxy.url, country="PL"))
    gateway = start_gateway()

    with caplog.at_level(logging.DEBUG):
        completion = gateway.client().chat.completions.create(**GOOD)

    assert completion.choices[0].message.content
    assert len(fake_openai.requests) == 1 and len(socks_proxy.targets) == 1
    assert "egress proxy fi-1" in caplog.text and "egress proxy ee-1" in caplog.text
    assert "proxy-pass" not in caplog.text and PROXY_PASSWORD not in caplog.text
    gateway.drain(expect=1)
    (record,) = _records()
    assert record.status == "ok" and record.sell_cost > 0
    assert len(record.attempts) == 1 and record.attempts[0]["status"] == 200  # one key, one attempt


def test_every_egress_dead_is_a_502_without_credentials_and_nothing_billed(world, start_gateway, fake_openai, caplog):
    route_through(world, egress("fi-1", dead_proxy_url("http")), egress("pl-1", dead_proxy_url("socks5")))
    gateway = start_gateway()

    with caplog.at_level(logging.DEBUG):
        response = post(gateway, GOOD)

    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_unreachable"
    assert fake_openai.requests == []
    for text in (response.text, caplog.text):
        assert "proxy-pass" not in text and "dead:" not in text
    gateway.drain(expect=1)
    (record,) = _records()
    assert record.sell_cost == 0 and record.error_code == "upstream_unreachable"


def test_an_egress_at_a_private_address_not_marked_internal_is_refused_at_connect_time(world, http_proxy, socks_proxy,
                                                                                         start_gateway, fake_openai, caplog):
    # Saved as internal (the save-time check passes), then unmarked behind the check's back.
    proxies = [egress("fi-1", http_proxy.url), egress("de-1", socks_proxy.url, country="DE")]
    for proxy in proxies:
        proxy.internal = False
        proxy.save()
    route_through(world, *proxies)
    gateway = start_gateway()

    with caplog.at_level(logging.WARNING):
        response = post(gateway, GOOD)

    assert response.status_code == 502
    assert http_proxy.connections == 0 and socks_proxy.connections == 0  # not a byte reached either proxy
    assert fake_openai.requests == []
    assert "refused an outbound connection to 127.0.0.1" in caplog.text
    assert PROXY_PASSWORD not in caplog.text and PROXY_PASSWORD not in response.text


def test_the_health_check_marks_a_dead_egress_down_and_workers_stop_using_it(world, http_proxy, socks_proxy, start_gateway,
                                                                              fake_openai):
    from apps.providers.models import EgressHealth, EgressProxy
    from apps.proxy.egress_health import check_egresses

    first, second = egress("fi-1", socks_proxy.url), egress("pl-1", http_proxy.url, country="PL")
    route_through(world, first, second)
    gateway = start_gateway()
    gateway.client().chat.completions.create(**GOOD)
    assert len(socks_proxy.targets) == 1 and http_proxy.targets == []

    socks_proxy.stop()
    assert check_egresses(timeout=2) == {"fi-1": "down", "pl-1": "up"}
    first.refresh_from_db()
    assert first.health == EgressHealth.DOWN and first.health_checked_at is not None and first.health_latency_ms is None
    assert first.health_error and PROXY_PASSWORD not in first.health_error and "127.0.0.1" not in first.health_error
    assert EgressProxy.objects.get(slug="pl-1").health_latency_ms is not None
    socks_proxy.start()  # back on its port, but the workers go by the check until the next one
    socks_proxy.connections, socks_proxy.targets = 0, []
    gateway.wait_config()

    gateway.client().chat.completions.create(**GOOD)

    assert socks_proxy.connections == 0  # not even tried: the worker read the health with its config reload
    assert len(http_proxy.targets) == 2  # the probe's and the call's
    assert check_egresses(timeout=2) == {"fi-1": "up", "pl-1": "up"}
    gateway.wait_config()
    gateway.client().chat.completions.create(**GOOD)
    assert len(socks_proxy.targets) == 2  # the probe's and the call's


def test_a_provider_whose_egresses_are_all_inactive_is_never_called_directly(world, start_gateway, fake_openai, caplog):
    fi = egress("fi-1", dead_proxy_url("http"))
    route_through(world, fi)
    fi.is_active = False
    fi.save()
    world.provider.base_url = fake_openai.base_url  # reachable directly: the gateway must not go there
    world.provider.internal = True
    world.provider.save()
    gateway = start_gateway()

    with caplog.at_level(logging.ERROR):
        response = post(gateway, GOOD)

    assert response.status_code == 502 and fake_openai.requests == []
    assert "provider openai-main: none of its egress proxies is active" in caplog.text


def test_gigachat_exchanges_its_token_and_answers_through_a_socks5_egress(world, socks_proxy, start_gateway):
    """Both of GigaChat's hosts (the token service and the API) are reached through the egress proxy."""
    from apps.providers.models import Model, Price, Provider, SupplierKey
    from tests.fakes.gigachat_upstream import DEFAULT_AUTH_KEY, FakeGigaChat

    with FakeGigaChat() as giga:
        port = urlsplit(giga.base_url).port
        provider = Provider.objects.create(
            slug="gigachat", kind="gigachat", base_url=f"http://gigachat.upstream.test:{port}/api/v1",
            options={"auth_url": f"http://ngw.upstream.test:{port}/api/v2/oauth", "scope": "GIGACHAT_API_PERS"})
        key = SupplierKey(supplier=world.supplier, provider=provider, name="giga-0")
        key.set_secret(DEFAULT_AUTH_KEY)
        key.save()
        model = Model.objects.create(name="giga-max", provider=provider, upstream_model="GigaChat-2-Max")
        Price.objects.create(model=model, currency="RUB", input_per_1m=500_000_000, output_per_1m=1_500_000_000)
        socks_proxy.hosts.update({"gigachat.upstream.test": "127.0.0.1", "ngw.upstream.test": "127.0.0.1"})
        from apps.providers.services import set_provider_egresses

        set_provider_egresses(provider=provider, egresses=[egress("ru-1", socks_proxy.url, country="RU")])
        gateway = start_gateway()

        completion = gateway.client().chat.completions.create(model="giga-max", messages=[{"role": "user", "content": "hi"}])

        assert completion.choices[0].message.content
        assert len(giga.exchanges) == 1 and len(giga.requests) == 1
        assert {host for host, _port in socks_proxy.targets} == {"ngw.upstream.test", "gigachat.upstream.test"}
        gateway.drain(expect=1)
        (record,) = _records()
        assert record.status == "ok" and record.sell_cost > 0


def test_an_https_upstream_is_tunnelled_through_an_http_proxy_with_connect(world, http_proxy, start_gateway, tmp_path):
    """TLS to the upstream inside the proxy's CONNECT tunnel (GigaChat with its own CA bundle)."""
    from apps.providers.models import Model, Price, Provider, SupplierKey
    from apps.providers.services import set_provider_egresses
    from tests.fakes.gigachat_upstream import DEFAULT_AUTH_KEY, FakeGigaChat, make_tls

    ca_path, server_tls = make_tls(tmp_path)
    with FakeGigaChat(tls=server_tls) as giga:
        port = urlsplit(giga.base_url).port
        provider = Provider.objects.create(
            slug="gigachat", kind="gigachat", base_url=f"https://localhost:{port}/api/v1",
            options={"auth_url": f"https://localhost:{port}/api/v2/oauth", "scope": "GIGACHAT_API_PERS",
                     "ca_bundle": str(ca_path)})
        key = SupplierKey(supplier=world.supplier, provider=provider, name="giga-0")
        key.set_secret(DEFAULT_AUTH_KEY)
        key.save()
        model = Model.objects.create(name="giga-max", provider=provider, upstream_model="GigaChat-2-Max")
        Price.objects.create(model=model, currency="RUB", input_per_1m=500_000_000, output_per_1m=1_500_000_000)
        set_provider_egresses(provider=provider, egresses=[egress("ru-1", http_proxy.url, country="RU")])
        gateway = start_gateway()

        completion = gateway.client().chat.completions.create(model="giga-max", messages=[{"role": "user", "content": "hi"}])

        assert completion.choices[0].message.content
        assert len(giga.exchanges) == 1 and len(giga.requests) == 1
        assert set(http_proxy.targets) == {("localhost", port)} and http_proxy.tunnels >= 1  # CONNECT, TLS inside
        assert http_proxy.refused_auth == 0


def test_a_single_egress_route_built_by_hand_still_works(fake_openai):
    """``ModelRoute(egress_url=...)`` (a route built without the snapshot) becomes a one-entry list."""
    from apps.proxy.snapshot import ModelRoute

    route = ModelRoute(id=1, name="m", modality="chat", upstream_model="m", context_window=1, max_output_tokens=1,
                       created=0, provider_id=1, provider_kind="openai", provider_slug="p", base_url="http://x",
                       provider_options={}, egress_url="socks5://u:p@127.0.0.1:1", price_id=None, price_input=0,
                       price_output=0, price_cached=0, fx_micro=None, egress_internal=True)
    assert [(e.url, e.internal, e.socks, e.proxy) for e in route.egresses] == [("socks5://u:p@127.0.0.1:1", True, True, None)]
