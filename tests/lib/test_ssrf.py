"""SSRF: the address rule in every spelling, checked when a URL is saved and again when a connection is made.

The connect-time tests talk to real loopback listeners (a counting TCP listener, FakeOpenAI) through
real aiohttp connectors and through the gateway; DNS answers come from a map the test controls
(``AnswerMap``), so a rebinding is one assignment.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from django.core.exceptions import ValidationError

from lib.ssrf import GuardedResolver, UnsafeAddressError, UnsafeURLError, guarded_socket, validate_outbound_url
from tests.fakes import openai_upstream
from tests.proxy.conftest import Gateway, ServerThread, build_world, flush_gateway_keys, free_port
from tests.proxy.helpers import GOOD, post

# The proxy tests' fixtures: one FakeOpenAI per session, reset around every test.
fake_openai_server = openai_upstream.fake_openai_server
fake_openai = openai_upstream.fake_openai

PUBLIC_V4 = "93.184.215.14"

# Every spelling of a loopback, private or otherwise non-public address we know getaddrinfo or
# ipaddress to accept: (URL host, what it is).
REFUSED = [
    ("127.0.0.1", "loopback"),
    ("localhost", "a name for loopback"),
    ("2130706433", "127.0.0.1 as one decimal number"),
    ("0x7f.1", "127.0.0.1 in hex with a short form"),
    ("0x7f000001", "127.0.0.1 as one hex number"),
    ("017700000001", "127.0.0.1 as one octal number"),
    ("0177.0.0.1", "127.0.0.1 with an octal first part"),
    ("127.1", "127.0.0.1 in short form"),
    ("0.0.0.0", "unspecified IPv4 (reaches loopback on Linux)"),
    ("0", "0.0.0.0 as one number"),
    ("10.1.2.3", "private"),
    ("192.168.0.1", "private"),
    ("172.16.0.1", "private"),
    ("100.64.0.1", "shared address space (CGNAT)"),
    ("169.254.169.254", "link-local (cloud metadata)"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("[::1]", "IPv6 loopback"),
    ("[::]", "unspecified IPv6"),
    ("[::ffff:127.0.0.1]", "IPv4-mapped loopback"),
    ("[::ffff:7f00:1]", "IPv4-mapped loopback in hex"),
    ("[::ffff:169.254.169.254]", "IPv4-mapped metadata address"),
    ("[::127.0.0.1]", "IPv4-compatible loopback"),
    ("[::a00:1]", "IPv4-compatible 10.0.0.1"),
    ("[64:ff9b::7f00:1]", "NAT64 of loopback"),
    ("[64:ff9b::127.0.0.1]", "NAT64 of loopback, dotted"),
    ("[64:ff9b::a9fe:a9fe]", "NAT64 of the metadata address"),
    ("[64:ff9b:1::808:808]", "local-use NAT64"),
    ("[2002:7f00:1::1]", "6to4 of loopback"),
    ("[2002:a00:1::]", "6to4 of 10.0.0.1"),
    ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", "Teredo (client 127.0.0.1)"),
    ("[2001:0:4136:e378:8000:63bf:f7f7:f7f7]", "Teredo (client 8.8.8.8): a tunnel, refused outright"),
    ("[fc00::1]", "unique local"),
    ("[fd12:3456::1]", "unique local"),
    ("[fe80::1]", "link-local"),
    ("[fe80::1%25eth0]", "link-local with a zone"),
    ("[fec0::1]", "site-local (deprecated)"),
    ("[ff02::1]", "multicast"),
    ("[100::1]", "discard-only"),
    ("[2001:db8::1]", "documentation"),
]
ALLOWED = [
    ("8.8.8.8", "public IPv4"),
    (PUBLIC_V4, "public IPv4"),
    ("[2001:4860:4860::8888]", "public IPv6"),
    ("[::ffff:8.8.8.8]", "IPv4-mapped public"),
    ("[64:ff9b::808:808]", "NAT64 of a public address (DNS64 networks)"),
    ("[2002:808:808::1]", "6to4 of a public address"),
]


# --- when a URL is saved ------------------------------------------------------------------------

@pytest.mark.parametrize(("host", "what"), REFUSED)
def test_it_refuses_every_spelling_of_a_non_public_address(host, what):
    with pytest.raises(UnsafeURLError, match="non-public address; mark the provider internal"):
        validate_outbound_url(f"http://{host}:8000/v1")
    assert validate_outbound_url(f"http://{host}:8000/v1", internal=True) == f"http://{host}:8000/v1"


@pytest.mark.parametrize(("host", "what"), ALLOWED)
def test_it_accepts_a_public_address_in_any_spelling(host, what):
    assert validate_outbound_url(f"https://{host}/v1") == f"https://{host}/v1"


def test_it_refuses_a_name_with_any_non_public_address_and_one_that_does_not_resolve():
    dns = AnswerMap({"mixed.test": [PUBLIC_V4, "10.0.0.7"], "public.test": [PUBLIC_V4, "2001:4860:4860::8888"]})
    with pytest.raises(UnsafeURLError, match="mixed.test resolves to a non-public address"):
        validate_outbound_url("https://mixed.test/v1", getaddrinfo=dns.getaddrinfo)
    assert validate_outbound_url("https://public.test/v1", getaddrinfo=dns.getaddrinfo)
    with pytest.raises(UnsafeURLError, match="does not resolve"):
        validate_outbound_url("https://nowhere.test/v1", getaddrinfo=dns.getaddrinfo)
    assert validate_outbound_url("https://nowhere.test/v1", getaddrinfo=dns.getaddrinfo, unresolved_ok=True)


@pytest.mark.parametrize("url", ["http://[64:ff9b::7f00:1]:8000/v1", "http://[::127.0.0.1]:8000/v1",
                                 "http://[::ffff:127.0.0.1]/v1", "http://[2002:7f00:1::]/v1"])
def test_a_provider_is_refused_any_form_of_loopback_unless_internal(db, url):
    from apps.providers.models import Provider

    provider = Provider(slug="vllm", kind="openai_compatible", base_url=url)
    with pytest.raises(ValidationError) as refused:
        provider.full_clean()
    assert "non-public address; mark the provider internal" in str(refused.value.message_dict["base_url"])
    provider.internal = True
    provider.full_clean()


@pytest.mark.parametrize("url", ["http://localhost:5432", "socks5://localhost:1080", "http://user:pw@0x7f.1:3128",
                                 "socks5://[::ffff:10.0.0.5]:1080", "http://[64:ff9b::a00:5]:3128"])
def test_an_egress_proxy_host_is_resolved_and_refused_unless_internal(db, url):
    from apps.providers.models import EgressProxy

    proxy = EgressProxy(slug="nl-1", country="NL")
    with pytest.raises(ValidationError) as refused:
        proxy.set_url(url)
    assert "non-public address; mark the egress proxy internal" in str(refused.value.message_dict["url"])
    assert ":pw@" not in str(refused.value)
    proxy.internal = True
    proxy.set_url(url)
    assert proxy.reveal_url() == url


def test_an_egress_proxy_name_that_does_not_resolve_yet_is_left_to_the_connect_time_guard(db):
    from apps.providers.models import EgressProxy

    proxy = EgressProxy(slug="nl-1", country="NL")
    proxy.set_url("http://user:pw@proxy.example.invalid:3128")
    assert proxy.url_display == "http://proxy.example.invalid:3128"


# --- when a connection is made: the guard on a real connector -----------------------------------

class AnswerMap(AbstractResolver):
    """DNS the test controls: a name in ``answers`` resolves to its addresses (in order); any other
    name goes to the system resolver. ``getaddrinfo`` gives the same answers to the save-time check."""

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.answers = dict(answers or {})
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.answers:
            return await ThreadedResolver().resolve(host, port, family)
        return [{"hostname": host, "host": address, "port": port, "proto": 0, "flags": socket.AI_NUMERICHOST,
                 "family": socket.AF_INET6 if ":" in address else socket.AF_INET} for address in self.answers[host]]

    async def close(self) -> None:
        pass

    def getaddrinfo(self, host: str, port: int, **_kwargs) -> list[tuple]:
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in self.answers[host]]


async def _connect_through_guard(host: str, resolver: AbstractResolver | None = None) -> tuple[BaseException | None, int]:
    """GET ``http://<host>:<port>/`` through a guarded connector at a loopback listener on ``port``:
    (the error, or None, and how many connections the listener accepted)."""
    accepted = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(count, host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(resolver), socket_factory=guarded_socket)
    error: BaseException | None = None
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as session:
        try:
            async with session.get(f"http://{host}:{port}/") as response:
                await response.read()
        except aiohttp.ClientError as exc:
            error = exc
    server.close()
    await server.wait_closed()
    return error, accepted


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0x7f.1", "0x7f000001", "0177.0.0.1", "127.1",
                                  "[::ffff:127.0.0.1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::1]", "0.0.0.0",
                                  "2130706433", "017700000001"])
def test_the_guard_refuses_a_loopback_connection_in_any_spelling_before_it_is_made(host, caplog):
    error, accepted = asyncio.run(_connect_through_guard(host))

    assert accepted == 0
    assert isinstance(error, aiohttp.ClientError)
    if not host.replace(".", "").isdigit():  # aiohttp itself refuses non-canonical all-digit forms as a URL
        assert isinstance(error.__cause__ or getattr(error, "os_error", None), UnsafeAddressError), repr(error)
        assert "refused an outbound connection" in caplog.text


def test_the_same_listener_is_reached_without_the_guard():
    async def unguarded() -> int:
        hits = 0

        async def count(reader, writer) -> None:
            nonlocal hits
            hits += 1
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(count, host="127.0.0.1", port=0)
        port = server.sockets[0].getsockname()[1]
        async with aiohttp.ClientSession() as session:
            for host in ("localhost", "0x7f.1", "[::ffff:127.0.0.1]"):
                async with session.get(f"http://{host}:{port}/") as response:
                    assert response.status == 204
        server.close()
        await server.wait_closed()
        return hits

    # What the guard refuses above really reaches loopback otherwise.
    assert asyncio.run(unguarded()) == 3


def test_the_guard_follows_a_rebinding_answer():
    dns = AnswerMap({"api.rebind.test": [PUBLIC_V4]})

    async def ask() -> list[ResolveResult]:
        return await GuardedResolver(dns).resolve("api.rebind.test", 443)

    assert [r["host"] for r in asyncio.run(ask())] == [PUBLIC_V4]
    for answer in (["127.0.0.1"], [PUBLIC_V4, "127.0.0.1"], ["::ffff:127.0.0.1"], ["64:ff9b::7f00:1"], ["::"]):
        dns.answers["api.rebind.test"] = answer
        with pytest.raises(UnsafeAddressError):
            asyncio.run(ask())


# --- through the gateway ---------------------------------------------------------------------------

@pytest.fixture
def dns() -> AnswerMap:
    return AnswerMap()


@pytest.fixture
def ssrf_gateway(transactional_db, fake_openai, dns):
    """The real gateway whose upstream client resolves names through ``dns``."""
    from django.conf import settings

    from apps.proxy.pipeline.app import ProxyApp
    from apps.proxy.pipeline.upstream import Timeouts, UpstreamClient
    from jetstream.asgi import build_application

    flush_gateway_keys()
    world = build_world(fake_openai)
    app = ProxyApp()
    app.upstream = UpstreamClient(timeouts=Timeouts.from_settings(settings.JETSTREAM), resolver=dns)
    with ServerThread(build_application(app), free_port()) as server:
        yield Gateway(world, server)
    flush_gateway_keys()


def _point_provider(gateway, base_url: str, *, internal: bool = False, egress=None) -> None:
    # Saved without clean(): a row that passed the save-time check when DNS answered otherwise, or
    # before the check knew every spelling.
    from apps.providers.services import set_provider_egresses

    provider = gateway.world.provider
    provider.base_url, provider.internal = base_url, internal
    provider.save()
    set_provider_egresses(provider=provider, egresses=[egress] if egress is not None else [])
    gateway.wait_config()


def _assert_refused(response, fake, caplog, needle: str) -> None:
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_unreachable"
    assert "127.0.0.1" not in response.text and "localhost" not in response.text and ".test" not in response.text
    assert fake.requests == []  # not a byte reached the upstream: neither the body nor the supplier key
    assert needle in caplog.text


def test_the_internal_fake_upstream_keeps_working(ssrf_gateway, fake_openai):
    completion = ssrf_gateway.client().chat.completions.create(**GOOD)
    assert completion.choices[0].message.content
    assert len(fake_openai.requests) == 1


def test_the_first_request_after_a_rebind_to_loopback_is_refused(ssrf_gateway, fake_openai, dns, caplog):
    port = urlsplit(fake_openai.base_url).port
    base_url = f"http://api.rebind.test:{port}/v1"
    dns.answers["api.rebind.test"] = [PUBLIC_V4]
    assert validate_outbound_url(base_url, getaddrinfo=dns.getaddrinfo) == base_url  # what the save saw
    _point_provider(ssrf_gateway, base_url)

    dns.answers["api.rebind.test"] = ["127.0.0.1"]
    with caplog.at_level(logging.WARNING, logger="lib.ssrf"):
        response = post(ssrf_gateway, GOOD)

    _assert_refused(response, fake_openai, caplog, "refused an outbound connection to api.rebind.test (127.0.0.1)")
    assert "api.rebind.test" in dns.asked
    ssrf_gateway.drain(expect=1)
    from apps.billing.models import UsageRecord

    record = UsageRecord.objects.get()
    assert record.status == "upstream_error" and record.sell_cost == 0
    assert (record.error_code, record.http_status) == ("upstream_unreachable", 502)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::ffff:127.0.0.1]", "0x7f.1"])
def test_a_provider_not_marked_internal_that_reaches_loopback_at_call_time_is_refused(ssrf_gateway, fake_openai, caplog, host):
    port = urlsplit(fake_openai.base_url).port
    _point_provider(ssrf_gateway, f"http://{host}:{port}/v1")

    with caplog.at_level(logging.WARNING, logger="lib.ssrf"):
        response = post(ssrf_gateway, GOOD)

    _assert_refused(response, fake_openai, caplog, "refused an outbound connection")


def test_an_egress_proxy_not_marked_internal_on_loopback_is_refused(ssrf_gateway, fake_openai, caplog):
    from apps.providers.models import EgressProxy

    port = urlsplit(fake_openai.base_url).port
    proxy = EgressProxy(slug="nl-1", country="NL", internal=True)
    proxy.set_url(f"http://localhost:{port}")
    proxy.internal = False  # as saved before proxy hosts were resolved
    proxy.save()
    _point_provider(ssrf_gateway, "http://api.upstream.test/v1", egress=proxy)

    with caplog.at_level(logging.WARNING, logger="lib.ssrf"):
        response = post(ssrf_gateway, GOOD)

    _assert_refused(response, fake_openai, caplog, "refused an outbound connection to localhost")


def test_an_egress_proxy_marked_internal_may_be_private_and_carries_a_public_provider(ssrf_gateway, fake_openai, dns):
    from apps.providers.models import EgressProxy

    proxy = EgressProxy(slug="nl-1", country="NL", internal=True)
    proxy.set_url(fake_openai.base_url.removesuffix("/v1"))  # FakeOpenAI answers absolute-form requests: a forward proxy
    proxy.save()
    _point_provider(ssrf_gateway, "http://api.upstream.test/v1", egress=proxy)

    completion = ssrf_gateway.client().chat.completions.create(**GOOD)

    assert completion.choices[0].message.content
    assert fake_openai.last_request.headers["Host"] == "api.upstream.test"
    assert dns.asked == []  # the provider's name is the proxy's to resolve


def test_a_socks_egress_proxy_not_marked_internal_on_loopback_is_refused(ssrf_gateway, fake_openai, caplog):
    from apps.providers.models import EgressProxy

    port = urlsplit(fake_openai.base_url).port
    proxy = EgressProxy(slug="nl-1", country="NL", internal=True)
    proxy.set_url(f"socks5://user:S0CKS-SECRET@127.0.0.1:{port}")
    proxy.internal = False  # as saved before proxy hosts were resolved
    proxy.save()
    _point_provider(ssrf_gateway, "http://api.upstream.test/v1", egress=proxy)

    with caplog.at_level(logging.WARNING):
        response = post(ssrf_gateway, GOOD)

    _assert_refused(response, fake_openai, caplog, "refused an outbound connection to 127.0.0.1")
    assert "S0CKS-SECRET" not in caplog.text and "S0CKS-SECRET" not in response.text
