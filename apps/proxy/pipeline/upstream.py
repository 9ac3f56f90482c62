"""Route + upstream call: the provider's adapter, supplier keys in order, failover.

Failover happens only before the first byte reaches the client: when the adapter says a failure
is about the key or the moment (connection error, a timeout before the first byte, 401/403, 402,
429, 5xx), the failure is reported to the keys' shared health (``apps/proxy/health.py``: the key
is disabled, parked, cooled down or counted towards its circuit breaker, in every process) and
the next key is tried, up to ``MAX_ATTEMPTS``; a failure about the request itself (another 4xx)
is answered at once. Every try is listed in the usage record (``Call.attempts``).

Time limits (``Timeouts``, seconds, from ``JETSTREAM``): *connect* (TCP, TLS, egress proxy);
*first byte* — for a stream, until the response headers and the first body bytes; *idle* — between
two reads of a stream (the relay enforces it); *total* — a non-streamed answer, headers and whole
body. A stream has no total limit: a healthy answer may run as long as its upstream keeps talking.
A non-streamed answer has no first-byte limit of its own: many upstreams send their headers only
with the finished answer, so the total limit bounds it. Every timeout is a 504 ``upstream_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver

from apps.providers.adapters import adapter_for
from apps.providers.adapters.base import (
    Adapter,
    Credential,
    UpstreamFailure,
    UpstreamResponse,
    broken,
    timed_out,
    unreachable,
)
from lib.ssrf import GuardedResolver, SocketFactory, guarded_socket

from ..egress import EgressPools, EgressRoute
from ..exceptions import ApiError
from ..health import KeyBalancer
from ..nodes import LeasedResponse, NodeBalancer, NodeRoute
from ..snapshot import KeyRoute, ModelRoute
from .context import Call
from .routing import ProviderHealth

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


@dataclass(slots=True, frozen=True)
class Timeouts:
    """The upstream call's time limits and the stream relay's intervals, in seconds.

    ``connect``, ``first_byte``, ``idle``, ``total``: see the module docstring. ``keepalive``: after
    this much silence towards a streaming client (once an upstream accepted the call) the relay
    sends an SSE comment; 0 = never. ``client_gone_drain``: how long the relay keeps reading a stream
    whose client left, for the upstream's usage; then it closes the upstream connection."""

    connect: float
    first_byte: float
    idle: float
    total: float
    keepalive: float = 0
    client_gone_drain: float = 0

    @classmethod
    def from_settings(cls, conf: Mapping[str, Any]) -> Timeouts:
        """From ``settings.JETSTREAM``: ``UPSTREAM_CONNECT_TIMEOUT_SECONDS``, ``UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS``,
        ``UPSTREAM_IDLE_TIMEOUT_SECONDS``, ``UPSTREAM_TIMEOUT_SECONDS`` (the total of a non-streamed answer),
        ``SSE_KEEPALIVE_SECONDS`` and ``CLIENT_GONE_DRAIN_SECONDS``."""
        return cls(connect=conf["UPSTREAM_CONNECT_TIMEOUT_SECONDS"], first_byte=conf["UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS"],
                   idle=conf["UPSTREAM_IDLE_TIMEOUT_SECONDS"], total=conf["UPSTREAM_TIMEOUT_SECONDS"],
                   keepalive=conf["SSE_KEEPALIVE_SECONDS"], client_gone_drain=conf["CLIENT_GONE_DRAIN_SECONDS"])


@dataclass(slots=True)
class Opened:
    """A started 2xx upstream answer: its adapter and the response; for a non-streamed call its whole
    ``body``; for a stream its ``first`` body bytes (b"" if it ended at once) and the ``chunks`` after them."""

    adapter: Adapter
    response: UpstreamResponse
    body: bytes | None = None
    first: bytes = b""
    chunks: AsyncIterator[bytes] | None = None


def provider_secrets(route: ModelRoute) -> tuple[str, ...]:
    """Every supplier key and local node key of the route's provider (plain text): what the adapter
    scrubs from upstream error text."""
    return tuple(key.secret for key in route.keys) + tuple(node.secret for node in route.nodes if node.secret)


def _is_json(response: UpstreamResponse) -> bool:
    return (response.headers.get("Content-Type") or "").startswith("application/json")


def _first_event_failure(adapter: Adapter, call: Call, first: bytes) -> UpstreamFailure | None:
    """The failure a stream's first bytes stand for when they are an error event and nothing else: the
    upstream failed before anything reached the client, so the next key may be tried (issue 8, item 3).
    A probe decoder reads them; the relay decodes them again with its own. Bytes whose first event is
    a JSON ``data:`` object and that mention no error (the healthy stream: often the whole answer
    in one read) are not probed, so they are decoded once."""
    if b"error" not in first:
        at = first.find(b"data:")
        if at >= 0 and first[at + 5:at + 64].lstrip()[:1] == b"{":
            return None
    probe = adapter.stream_decoder(call.request)
    probe.feed(first)
    if probe.error is None or probe.produced():
        return None
    return adapter.in_band_error(probe.error, provider_secrets(call.route))


async def _no_more_chunks() -> AsyncIterator[bytes]:
    return
    yield  # an async generator with nothing in it


def _cool_down(key: KeyRoute, seconds: float) -> None:
    key.cooldown_until = max(key.cooldown_until, time.monotonic() + seconds)


class RouteExhausted(ApiError):
    """A model could not answer for reasons of its own (no adapter, no key, every key failed over):
    the call's next fallback may."""


def _attempt_record(key: KeyRoute, status: int, code: str, started: float) -> dict[str, Any]:
    """One entry of ``Call.attempts``: the key's id, the gateway's status for the try (200 when it
    answered), its error code ("" for none) and the milliseconds it took (to the first bytes)."""
    return {"key": key.id, "status": status, "code": code, "ms": int((time.monotonic() - started) * 1000)}


async def _key_failed(balancer: KeyBalancer, key: KeyRoute, failure: UpstreamFailure) -> None:
    """Report ``failure`` to the keys' shared health, and rest the key in this worker for the
    adapter's cooldown: the next calls here try it last (``KeyBalancer.order``), and a refused or
    rate-limited key stays out of this worker even while Redis is unreachable."""
    if failure.cooldown and failure.failover:
        _cool_down(key, failure.cooldown)
    await balancer.failed(key, failure)


def _no_usable_key(balancer: KeyBalancer, route: ModelRoute) -> ApiError:
    wait = balancer.retry_in(route.keys)
    headers = [(b"retry-after", str(max(1, math.ceil(wait))).encode())] if wait is not None else None
    return RouteExhausted(503, "No upstream key is available for this model right now.", type="api_error",
                          code="no_upstream_key", headers=headers)


def _node_attempt(node: NodeRoute, status: int, code: str, started: float) -> dict[str, Any]:
    """One entry of ``Call.attempts`` for a local node's try: as ``_attempt_record``, ``key`` None and ``node`` its id."""
    return {"key": None, "node": node.id, "status": status, "code": code, "ms": int((time.monotonic() - started) * 1000)}


def _no_usable_node(balancer: NodeBalancer, route: ModelRoute) -> ApiError:
    wait = balancer.retry_in(route.nodes)
    headers = [(b"retry-after", str(max(1, math.ceil(wait))).encode())] if wait is not None else None
    return RouteExhausted(503, "No local node is available for this model right now.", type="api_error",
                          code="no_upstream_node", headers=headers)


class UpstreamClient:
    """The worker's pooled upstream connections (aiohttp) and the call with failover (keys, then
    fallback models). ``health`` tracks providers' outages and models' latency (``pipeline.routing``)."""

    def __init__(self, *, timeouts: Timeouts, resolver: AbstractResolver | None = None,
                 health: ProviderHealth | None = None) -> None:
        self.timeouts = timeouts
        self.health = health or ProviderHealth()
        # aiohttp enforces only the connect limit; the first-byte, idle and total limits depend on
        # whether the call streams, so ``_attempt`` and the relay apply them per call.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeouts.connect, sock_connect=timeouts.connect)
        self._session: aiohttp.ClientSession | None = None
        self._internal_session: aiohttp.ClientSession | None = None
        self._guard: GuardedResolver | None = None
        self._resolver = resolver  # the names' source of truth under the guard; aiohttp's default if None
        self._egress: EgressPools | None = None  # one pooled session per egress proxy (``proxy.egress``)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session whose every connection is checked against SSRF (after ``start``)."""
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() has not run")
        return self._session

    def session_for(self, route: ModelRoute) -> aiohttp.ClientSession:
        """The session for ``route``'s direct connections (no egress proxy): unguarded only when the
        provider is marked internal. Calls through egress proxies use ``egress``'s sessions."""
        if route.connects_internally:
            if self._internal_session is None:
                raise RuntimeError("UpstreamClient.start() has not run")
            return self._internal_session
        return self.session

    @property
    def egress(self) -> EgressPools:
        """The sessions per egress proxy and this worker's view of their failures (after ``start``)."""
        if self._egress is None:
            raise RuntimeError("UpstreamClient.start() has not run")
        return self._egress

    async def start(self) -> None:
        """Open the pooled aiohttp sessions: no connection caps, DNS cached 300 s, keep-alive 60 s, the
        connect timeout ``timeouts.connect``, proxies from the environment ignored. One session checks
        every address it connects to (``lib.ssrf``), one is for internal peers."""
        self._guard = GuardedResolver(self._resolver)
        self._session = self._new_session(resolver=self._guard, socket_factory=guarded_socket)
        self._internal_session = self._new_session(resolver=self._resolver)
        self._egress = EgressPools(timeout=self._timeout, guard=self._guard, resolver=self._resolver)

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
        if self._egress is not None:
            await self._egress.close()
        if self._guard is not None:  # a connector closes only the resolver it made itself
            await self._guard.close()

    async def open(self, call: Call, *, on_accepted: Callable[[], None] | None = None) -> Opened:
        """Start the call's upstream answer: the call's route, then its fallbacks (``call.fallbacks``,
        see ``pipeline.routing``) while a model fails in a way the next one may not. Sets ``call.route``
        (with its estimate) to the model that answered and ``call.key`` to the key that served it, and
        adds ``x-jetstream-provider`` / ``x-jetstream-model`` to ``call.headers``. For a stream, up to
        its first body bytes; ``on_accepted`` is called when an upstream answered 2xx headers (the
        relay may then keep the client's connection alive). Raises ``ApiError``: 501 (no adapter for
        the kind), 503 (no key), or the last failure (504 ``upstream_timeout`` for a timeout)."""
        if not call.fallbacks:
            return await self._open_model(call, on_accepted)
        fallbacks, exhausted = list(call.fallbacks), None
        while True:
            try:
                return await self._open_model(call, on_accepted)
            except RouteExhausted as exc:
                if not fallbacks:
                    raise
                exhausted = exc
            logger.info("request %s: model %s failed (%s); trying %s", call.id, call.route.name, exhausted.code,
                        fallbacks[0].route.name)
            call.use(fallbacks.pop(0))

    async def _open_model(self, call: Call, on_accepted: Callable[[], None] | None) -> Opened:
        started, route = time.monotonic(), call.route
        named = False

        def name_server() -> None:  # before a keep-alive may start the client's response
            nonlocal named
            if not named:
                named = True
                call.headers.extend(((b"x-jetstream-provider", route.provider_slug.encode()),
                                     (b"x-jetstream-model", route.name.encode())))

        def accepted() -> None:
            name_server()
            if on_accepted is not None:
                on_accepted()

        try:
            opened = await self._open_route(call, accepted)
        except RouteExhausted:
            self.health.failed(route.provider_id)
            raise
        self.health.answered(route, time.monotonic() - started)
        name_server()
        return opened

    async def _open_route(self, call: Call, on_accepted: Callable[[], None] | None) -> Opened:
        """The call's route, its keys in the balancer's order (``ModelRoute.pick_keys``) with failover;
        ``call.key`` is the key being tried (None when every key failed). Each try is appended to
        ``call.attempts`` and its outcome reported to the keys' shared health (``health.KeyBalancer``).
        Raises ``RouteExhausted`` when another model may still answer (no adapter; no usable key —
        with ``Retry-After`` when one is only resting; every key failed), ``ApiError`` when not."""
        route = call.route
        if call.max_output_tokens:  # the output reserved for (this model's estimate), per choice
            call.request.output_cap = max(1, call.max_output_tokens // max(call.request.n, 1))
        adapter = adapter_for(route.provider_kind)
        if adapter is None:
            raise RouteExhausted(501, f"Provider kind '{route.provider_kind}' has no adapter yet.", type="api_error",
                                 code="provider_not_supported")
        if route.nodes:
            return await self._open_nodes(adapter, call, on_accepted)
        if not adapter.needs_key:
            return await self._attempt(adapter, call, None, on_accepted)
        keys = route.pick_keys()
        balancer = route.balancer
        assert balancer is not None, "pick_keys sets the route's balancer"
        failure: UpstreamFailure | None = None
        tried = 0
        for key in keys:
            if tried == MAX_ATTEMPTS:
                break
            if balancer.is_probe(key, time.time()) and not await balancer.admit_probe(key):
                continue  # another request is probing this half-open key
            tried += 1
            started = time.monotonic()
            # Set before the attempt: a client that leaves while it runs is billed the prompt the
            # upstream received, and the supplier of this key is owed it (docs/billing.md).
            call.key = key
            try:
                opened = await self._attempt(adapter, call, key, on_accepted)
            except UpstreamFailure as exc:
                call.key = None
                call.attempts.append(_attempt_record(key, exc.status, exc.code, started))
                await _key_failed(balancer, key, exc)
                if not exc.failover:
                    raise ApiError.from_upstream(exc) from None
                failure = exc
                continue
            call.attempts.append(_attempt_record(key, 200, "", started))
            await balancer.succeeded(key)
            return opened
        if failure is None:
            raise _no_usable_key(balancer, route)
        raise RouteExhausted.from_upstream(failure)

    async def _open_nodes(self, adapter: Adapter, call: Call, on_accepted: Callable[[], None] | None) -> Opened:
        """The call's route served by its provider's local nodes (``apps/proxy/nodes.py``): least
        outstanding first, up to ``MAX_ATTEMPTS`` nodes with failover before the first byte; a
        failed node rests in this worker. ``call.node`` is the node being tried; it counts as
        outstanding until its answer is read (a stream's until the relay releases the response).
        Raises ``RouteExhausted`` (no usable node — with ``Retry-After`` when one is only resting —;
        every node failed) or ``ApiError`` for a failure about the request."""
        route = call.route
        balancer = route.node_balancer
        if balancer is None:
            balancer = route.node_balancer = NodeBalancer()  # a route built by hand: this call's counters
        failure: UpstreamFailure | None = None
        for node in balancer.order(route.nodes)[:MAX_ATTEMPTS]:
            started = time.monotonic()
            call.node = node  # before the attempt: a client that leaves meanwhile is billed as for a key
            lease = balancer.acquire(node)
            try:
                opened = await self._attempt(adapter, call, None, on_accepted)
            except UpstreamFailure as exc:
                lease.release()
                call.node = None
                call.attempts.append(_node_attempt(node, exc.status, exc.code, started))
                balancer.failed(node, exc)
                if not exc.failover:
                    raise ApiError.from_upstream(exc) from None
                failure = exc
                continue
            except BaseException:
                lease.release()
                raise
            call.attempts.append(_node_attempt(node, 200, "", started))
            balancer.succeeded(node)
            if opened.body is not None:
                lease.release()  # a whole answer is read already
            else:
                opened.response = LeasedResponse(opened.response, lease)
            return opened
        if failure is None:
            raise _no_usable_node(balancer, route)
        raise RouteExhausted.from_upstream(failure)

    def _node_session(self, node: NodeRoute) -> aiohttp.ClientSession:
        """The unguarded session for an ``internal`` node, else the SSRF-checked one."""
        if node.internal:
            if self._internal_session is None:
                raise RuntimeError("UpstreamClient.start() has not run")
            return self._internal_session
        return self.session

    async def _attempt(self, adapter: Adapter, call: Call, key: KeyRoute | None,
                       on_accepted: Callable[[], None] | None) -> Opened:
        # One deadline per attempt: for a stream the first-byte limit (headers and first body bytes),
        # otherwise the total limit (headers and the whole body). Either fires before anything
        # reached the client, so the failure may fail over to the next key.
        stream = call.request.stream
        limit = self.timeouts.first_byte if stream else self.timeouts.total
        response: UpstreamResponse | None = None
        try:
            async with asyncio.timeout(limit):
                response = await self._send(adapter, call, key)
                if not stream or _is_json(response):
                    body = await response.read()
                    response.release()
                    # An upstream that answers 2xx with an error object failed like one that said so in
                    # its status (a stream request answered with JSON too: nothing reached the client yet).
                    failure = adapter.body_failure(body, provider_secrets(call.route))
                    if failure is not None:
                        raise failure
                    if stream:  # one JSON answer where a stream belonged: the adapter's decoder makes it a stream
                        return Opened(adapter, response, first=body, chunks=_no_more_chunks())
                    return Opened(adapter, response, body)
                if on_accepted is not None:
                    on_accepted()
                chunks = aiter(response.chunks())
                first = await anext(chunks, b"")
                failure = _first_event_failure(adapter, call, first)
                if failure is not None:
                    raise failure
                return Opened(adapter, response, first=first, chunks=chunks)
        except TimeoutError:
            if response is not None:
                response.release()  # unread: the connection is closed, not pooled
            raise timed_out("first byte" if stream else "total") from None
        except (aiohttp.ClientError, OSError) as exc:  # the stream broke before its first bytes
            if response is not None:
                response.release()
            raise broken() from exc
        except BaseException:
            if response is not None:
                response.release()
            raise

    async def _send(self, adapter: Adapter, call: Call, key: KeyRoute | None) -> UpstreamResponse:
        """The upstream's 2xx response (headers read); a non-2xx answer is read and raised as the
        adapter's ``UpstreamFailure``."""
        route, node = call.route, call.node
        if node is not None:  # a local node: its own URL and key, no egress proxy (docs/providers.md, "Local nodes")
            response = await adapter.open(self._node_session(node), call.request,
                                          node.target(route.upstream_model, route.provider_options), node.credential, proxy=None)
        elif route.egresses or route.egress_only:
            credential = Credential(key.id, key.secret) if key is not None else None
            response = await self._open_through_egress(adapter, call, credential)
        else:
            credential = Credential(key.id, key.secret) if key is not None else None
            response = await adapter.open(self.session_for(route), call.request, route.target, credential, proxy=None)
        if response.status >= 300:
            try:
                error_body = await response.read()
            finally:
                response.release()
            raise adapter.map_error(response.status, error_body, response.headers, provider_secrets(route))
        return response

    async def _open_through_egress(self, adapter: Adapter, call: Call, credential: Credential | None) -> UpstreamResponse:
        """``adapter.open`` through the route's egress proxies in ``EgressPools.order``: a connection
        that fails through one (``upstream_unreachable``, a connect timeout) is tried through the
        next with the same key, and that proxy rests in this worker. Raises the last such failure
        when every proxy failed (``unreachable`` when none is active), any other ``UpstreamFailure``
        at once."""
        route = call.route
        failure: UpstreamFailure | None = None
        for egress in self.egress.order(route.egresses):
            try:
                response = await adapter.open(self._egress_session(egress, route), call.request, route.target, credential,
                                              proxy=egress.proxy)
            except UpstreamFailure as exc:
                if exc.code not in _CONNECTION_FAILURES:
                    raise
                self.egress.failed(egress, route.provider_slug)
                failure = exc
                continue
            self.egress.succeeded(egress)
            return response
        if failure is None:  # every egress proxy of the provider is inactive: never leave directly instead
            logger.error("provider %s: none of its egress proxies is active", route.provider_slug)
            raise unreachable()
        raise failure

    def _egress_session(self, egress: EgressRoute, route: ModelRoute) -> aiohttp.ClientSession:
        try:
            return self.egress.session(egress)
        except ValueError:  # a scheme stored before the client spoke it (socks4): about the proxy, not the key
            logger.error("provider %s: egress proxy %s uses a proxy scheme the upstream client does not speak",
                         route.provider_slug, egress.slug)
            raise unreachable() from None


# What ``adapter.open`` raises when no connection could be made (``Adapter.send``): through an egress
# proxy, the next one may get through.
_CONNECTION_FAILURES = frozenset({"upstream_unreachable", "upstream_timeout"})
