"""The ``/v1`` ASGI app: routing, the worker's lifecycle, and ``inference`` — the stage table.

A raw ASGI app (no Django middleware on the hot path), mounted by ``jetstream/asgi.py``. Every
inference request, whatever its fate, leaves exactly one usage event in the Redis stream (the meter
writer turns it into a UsageRecord and ledger transfers).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from typing import Any

from django.conf import settings

from apps.billing.models import UsageStatus
from lib import tokenizer
from lib.resp import Redis, RedisConnectionError, RedisReplyError

from ..dialects.anthropic import ANTHROPIC, parse_messages
from ..dialects.base import Dialect
from ..dialects.openai import OPENAI
from ..dialects.responses import RESPONSES, not_stored
from ..exceptions import ApiError, gateway_error, gateway_unavailable, not_found
from ..snapshot import SnapshotCache
from . import info
from .admission import ClientAddress, DistinctIpCap, authenticate, police, read_body
from .context import Call
from .idempotency import IdempotencyStore
from .moderate import ModerationStage
from .moderation_check import PATHS as MODERATION_PATHS
from .moderation_check import ModerationCheck
from .relay import relay_body, relay_stream
from .responses import Cors, answering, send_error, send_json
from .routing import ProviderHealth, choose
from .spend import SpendCounters, rate_headers
from .upstream import Timeouts, UpstreamClient

logger = logging.getLogger("jetstream.proxy")

# path → (the canonical endpoint, the client's dialect). Anthropic Messages and OpenAI Responses are
# chat requests in the canonical form; only their parsing and rendering differ.
ENDPOINTS: dict[bytes, tuple[str, Dialect]] = {
    b"/v1/chat/completions": ("chat", OPENAI), b"/v1/completions": ("completion", OPENAI),
    b"/v1/embeddings": ("embedding", OPENAI), b"/v1/messages": ("chat", ANTHROPIC), b"/v1/responses": ("chat", RESPONSES),
}
INFERENCE = frozenset(endpoint for endpoint, _ in ENDPOINTS.values())
MODELS = b"/v1/models"
KEY = b"/v1/key"
COUNT_TOKENS = b"/v1/messages/count_tokens"  # Anthropic's free prompt count: answered locally, not metered
STORED_RESPONSES = b"/v1/responses/"  # retrieve / delete / cancel / input_items of a stored response: none are kept
# The methods each kind of path takes (OPTIONS, answered for any known path, aside).
POST_ONLY = ("POST",)
READ_ONLY = ("GET", "HEAD")
# Refusals recorded as "invalid" (the request itself is wrong); other refusals are "rejected".
INVALID_STATUSES = (400, 404, 413, 422)


# A request allocates a few hundred short-lived containers, nearly all freed by reference counting;
# at CPython's default (700, 10, 10) the young generation is collected a couple of times per request
# at load. 20,000 makes that a few times per hundred requests. Measured with alternating A/B bursts on
# this 2-core machine: server CPU per request −5 % (plain) and −13 % (stream) under heavy background
# load, within noise when quiet. Full collections stay rare and short: the long-lived objects are frozen.
GC_THRESHOLDS = (20_000, 20, 10)


class ProxyApp:
    """One per worker process: its Redis connection, snapshots, upstream pool and counters."""

    def __init__(self) -> None:
        conf: dict[str, Any] = settings.JETSTREAM
        self.max_body = conf["MAX_BODY_BYTES"]
        self.client_address = ClientAddress(header=conf["TRUSTED_PROXY_HEADER"], trusted_proxies=conf["TRUSTED_PROXIES"])
        self.redis = Redis(settings.REDIS_URL)
        self.snapshots = SnapshotCache(self.redis)
        self.upstream = UpstreamClient(timeouts=Timeouts.from_settings(conf), health=ProviderHealth(
            down_seconds=conf["PROVIDER_DOWN_SECONDS"], step_seconds=conf["PROVIDER_RAMP_STEP_SECONDS"]))
        self.counters = SpendCounters(self.redis, self.snapshots, reservation_ttl=conf["HOLD_TTL_SECONDS"])
        self.distinct_ips = DistinctIpCap(self.redis)
        self.idempotency = IdempotencyStore(self.redis, self.counters)
        self.cors = Cors(conf["CORS_ALLOWED_ORIGINS"])
        self.moderation_check = ModerationCheck(self.redis, self.snapshots, self.max_body)
        self.moderation = ModerationStage(self.redis)
        self._started = False
        self._starting: asyncio.Lock | None = None

    # ------------------------------------------------------------------ lifecycle
    async def startup(self) -> None:
        """Open the upstream pool, load the snapshots and tokenizer tables (once; concurrent callers wait)."""
        if self._started:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._started:
                return
            await self.upstream.start()
            await self.snapshots.start()  # routes, and the tokenizer tables they need
            # Django's import-time objects live for the whole process: frozen, the collector no
            # longer rescans them, which keeps full collections (and tail latency) short.
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            self._started = True

    async def shutdown(self) -> None:
        """Stop the snapshots' poller, close the upstream pool and the Redis connection (ASGI lifespan shutdown)."""
        await self.snapshots.stop()
        await self.upstream.stop()
        self.moderation.close()
        await self.redis.close()
        self._started = False

    async def lifespan(self, scope, receive, send) -> None:
        """The ASGI lifespan protocol: startup and shutdown of this worker."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # report, do not crash the server silently
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------------ ASGI entry
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(scope, receive, send)
            return
        if not self._started:
            await self.startup()
        path = (scope.get("raw_path") or scope["path"].encode()).split(b"?", 1)[0].rstrip(b"/")
        endpoint, dialect = ENDPOINTS.get(path) or (None, _dialect_of(path))
        call = Call(id=f"req_{uuid.uuid4().hex}", endpoint=endpoint or path.decode("latin-1")[:64], started=time.time(),
                    client_ip=self.client_address(scope), scope=scope, dialect=dialect)
        method = scope["method"]
        origin = self.cors.origin(scope)
        # Every answer from here on, whichever stage sends it, carries the request id, the
        # processing time and (for an allowed origin) CORS headers; a preflight brings its own.
        send = answering(call, send, head=method == "HEAD", extra=None if method == "OPTIONS" else self.cors.headers(origin))
        try:
            await self.dispatch(call, method, path, receive, send)
        except ApiError as error:
            await self.refuse(call, send, error)
        except (RedisConnectionError, RedisReplyError):
            logger.exception("Redis failed during request %s", call.id)
            await send_error(send, call, gateway_unavailable())
        except Exception:
            logger.exception("request %s failed inside the gateway", call.id)
            await self.refuse(call, send, gateway_error())

    async def dispatch(self, call: Call, method: str, path: bytes, receive, send) -> None:
        """Send the call to its endpoint; answer ``OPTIONS`` (CORS preflight included) for any known
        path; ``HEAD`` is ``GET`` without the body. Raises ``ApiError`` 404 for an unknown path, 405
        with ``Allow`` for a method the path does not take."""
        allowed = POST_ONLY if call.endpoint in INFERENCE or path == COUNT_TOKENS or path in MODERATION_PATHS else READ_ONLY if _is_info(path) else None
        if path.startswith(STORED_RESPONSES) and method != "OPTIONS":
            await authenticate(call, self.snapshots)
            raise not_stored("response_id")
        if allowed is None:
            raise ApiError(404, f"Unknown endpoint {method} {path.decode('utf-8', 'replace')}.", code="unknown_endpoint")
        if method == "OPTIONS":
            await self.options(call, send, allowed)
        elif method not in allowed:
            raise ApiError(405, f"Use {' or '.join(allowed)} for {path.decode('utf-8', 'replace')}.", code="method_not_allowed",
                           headers=[(b"allow", ", ".join((*allowed, "OPTIONS")).encode())])
        elif call.endpoint in INFERENCE:
            await self.inference(call, receive, send)
        elif path == COUNT_TOKENS:
            await self.count_tokens(call, receive, send)
        elif path in MODERATION_PATHS:  # /v1/moderation/check, /v1/moderations: scanned, never charged
            await self.moderation_check.handle(call, path, receive, send)
        else:
            await authenticate(call, self.snapshots)
            if path == MODELS:
                await info.list_models(call, send, self.snapshots)
            elif path == KEY:
                await info.key_info(call, send, self.counters)
            else:
                await info.get_model(call, send, self.snapshots, path[len(MODELS) + 1:].decode("utf-8", "replace"))

    async def options(self, call: Call, send, allowed: tuple[str, ...]) -> None:
        """204 with ``Allow``; for a CORS preflight from an allowed origin, the ``Access-Control-*``
        answer too (a browser refuses the real request when they are missing). Needs no token:
        browsers send preflights without credentials."""
        headers = [(b"allow", ", ".join((*allowed, "OPTIONS")).encode()), (b"content-length", b"0"),
                   *self.cors.preflight_headers(call.scope, self.cors.origin(call.scope), allowed)]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    # ------------------------------------------------------------------ the inference pipeline
    async def inference(self, call: Call, receive, send) -> None:
        """authenticate → read + validate → police → [moderate] → route + estimate → idempotency → reserve → call upstream
        → relay → settle + meter (docs/proxy.md has the stage table)."""
        await authenticate(call, self.snapshots)
        call.raw = await read_body(call.scope, receive, self.max_body)
        call.request = call.dialect.parse(call.endpoint, call.raw)
        police(call, self.snapshots)
        await self.distinct_ips.admit(call)
        if call.token.moderation is not None:  # no policy: this check is the stage's whole cost
            try:
                await self.moderation.request(call, call.token.moderation)  # masks call.request, or refuses the call
                await self.route_and_call(call, receive, send)
            finally:
                await self.moderation.finish(call)  # the report, after the answer
            return
        await self.route_and_call(call, receive, send)

    async def route_and_call(self, call: Call, receive, send) -> None:
        """route + estimate → idempotency → reserve → call upstream → relay → settle + meter."""
        choose(call, self.snapshots, self.upstream.health)  # fallbacks, routing strategy, residency; estimate
        call.idempotency_key = call.header(b"idempotency-key")
        if call.idempotency_key is not None and await self.idempotency.replay(call, send):
            return
        try:
            call.reservation = await self.counters.reserve(call)
            call.headers = rate_headers(call)
            await self.call_upstream(call, receive, send)
        finally:
            await self.idempotency.release(call)

    async def count_tokens(self, call: Call, receive, send) -> None:
        """``POST /v1/messages/count_tokens``: the prompt's tokens counted locally with the model's
        tokenizer, ``{"input_tokens": n}``; the token and the model are checked as for a request, nothing
        is reserved or recorded."""
        token = await authenticate(call, self.snapshots)
        call.raw = await read_body(call.scope, receive, self.max_body)
        call.request = parse_messages(call.raw, count_only=True)
        route = self.snapshots.route(call.request.model)
        if route is None or not token.may_use(call.request.model):
            raise not_found(f"The model '{call.request.model}' does not exist or you do not have access to it.")
        encoding = tokenizer.encoding_for_model(route.upstream_model)
        await send_json(send, call, 200, {"input_tokens": tokenizer.count_chat_request(call.request.body, encoding=encoding)})

    async def call_upstream(self, call: Call, receive, send) -> None:
        """Route + call the upstream, relay, settle + meter: the part of a call that holds money.
        Whatever breaks (a bug, cancellation), the reservation is settled and the call recorded."""
        try:
            if call.request.stream:  # the relay opens a stream itself: it keeps the client alive meanwhile
                await relay_stream(call, self.upstream, receive, send, counters=self.counters, idempotency=self.idempotency)
                return
            try:
                opened = await self.upstream.open(call)
            except ApiError as error:
                await self.counters.settle(call, status=UsageStatus.UPSTREAM_ERROR, http=error.status, error=error)
                await send_error(send, call, error)
                return
            await relay_body(call, opened, send, counters=self.counters, idempotency=self.idempotency)
        except BaseException as exc:
            if isinstance(exc, Exception):
                logger.exception("request %s failed inside the gateway", call.id)
            if not call.settled:
                await asyncio.shield(self._settle_failure(call))
            raise

    async def _settle_failure(self, call: Call) -> None:
        try:
            await self.counters.settle(call, status=UsageStatus.FAILED, http=500,
                                       error=ApiError(500, "", type="api_error", code="gateway_error"))
        except Exception:
            logger.exception("could not settle request %s; the sweeper will release its reservation", call.id)

    async def refuse(self, call: Call, send, error: ApiError) -> None:
        """A call refused before any money moved: record it (inference only), then answer."""
        if call.endpoint in INFERENCE:
            status = UsageStatus.INVALID if error.status in INVALID_STATUSES else UsageStatus.REJECTED
            if error.type == "moderation_blocked":  # the request is well formed; the policy refused it
                status = UsageStatus.REJECTED
            if error.code == "client_closed":
                status = UsageStatus.CLIENT_CLOSED
            try:
                await self.counters.record(call, status=status, http=error.status, error=error)
            except (RedisConnectionError, RedisReplyError):
                logger.error("could not record refused request %s (Redis unavailable)", call.id)
        await send_error(send, call, error)


def _is_info(path: bytes) -> bool:
    return path == MODELS or path == KEY or path.startswith(MODELS + b"/")


def _dialect_of(path: bytes) -> Dialect:
    """The dialect a path that is not an inference endpoint answers in (its errors' shape)."""
    return ANTHROPIC if path.startswith(b"/v1/messages") else OPENAI
