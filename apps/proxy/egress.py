"""Egress points: the proxies (HTTP, HTTPS, SOCKS5) through which a provider's calls leave.

A provider lists its egress proxies in order (``apps.providers.models.ProviderEgress``); the route
snapshot carries them as ``EgressRoute`` (``snapshot.ModelRoute.egresses``), each with what the last
health check found. ``EgressPools`` is a worker's side of it:

- one pooled aiohttp session (one connector, so one pool of kept-alive connections) per egress
  proxy, built by ``new_session``: an HTTP(S) proxy is named per request (``proxy=``, aiohttp tunnels
  HTTPS through ``CONNECT``); a SOCKS5 proxy is the connector itself (``aiohttp-socks``, the proxy
  resolving the provider's name, like ``socks5h``);
- the SSRF guard (``lib.ssrf``) applies to the proxy, the peer the gateway connects to: its address
  is checked at connect time unless the egress proxy is marked internal. The proxy then connects
  onward on its own;
- ``order``: the egress proxies to try for one call — those the health check found up (or has not
  checked yet) and that have not failed in this worker for ``REST_SECONDS``, in the provider's
  order, then the others as a last resort (a check may be stale, and a call that might pass is
  better than a certain 502). No Redis call: the health arrives with the route snapshot, which the
  worker reloads on its config poll when the health check changes a proxy's state.

``probe`` is the health check's connection through one proxy (``apps.proxy.egress_health``). Proxy URLs
carry credentials: they are never logged nor put in an error; logs name the egress by its slug.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

import aiohttp
import python_socks
from aiohttp.abc import AbstractResolver
from aiohttp_socks import ProxyConnector, ProxyType
from aiohttp_socks.connector import _ResponseHandler
from python_socks import parse_proxy_url
from python_socks.async_.asyncio.v2 import Proxy
from yarl import URL

from lib.scrub import scrub
from lib.ssrf import GuardedResolver, UnsafeAddressError, guarded_socket

logger = logging.getLogger(__name__)

REST_SECONDS = 30.0  # how long an egress proxy that failed a connection in this worker is tried last


@dataclass(slots=True, frozen=True)
class EgressRoute:
    """One egress proxy of a route, as the snapshot loaded it: ``url`` decrypted (credentials
    included: never log it), ``internal`` its flag (a non-public address allowed), ``healthy`` False
    when the last health check found it down."""

    id: int
    slug: str
    url: str
    internal: bool = False
    country: str = ""
    healthy: bool = True

    @property
    def socks(self) -> bool:
        """Whether it is a SOCKS proxy (the connector speaks to it; no ``proxy=`` per request)."""
        return self.url.lower().startswith("socks")

    @property
    def proxy(self) -> str | None:
        """What a request passes as aiohttp's ``proxy=``: the URL of an HTTP(S) proxy, None for SOCKS."""
        return None if self.socks else self.url


class GuardedSocksConnector(ProxyConnector):
    """``aiohttp_socks.ProxyConnector`` whose connection to the SOCKS proxy passes the SSRF guard:
    the proxy's host is resolved through ``guard`` (which refuses a non-public address with
    ``lib.ssrf.UnsafeAddressError``) and the connection made to the address it approved, so a
    DNS answer cannot change between the check and the connect. No guard: an internal proxy."""

    def __init__(self, *, guard: GuardedResolver | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guard = guard

    async def _connect_via_proxy(self, host: str, port: int, ssl: SSLContext | None = None,
                                 timeout: float | None = None) -> tuple[Any, Any]:
        proxy_host = self._proxy_host
        if self._guard is not None:
            answers = await self._guard.resolve(proxy_host, self._proxy_port, socket.AF_UNSPEC)
            proxy_host = answers[0]["host"]
        proxy = Proxy(proxy_type=self._proxy_type, host=proxy_host, port=self._proxy_port,
                      username=self._proxy_username, password=self._proxy_password, rdns=True, proxy_ssl=self._proxy_ssl)
        try:
            stream = await proxy.connect(dest_host=host, dest_port=port, dest_ssl=ssl, timeout=timeout)
        except python_socks.ProxyTimeoutError:
            raise
        except (python_socks.ProxyError, python_socks.ProxyConnectionError) as exc:
            # A refusal by the proxy (authentication, its onward connection) is a failed connection like
            # any other (aiohttp and the adapters handle ``OSError``); the text names no host or credential.
            raise ConnectionError(f"SOCKS proxy refused the connection ({type(exc).__name__})") from None
        transport = stream.writer.transport
        protocol = _ResponseHandler(loop=self._loop, writer=stream.writer)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        return transport, protocol


def new_session(egress: EgressRoute, *, timeout: aiohttp.ClientTimeout, guard: GuardedResolver | None,
                resolver: AbstractResolver | None = None) -> aiohttp.ClientSession:
    """A pooled session whose connections go to ``egress``'s proxy: no connection caps, keep-alive 60 s,
    proxies from the environment ignored. ``guard`` checks the proxy's address (None only for an
    internal egress, which then resolves with ``resolver``, aiohttp's default if None)."""
    common: dict[str, Any] = {"limit": 0, "limit_per_host": 0, "keepalive_timeout": 60, "enable_cleanup_closed": True}
    connector: aiohttp.TCPConnector
    if egress.socks:
        proxy_type, host, port, username, password = parse_proxy_url(egress.url)
        if proxy_type != ProxyType.SOCKS5:
            raise ValueError("only socks5 egress proxies are supported")
        connector = GuardedSocksConnector(guard=None if egress.internal else guard, proxy_type=proxy_type, host=host,
                                          port=port, username=username, password=password, rdns=True, **common)
    elif egress.internal:
        connector = aiohttp.TCPConnector(ttl_dns_cache=300, resolver=resolver, **common)
    else:
        connector = aiohttp.TCPConnector(ttl_dns_cache=300, resolver=guard, socket_factory=guarded_socket, **common)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True,
                                 skip_auto_headers=("User-Agent",), trust_env=False)


class EgressPools:
    """A worker's sessions per egress proxy and its recent failures through them (see the module
    docstring). Sessions are kept by (id, URL, internal): a proxy whose URL changed gets a new one,
    and the old one is closed with the others by ``close``."""

    def __init__(self, *, timeout: aiohttp.ClientTimeout, guard: GuardedResolver | None,
                 resolver: AbstractResolver | None = None) -> None:
        self._timeout = timeout
        self._guard = guard
        self._resolver = resolver
        self._sessions: dict[tuple[int, str, bool], aiohttp.ClientSession] = {}
        self._resting: dict[int, float] = {}  # egress id → time.monotonic() until which it is tried last

    def session(self, egress: EgressRoute) -> aiohttp.ClientSession:
        """The pooled session for ``egress`` (made on first use). Raises ``ValueError`` for a proxy
        scheme the client cannot speak (SOCKS4)."""
        key = (egress.id, egress.url, egress.internal)
        session = self._sessions.get(key)
        if session is None:
            session = new_session(egress, timeout=self._timeout, guard=self._guard, resolver=self._resolver)
            self._sessions[key] = session
        return session

    def order(self, egresses: Sequence[EgressRoute]) -> list[EgressRoute]:
        """``egresses`` in the order to try them: the usable ones (checked up or not yet, not resting
        here) in their order, then the rest in theirs."""
        now = time.monotonic()
        usable = [egress for egress in egresses if egress.healthy and self._resting.get(egress.id, 0.0) <= now]
        return usable + [egress for egress in egresses if egress not in usable]

    def failed(self, egress: EgressRoute, provider_slug: str) -> None:
        """A connection through ``egress`` failed: try it last in this worker for ``REST_SECONDS``."""
        self._resting[egress.id] = time.monotonic() + REST_SECONDS
        logger.warning("provider %s: could not connect through egress proxy %s; trying the next one",
                       provider_slug, egress.slug)

    def succeeded(self, egress: EgressRoute) -> None:
        """A connection through ``egress`` worked: it is no longer resting here."""
        self._resting.pop(egress.id, None)

    def resting(self) -> Iterable[int]:
        """The ids of the egress proxies resting in this worker now."""
        now = time.monotonic()
        return [egress_id for egress_id, until in self._resting.items() if until > now]

    async def close(self) -> None:
        """Close every session and its pooled connections."""
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


@dataclass(slots=True, frozen=True)
class ProbeResult:
    """One health check through an egress proxy: ``up`` when the probe URL answered (any HTTP status),
    ``latency_ms`` the round trip to its response headers, ``error`` what failed (scrubbed), "" if up."""

    up: bool
    latency_ms: int | None
    error: str = ""


def describe_failure(exc: BaseException, egress: EgressRoute) -> str:
    """What a failed probe says, safe to store and show: the error's class and what it means, in the
    gateway's words where it knows the failure (a refused connection, a timeout, the proxy's HTTP
    status, an address refused by the SSRF guard), else its text scrubbed (``lib.scrub``) of the proxy
    URL, its credentials, host, port, and any other URL, host name or address."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return f"{name}: the proxy answered HTTP {exc.status}"
    if isinstance(exc, TimeoutError):
        return f"{name}: no answer in time"
    cause = exc.__cause__ or getattr(exc, "os_error", None)
    if isinstance(cause, UnsafeAddressError) or isinstance(exc, UnsafeAddressError):
        return f"{name}: not a public address; mark the egress proxy internal if it is meant to be reached"
    if isinstance(exc, ConnectionRefusedError) or isinstance(cause, ConnectionRefusedError):
        return f"{name}: connection refused"
    parts = URL(egress.url)
    secrets = [egress.url] + [value for value in (parts.user, parts.password, parts.host) if value]
    if parts.port is not None and parts.port >= 1000:  # shorter numbers would mangle the text
        secrets.append(str(parts.port))
    return scrub(f"{name}: {exc or 'no detail'}", secrets)[:300]


async def probe(egress: EgressRoute, probe_url: str, *, timeout: float,
                resolver: AbstractResolver | None = None) -> ProbeResult:
    """Request ``probe_url`` (GET, no redirects) through ``egress`` within ``timeout`` seconds in all:
    any HTTP answer — or, through an ``http://`` or SOCKS proxy, a TLS handshake with a certificate
    the default trust store refuses — means the proxy carried the connection. Never raises for a network failure: a
    ``ProbeResult`` with ``up`` False and the scrubbed error."""
    guard = None if egress.internal else GuardedResolver(resolver)
    session = new_session(egress, timeout=aiohttp.ClientTimeout(total=timeout, connect=timeout), guard=guard,
                          resolver=resolver)
    started = time.monotonic()
    try:
        async with session.get(probe_url, proxy=egress.proxy, allow_redirects=False) as response:
            await response.release()
        return ProbeResult(True, int((time.monotonic() - started) * 1000))
    except aiohttp.ClientSSLError as exc:
        if egress.url.lower().startswith("https"):  # TLS to the proxy itself may be what failed
            return ProbeResult(False, None, describe_failure(exc, egress))
        # The upstream's TLS answered through the proxy: the proxy works. Its certificate (a provider
        # with its own CA bundle, such as GigaChat) is checked on real calls, not here.
        return ProbeResult(True, int((time.monotonic() - started) * 1000))
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        return ProbeResult(False, None, describe_failure(exc, egress))
    finally:
        await session.close()
        if guard is not None:
            await guard.close()
