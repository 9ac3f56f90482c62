"""Route + upstream call: the provider's adapter, supplier keys in order, failover.

Failover happens only before the first byte reaches the client: when the adapter says a failure
is about the key or the moment (connection error, timeout before headers, 401/403, 429, 5xx), the
key cools down in this worker and the next one is tried, up to ``MAX_ATTEMPTS``; a failure about
the request itself (another 4xx) is answered at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp

from apps.providers.adapters import adapter_for
from apps.providers.adapters.base import Adapter, Credential, UpstreamFailure, UpstreamResponse, malformed

from ..exceptions import ApiError
from ..snapshot import KeyRoute, ModelRoute
from .context import Call

MAX_ATTEMPTS = 3


@dataclass(slots=True)
class Opened:
    """A started 2xx upstream answer: its adapter, the response, and for a non-streamed call its whole body."""

    adapter: Adapter
    response: UpstreamResponse
    body: bytes | None = None


def provider_secrets(route: ModelRoute) -> tuple[str, ...]:
    """Every supplier key of the route's provider (plain text): what the adapter scrubs from upstream error text."""
    return tuple(key.secret for key in route.keys)


def _cool_down(key: KeyRoute, seconds: float) -> None:
    key.cooldown_until = max(key.cooldown_until, time.monotonic() + seconds)


class UpstreamClient:
    """The worker's pooled upstream connections (aiohttp) and the call with failover."""

    def __init__(self, *, timeout_seconds: int) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds, sock_connect=10)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session (after ``start``)."""
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() has not run")
        return self._session

    async def start(self) -> None:
        """Open the pooled aiohttp session: no connection caps, DNS cached 300 s, keep-alive 60 s, the
        call's whole timeout ``timeout_seconds`` (10 s to connect), proxies from the environment ignored."""
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60,
                                         enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, auto_decompress=True,
                                              skip_auto_headers=("User-Agent",), trust_env=False)

    async def stop(self) -> None:
        """Close the session and its pooled connections."""
        if self._session is not None:
            await self._session.close()

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
        response = await adapter.open(self.session, call.request, route.target, credential, proxy=route.egress_url)
        if response.status >= 300:
            try:
                error_body = await response.read()
            finally:
                response.release()
            raise adapter.map_error(response.status, error_body, response.headers, provider_secrets(route))
        if call.request.stream and not _is_json(response):
            return Opened(adapter, response)
        body = await response.read()
        response.release()
        # An upstream that answers 200 with an error object failed like one that said so in its status
        # (a stream request answered with JSON included: nothing has reached the client yet).
        failure = adapter.body_failure(body, provider_secrets(route))
        if failure is not None:
            raise failure
        if call.request.stream:
            raise malformed()
        return Opened(adapter, response, body)


def _is_json(response: UpstreamResponse) -> bool:
    return (response.headers.get("Content-Type") or "").startswith("application/json")
