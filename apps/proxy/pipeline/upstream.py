"""Route + upstream call: the provider's adapter, supplier keys in order, failover.

Failover happens only before the first byte reaches the client: when the adapter says a failure
is about the key or the moment (connection error, timeout before headers, 401/403, 429, 5xx), the
key cools down in this worker and the next one is tried, up to ``MAX_ATTEMPTS``; a failure about
the request itself (another 4xx) is answered at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver

from apps.providers.adapters import adapter_for
from apps.providers.adapters.base import Adapter, Credential, UpstreamFailure, UpstreamResponse, unreachable
from lib.ssrf import GuardedResolver, SocketFactory, guarded_socket

from ..exceptions import ApiError
from ..snapshot import KeyRoute, ModelRoute
from .context import Call

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


@dataclass(slots=True)
class Opened:
    """A started 2xx upstream answer: its adapter, the response, and for a non-streamed call its whole body."""

    adapter: Adapter
    response: UpstreamResponse
    body: bytes | None = None


def _cool_down(key: KeyRoute, seconds: float) -> None:
    key.cooldown_until = max(key.cooldown_until, time.monotonic() + seconds)


class UpstreamClient:
    """The worker's pooled upstream connections (aiohttp) and the call with failover."""

    def __init__(self, *, timeout_seconds: int, resolver: AbstractResolver | None = None) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds, sock_connect=10)
        self._session: aiohttp.ClientSession | None = None
        self._internal_session: aiohttp.ClientSession | None = None
        self._guard: GuardedResolver | None = None
        self._resolver = resolver  # the names' source of truth under the guard; aiohttp's default if None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session whose every connection is checked against SSRF (after ``start``)."""
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() has not run")
        return self._session

    def session_for(self, route: ModelRoute) -> aiohttp.ClientSession:
        """The session for ``route``'s connections: unguarded only when the peer the gateway connects
        to (the egress proxy if the route has one, else the provider) is marked internal. Raises
        ``UpstreamFailure`` (``unreachable``) for a SOCKS egress proxy, which aiohttp cannot speak."""
        if route.egress_url is not None and route.egress_url.lower().startswith("socks"):
            # aiohttp would send plain HTTP (the supplier key included) to the SOCKS port: refuse instead.
            logger.error("provider %s: its egress proxy is SOCKS, which the upstream client does not support; "
                         "use an http:// or https:// proxy", route.provider_slug)
            refusal = unreachable()
            refusal.failover, refusal.cooldown = False, None  # about the route, not the key: no other key fares better
            raise refusal
        if route.connects_internally:
            if self._internal_session is None:
                raise RuntimeError("UpstreamClient.start() has not run")
            return self._internal_session
        return self.session

    async def start(self) -> None:
        """Open the pooled aiohttp sessions: no connection caps, DNS cached 300 s, keep-alive 60 s, the
        call's whole timeout ``timeout_seconds`` (10 s to connect), proxies from the environment ignored.
        One session checks every address it connects to (``lib.ssrf``), one is for internal peers."""
        self._guard = GuardedResolver(self._resolver)
        self._session = self._new_session(resolver=self._guard, socket_factory=guarded_socket)
        self._internal_session = self._new_session(resolver=self._resolver)

    def _new_session(self, *, resolver: AbstractResolver | None, socket_factory: SocketFactory | None = None) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60,
                                         enable_cleanup_closed=True, resolver=resolver, socket_factory=socket_factory)
        return aiohttp.ClientSession(connector=connector, timeout=self._timeout, auto_decompress=True,
                                     skip_auto_headers=("User-Agent",), trust_env=False)

    async def stop(self) -> None:
        """Close the sessions and their pooled connections."""
        for session in (self._session, self._internal_session):
            if session is not None:
                await session.close()
        if self._guard is not None:  # a connector closes only the resolver it made itself
            await self._guard.close()

    async def open(self, call: Call) -> Opened:
        """Start the call's upstream answer (sets ``call.key`` to the key that served it). Raises
        ``ApiError``: 501 (no adapter for the kind), 503 (no key), or the last key's failure."""
        route = call.route
        adapter = adapter_for(route.provider_kind)
        if adapter is None:
            raise ApiError(501, f"Provider kind '{route.provider_kind}' has no adapter yet.", type="api_error",
                           code="provider_not_supported")
        if not adapter.needs_key:
            return await self._attempt(adapter, call, None)
        keys = route.pick_keys()
        if not keys:
            raise ApiError(503, "No upstream key is available for this model right now.", type="api_error", code="no_upstream_key")
        failure = UpstreamFailure(502, "The upstream provider failed.")
        for key in keys[:MAX_ATTEMPTS]:
            try:
                opened = await self._attempt(adapter, call, key)
            except UpstreamFailure as exc:
                if exc.cooldown:
                    _cool_down(key, exc.cooldown)
                if not exc.failover:
                    raise ApiError.from_upstream(exc) from None
                failure = exc
                continue
            call.key = key
            return opened
        raise ApiError.from_upstream(failure)

    async def _attempt(self, adapter: Adapter, call: Call, key: KeyRoute | None) -> Opened:
        route = call.route
        credential = Credential(key.id, key.secret) if key is not None else None
        response = await adapter.open(self.session_for(route), call.request, route.target, credential, proxy=route.egress_url)
        if response.status >= 300:
            try:
                error_body = await response.read()
            finally:
                response.release()
            raise adapter.map_error(response.status, error_body, response.headers, key.secret if key else None)
        if call.request.stream:
            return Opened(adapter, response)
        body = await response.read()
        response.release()
        return Opened(adapter, response, body)
