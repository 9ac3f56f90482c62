"""The /v1 proxy: a raw ASGI app (no Django middleware), one short pipeline per request.

    authenticate → read + validate → police → (idempotency) → reserve → call → settle + meter

Every inference request, whatever its fate, leaves exactly one usage event in the Redis stream
(the meter writer turns it into a UsageRecord and ledger transfers). Money is reserved before
the upstream call and settled from the upstream's usage (or locally counted tokens) after it;
settle and the usage event are one atomic Redis step that completes before the response ends.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import ipaddress
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from django.conf import settings

from apps.billing.usage import UsageEvent
from apps.providers.adapters import openai as wire
from lib import tokens
from lib.money import cost_from_units
from lib.resp import Redis, RedisConnectionError, RedisReplyError

from . import redis_scripts
from .errors import ApiError, bad_request, forbidden, not_found, unauthorized
from .models import TokenStatus, hash_token
from .snapshot import ModelRoute, SnapshotCache, TokenSnapshot, window_ids
from .upstream import Upstream, UpstreamClient
from .validation import CHECKERS, Checked

logger = logging.getLogger("jetstream.proxy")

ENDPOINTS = {b"/v1/chat/completions": "chat", b"/v1/completions": "completion", b"/v1/embeddings": "embedding"}
MODALITY_FOR = {"chat": ("chat",), "completion": ("completion", "chat"), "embedding": ("embedding",)}
JSON = (b"content-type", b"application/json")
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
IDEMPOTENCY_TTL = 24 * 3600
LIMIT_ERRORS = {
    "balance": (402, "insufficient_balance", "The company balance does not cover this request (reserved {amount} RUB, available {limit} RUB)."),
    "total": (429, "limit_total", "The token's total spend limit ({limit} RUB) is reached."),
    "weekly": (429, "limit_weekly", "The token's weekly spend limit ({limit} RUB) is reached."),
    "monthly": (429, "limit_monthly", "The token's monthly spend limit ({limit} RUB) is reached."),
    "department": (429, "limit_department", "The department's monthly budget ({limit} RUB) is reached."),
}


def rub(micro: int) -> str:
    sign = "-" if micro < 0 else ""
    micro = abs(micro)
    return f"{sign}{micro // 1_000_000}.{micro % 1_000_000:06d}"


@dataclass(slots=True)
class Request:
    """What one request accumulates on its way through the pipeline (and into its usage event)."""

    id: str
    endpoint: str
    started: float
    client_ip: str | None
    token: TokenSnapshot | None = None
    route: ModelRoute | None = None
    model_name: str = ""
    stream: bool = False
    key_id: int | None = None
    supplier_id: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    counted_locally: bool = False
    sell: int = 0
    buy: int = 0
    ttft_ms: int | None = None
    settled: bool = False
    idempotency_stored: bool = False
    headers: list = field(default_factory=list)

    def event(self, *, status: str, http: int, error: ApiError | None = None) -> bytes:
        token, route = self.token, self.route
        now = time.time()
        return UsageEvent(
            request_id=self.id, endpoint=self.endpoint, status=status, http_status=http, started_at=self.started,
            finished_at=now, token_id=token.id if token else None, company_id=token.company_id if token else None,
            department_id=token.department_id if token else None, model_name=self.model_name[:128],
            model_id=route.id if route else None, provider_id=route.provider_id if route else None,
            supplier_key_id=self.key_id, supplier_id=self.supplier_id, price_id=route.price_id if route else None,
            fx_rub_per_unit=route.fx_micro if route else None, stream=self.stream, input_tokens=self.input_tokens,
            output_tokens=self.output_tokens, cached_tokens=self.cached_tokens, usage_counted_locally=self.counted_locally,
            sell_cost=self.sell, buy_cost=self.buy, error_type=error.type if error else "",
            error_code=(error.code or "") if error else "", latency_ms=int((now - self.started) * 1000),
            ttft_ms=self.ttft_ms, client_ip=self.client_ip,
        ).encode()


@dataclass(slots=True)
class Reservation:
    amount: int
    keys: redis_scripts.SpendKeys
    tpm_estimate: int
    tpm_key: str
    member: bytes
    rpm_left: int
    tpm_left: int


class ProxyApp:
    def __init__(self) -> None:
        conf = settings.JETSTREAM
        self.max_body = conf["MAX_BODY_BYTES"]
        self.hold_ttl = conf["HOLD_TTL_SECONDS"]
        self.trusted_header = conf["TRUSTED_PROXY_HEADER"].lower().encode()
        self.trusted_proxies = [ipaddress.ip_network(n, strict=False) for n in conf["TRUSTED_PROXIES"]]
        self.redis = Redis(settings.REDIS_URL)
        self.snapshots = SnapshotCache(self.redis)
        self.upstream = UpstreamClient(timeout_seconds=conf["UPSTREAM_TIMEOUT_SECONDS"])
        self._started = False
        self._starting: asyncio.Lock | None = None
        self._ips_seen: dict[tuple[int, str], set[str]] = {}
        self._scripts = {name: self.redis.register_script(src) for name, src in
                         (("reserve", redis_scripts.RESERVE), ("settle", redis_scripts.SETTLE), ("init", redis_scripts.INIT))}
        self._ip_script = self.redis.register_script(_DISTINCT_IP)

    # ------------------------------------------------------------------ lifecycle
    async def startup(self) -> None:
        if self._started:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._started:
                return
            await self.upstream.start()
            await self.snapshots.start()
            tokens.preload([tokens.O200K])  # the common tables now, not on a request (cl100k loads on first use)
            # Django's import-time objects live for the whole process: frozen, the collector no
            # longer rescans them, which keeps full collections (and tail latency) short.
            gc.collect()
            gc.freeze()
            self._started = True

    async def shutdown(self) -> None:
        await self.snapshots.stop()
        await self.upstream.stop()
        await self.redis.close()
        self._started = False

    async def lifespan(self, scope, receive, send) -> None:
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
        path = scope.get("raw_path") or scope["path"].encode()
        path = path.split(b"?", 1)[0].rstrip(b"/")
        method = scope["method"]
        endpoint = ENDPOINTS.get(path)
        request = Request(id=f"req_{uuid.uuid4().hex}", endpoint=endpoint or path.decode("latin-1")[:64],
                          started=time.time(), client_ip=self._client_ip(scope))
        try:
            if endpoint is not None:
                if method != "POST":
                    raise ApiError(405, f"Use POST for {path.decode()}.", code="method_not_allowed")
                await self.inference(scope, receive, send, request, endpoint)
            elif path == b"/v1/models" and method == "GET":
                await self.list_models(scope, send, request)
            elif path.startswith(b"/v1/models/") and method == "GET":
                await self.get_model(scope, send, request, path[len(b"/v1/models/"):].decode("utf-8", "replace"))
            elif path == b"/v1/key" and method == "GET":
                await self.key_info(scope, send, request)
            else:
                raise ApiError(404, f"Unknown endpoint {method} {path.decode('utf-8', 'replace')}.", code="unknown_endpoint")
        except ApiError as error:
            await self._respond_error(send, request, error)
        except (RedisConnectionError, RedisReplyError):
            logger.exception("Redis failed during request %s", request.id)
            await self._send_error(send, request, ApiError(503, "The gateway is temporarily unavailable.",
                                                             type="api_error", code="gateway_unavailable"))
        except Exception:
            logger.exception("request %s failed inside the gateway", request.id)
            await self._respond_error(send, request, ApiError(500, "The gateway failed to process the request.",
                                                                type="api_error", code="gateway_error"))

    # ------------------------------------------------------------------ stage: authenticate
    def _bearer(self, scope) -> str | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credential = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and credential.strip():
                    return credential.strip()
            elif name == b"x-api-key" and value:
                return value.decode("latin-1").strip()
        return None

    async def authenticate(self, scope, request: Request) -> TokenSnapshot:
        secret = self._bearer(scope)
        if not secret or not secret.startswith("js-") or len(secret) > 256:
            raise unauthorized()
        token = await self.snapshots.token(hash_token(secret))
        if token is None:
            raise unauthorized()
        request.token = token
        if token.status == TokenStatus.REVOKED:
            raise ApiError(401, "This API token was revoked.", type="authentication_error", code="token_revoked")
        if token.status == TokenStatus.BLOCKED:
            reason = f" Reason: {token.status_reason}" if token.status_reason else ""
            raise forbidden(f"This API token is blocked.{reason}", code="token_blocked")
        if token.expires_at is not None and token.expires_at <= time.time():
            raise ApiError(401, "This API token has expired.", type="authentication_error", code="token_expired")
        if not token.company_active:
            raise forbidden("The company of this token is suspended.", code="company_suspended")
        return token

    # ------------------------------------------------------------------ stage: read + validate
    async def read_body(self, scope, receive) -> bytes:
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                raise ApiError(413, f"The request body exceeds {self.max_body} bytes.", code="request_too_large")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError(499, "The client closed the request.", code="client_closed")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise ApiError(413, f"The request body exceeds {self.max_body} bytes.", code="request_too_large")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    def parse(raw: bytes) -> dict:
        if not raw:
            raise bad_request("The request body is empty; send a JSON object.", code="invalid_json")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"The request body is not valid JSON: {exc.msg} (at character {exc.pos}).", code="invalid_json") from None
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.", code="invalid_json")
        return body

    # ------------------------------------------------------------------ stage: police
    def _client_ip(self, scope) -> str | None:
        peer = scope.get("client")
        address = peer[0] if peer else None
        if not self.trusted_header or address is None:
            return address
        try:
            if not any(ipaddress.ip_address(address) in net for net in self.trusted_proxies):
                return address
        except ValueError:
            return address
        for name, value in scope["headers"]:
            if name == self.trusted_header:
                # The right-most address a trusted proxy did not add is the client.
                for hop in reversed([h.strip() for h in value.decode("latin-1").split(",") if h.strip()]):
                    try:
                        ip = ipaddress.ip_address(hop)
                    except ValueError:
                        break
                    if not any(ip in net for net in self.trusted_proxies):
                        return str(ip)
        return address

    def police(self, token: TokenSnapshot, checked: Checked, request: Request, endpoint: str) -> ModelRoute:
        if token.ip_networks:
            try:
                ip = ipaddress.ip_address(request.client_ip or "")
            except ValueError:
                ip = None
            if ip is None or not any(ip in net for net in token.ip_networks):
                raise forbidden(f"Requests from {request.client_ip} are not allowed for this token.", code="ip_not_allowed")
        route = self.snapshots.route(checked.model)
        if route is None:
            raise not_found(f"The model '{checked.model}' does not exist or you do not have access to it.")
        if not token.may_use(checked.model):
            raise forbidden(f"This token may not use the model '{checked.model}'.", code="model_not_allowed")
        if route.modality not in MODALITY_FOR[endpoint]:
            raise ApiError(422, f"The model '{checked.model}' is a {route.modality} model and cannot serve this endpoint.",
                             param="model", code="unsupported_model_for_endpoint")
        if not route.priced:
            raise ApiError(503, f"The model '{checked.model}' has no price or exchange rate configured.", type="api_error",
                             code="model_not_priced")
        return route

    async def police_distinct_ips(self, token: TokenSnapshot, request: Request) -> None:
        if not token.max_distinct_ips or request.client_ip is None:
            return
        day = datetime.now(token.time_zone).strftime("%Y-%m-%d")
        seen = self._ips_seen.setdefault((token.id, day), set())
        if request.client_ip in seen:
            return
        admitted = await self.redis.evalsha(self._ip_script, [f"js:ip:{token.id}:{day}"],
                                            [request.client_ip, token.max_distinct_ips])
        if not admitted:
            raise forbidden(f"This token has reached its limit of {token.max_distinct_ips} distinct client IPs today.",
                            code="too_many_client_ips")
        seen.add(request.client_ip)
        if len(self._ips_seen) > 50_000:
            self._ips_seen.clear()

    # ------------------------------------------------------------------ stage: reserve
    def estimate(self, body: dict, checked: Checked, route: ModelRoute, endpoint: str) -> tuple[int, int]:
        """(input tokens, maximum output tokens over all choices) for the reservation."""
        if endpoint == "chat":
            input_tokens = tokens.count_chat_request(body, encoding=tokens.encoding_for_model(route.upstream_model))
        elif endpoint == "completion":
            input_tokens = tokens.count_prompt_input(body["prompt"])
        else:
            return tokens.count_embedding_input(body["input"]), 0
        room = max(0, route.context_window - input_tokens)
        if checked.max_tokens is not None:
            if checked.max_tokens > route.max_output_tokens:
                param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
                raise bad_request(f"'{param}' is {checked.max_tokens}, above this model's limit of {route.max_output_tokens}.",
                                  param=param, code="max_tokens_too_large")
            max_out = checked.max_tokens
        else:
            max_out = min(route.max_output_tokens, room)
        if input_tokens + (checked.max_tokens or 0) > route.context_window or room == 0:
            raise bad_request(f"This request needs {input_tokens} input tokens and up to {checked.max_tokens or 0} output tokens; "
                              f"the model's context window is {route.context_window}.", param="messages",
                              code="context_length_exceeded")
        return input_tokens, max_out * checked.n

    def price(self, route: ModelRoute, input_tokens: int, output_tokens: int, cached_tokens: int, coef_units: int) -> int:
        units = ((input_tokens - cached_tokens) * route.price_input + cached_tokens * route.price_cached
                 + output_tokens * route.price_output)
        return cost_from_units(units, route.fx_micro, coef_units)

    async def reserve(self, request: Request, token: TokenSnapshot, route: ModelRoute, input_tokens: int, max_output: int) -> Reservation:
        amount = self.price(route, input_tokens, max_output, 0, token.sell_coef_units)
        now = time.time()
        week, month, _, _ = window_ids(token.time_zone, now)
        keys = redis_scripts.SpendKeys(redis_scripts.company_key(token.company_id), redis_scripts.total_key(token.id), redis_scripts.week_key(token.id, week),
                                redis_scripts.month_key(token.id, month), redis_scripts.dept_key(token.department_id, month),
                                token.department_id is not None)
        rpm_cur, rpm_prev, tpm_cur, tpm_prev, frac = redis_scripts.rate_keys(token.id, now)
        failure = request.event(status="failed", http=500, error=ApiError(500, "", type="api_error", code="gateway_lost"))
        member = redis_scripts.reservation_member(request_id=request.id, keys=keys, amount=amount, failure_event=failure)
        tpm_estimate = input_tokens + max_output
        args = [amount, _opt(token.limit_total), _opt(token.limit_weekly), _opt(token.limit_monthly),
                _opt(token.department_budget), _opt(token.rpm), _opt(token.tpm), tpm_estimate, frac,
                int(now + self.hold_ttl), member, redis_scripts.WINDOW_TTL, 1 if keys.has_dept else 0]
        redis_keys = [*keys.as_list(), rpm_cur, rpm_prev, tpm_cur, tpm_prev, redis_scripts.RESERVATIONS_KEY]
        for _attempt in range(3):
            result = await self.redis.evalsha(self._scripts["reserve"], redis_keys, args)
            code = result[0]
            if code == 0:
                return Reservation(amount, keys, tpm_estimate, tpm_cur, member, int(result[1]), int(result[2]))
            if code == 1:
                await self.initialise_counters(token, keys)
                continue
            self._raise_limit(token, [r.decode() if isinstance(r, bytes) else r for r in result[1:]], amount)
        raise ApiError(503, "The gateway could not initialise spend counters.", type="api_error", code="gateway_unavailable")

    def _raise_limit(self, token: TokenSnapshot, detail: list, amount: int) -> None:
        name = detail[0]
        if name in ("rpm", "tpm"):
            limit, retry = detail[1], detail[3]
            kind = "requests" if name == "rpm" else "tokens"
            raise ApiError(429, f"Rate limit reached: {limit} {kind} per minute for this token. Retry after {retry} s.",
                             type="rate_limit_error", code=f"rate_limit_{name}",
                             headers=[(b"retry-after", retry.encode()),
                                      (f"x-ratelimit-limit-{kind}".encode(), limit.encode()),
                                      (f"x-ratelimit-remaining-{kind}".encode(), b"0"),
                                      (f"x-ratelimit-reset-{kind}".encode(), f"{retry}s".encode())])
        status, code, template = LIMIT_ERRORS[name]
        message = template.format(limit=rub(int(detail[1])), amount=rub(amount))
        raise ApiError(status, message, type="insufficient_quota" if status == 402 else "rate_limit_error", code=code)

    async def initialise_counters(self, token: TokenSnapshot, keys: redis_scripts.SpendKeys) -> None:
        from .counters import load_initial_counters

        values = await self.snapshots.run_in_loader(load_initial_counters, token.id, token.company_id, token.department_id,
                                                    token.time_zone.key)
        await self.redis.evalsha(self._scripts["init"], keys.as_list(),
                                 [values.credits, values.debits, values.limit, values.total, values.week, values.month,
                                  values.department, 1 if keys.has_dept else 0, redis_scripts.WINDOW_TTL])

    # ------------------------------------------------------------------ stage: settle + meter
    async def settle(self, request: Request, reservation: Reservation, *, status: str, http: int,
                     error: ApiError | None = None) -> None:
        actual = request.sell
        tpm_delta = (request.input_tokens + request.output_tokens) - reservation.tpm_estimate if request.token.tpm else 0
        event = request.event(status=status, http=http, error=error)
        await self.redis.evalsha(self._scripts["settle"], [*reservation.keys.as_list(), reservation.tpm_key, redis_scripts.RESERVATIONS_KEY,
                                                           redis_scripts.STREAM_KEY],
                                 [reservation.amount, actual, tpm_delta, reservation.member, event,
                                  1 if reservation.keys.has_dept else 0])

    async def meter_only(self, request: Request, *, status: str, http: int, error: ApiError | None) -> None:
        await self.redis.execute("XADD", redis_scripts.STREAM_KEY, "*", "e", request.event(status=status, http=http, error=error))

    def account(self, request: Request, route: ModelRoute, token: TokenSnapshot, usage: wire.Usage | None,
                fallback_text: str | None, input_estimate: int, reserved: int) -> None:
        """Fill tokens and costs from upstream usage, or from local counting when it sent none.

        The company is never charged more than was reserved (the request's maximum possible cost,
        checked against every limit): so a wallet can never be overdrawn, even if an upstream
        overshoots max_tokens or counts input differently from us. The supplier is still owed the
        true cost."""
        if usage is not None and (usage.input_tokens or usage.output_tokens):
            request.input_tokens, request.output_tokens, request.cached_tokens = usage.input_tokens, usage.output_tokens, usage.cached_tokens
        else:
            request.counted_locally = True
            request.input_tokens = input_estimate
            request.output_tokens = tokens.count_text(fallback_text or "") if fallback_text else 0
            request.cached_tokens = 0
        sell = self.price(route, request.input_tokens, request.output_tokens, request.cached_tokens, token.sell_coef_units)
        if sell > reserved:
            logger.warning("request %s cost %s micro-RUB, above its reservation of %s; charging the reservation",
                           request.id, sell, reserved)
            sell = reserved
        request.sell = sell
        # What the platform owes a supplier: only when a supplier's key served the request (not the mock).
        key = next((k for k in route.keys if k.id == request.key_id), None) if request.key_id is not None else None
        request.buy = self.price(route, request.input_tokens, request.output_tokens, request.cached_tokens,
                                 key.buy_coef_units) if key else 0

    # ------------------------------------------------------------------ the inference pipeline
    async def inference(self, scope, receive, send, request: Request, endpoint: str) -> None:
        token = await self.authenticate(scope, request)
        raw = await self.read_body(scope, receive)
        body = self.parse(raw)
        checked = CHECKERS[endpoint](body)
        request.model_name, request.stream = checked.model, checked.stream
        route = self.police(token, checked, request, endpoint)
        request.route = route
        await self.police_distinct_ips(token, request)
        input_tokens, max_output = self.estimate(body, checked, route, endpoint)

        idem_key = _header(scope, b"idempotency-key")
        if idem_key is None:
            await self.call(scope, receive, send, request, token, route, checked, body, raw, endpoint, input_tokens, max_output, None)
            return
        if await self.idempotency_replay(send, request, token, idem_key, raw):
            return
        try:
            await self.call(scope, receive, send, request, token, route, checked, body, raw, endpoint, input_tokens, max_output,
                            idem_key)
        finally:
            # Only a stored success is replayed; anything else frees the key for a retry.
            if not request.idempotency_stored:
                await asyncio.shield(self.redis.execute("DEL", _idem_redis_key(token, idem_key)))

    async def call(self, scope, receive, send, request: Request, token: TokenSnapshot, route: ModelRoute, checked: Checked,
                   body: dict, raw: bytes, endpoint: str, input_tokens: int, max_output: int, idem_key: str | None) -> None:
        """Reserve, call upstream, relay, settle: the part of a request that holds money."""
        reservation = await self.reserve(request, token, route, input_tokens, max_output)
        request.headers = _rate_headers(token, reservation)
        try:
            try:
                upstream = await self.upstream.open(route=route, endpoint=endpoint, body=body, stream=checked.stream)
            except ApiError as error:
                await self.settle(request, reservation, status="upstream_error", http=error.status, error=error)
                request.settled = True
                await self._send_error(send, request, error)
                return
            if upstream.key is not None:
                request.key_id, request.supplier_id = upstream.key.id, upstream.key.supplier_id
            if checked.stream:
                await self.relay_stream(scope, receive, send, request, token, route, checked, upstream, reservation,
                                        input_tokens, idem_key, raw)
            else:
                await self.relay_body(send, request, token, route, upstream, reservation, input_tokens, idem_key, raw)
        except BaseException as exc:
            # Whatever broke (a bug, cancellation), the hold is released and the request recorded.
            if isinstance(exc, Exception):
                logger.exception("request %s failed inside the gateway", request.id)
            if not request.settled:
                await asyncio.shield(self._settle_failure(request, reservation))
            raise

    async def _settle_failure(self, request: Request, reservation: Reservation) -> None:
        try:
            await self.settle(request, reservation, status="failed", http=500,
                              error=ApiError(500, "", type="api_error", code="gateway_error"))
        except Exception:
            logger.exception("could not settle request %s; the sweeper will release its hold", request.id)

    async def relay_body(self, send, request: Request, token: TokenSnapshot, route: ModelRoute, upstream: Upstream,
                         reservation: Reservation, input_tokens: int, idem_key: str | None, raw: bytes) -> None:
        payload = upstream.body
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            error = ApiError(502, "The upstream provider returned a malformed response.", type="api_error", code="upstream_malformed")
            await self.settle(request, reservation, status="upstream_error", http=502, error=error)
            request.settled = True
            await self._send_error(send, request, error)
            return
        usage = wire.usage_from(obj)
        text = None if usage else wire.generated_text(obj, request.endpoint)
        self.account(request, route, token, usage, text, input_tokens, reservation.amount)
        request.ttft_ms = int((time.time() - request.started) * 1000)
        await self.settle(request, reservation, status="ok", http=200)
        request.settled = True
        headers = [JSON, (b"content-length", str(len(payload)).encode()), (b"x-request-id", request.id.encode()),
                   (b"x-jetstream-cost", rub(request.sell).encode()), *request.headers]
        if idem_key is not None:
            await self.idempotency_store(request, token, idem_key, raw, 200, headers, payload)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def relay_stream(self, scope, receive, send, request: Request, token: TokenSnapshot, route: ModelRoute,
                           checked: Checked, upstream: Upstream, reservation: Reservation, input_tokens: int,
                           idem_key: str | None, raw: bytes) -> None:
        disconnected = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, disconnected))
        events: list[bytes] = []
        usage_event: dict | None = None
        replay: list[bytes] = []
        status, http, error = "ok", 200, None
        try:
            headers = [*SSE_HEADERS, (b"x-request-id", request.id.encode()), *request.headers]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            finished = False
            async for batch in upstream.events:
                if request.ttft_ms is None:
                    request.ttft_ms = int((time.time() - request.started) * 1000)
                out = []
                for event in batch:
                    if event == b"data: [DONE]":
                        finished = True
                        break
                    if b'"usage":{' in event or b'"usage": {' in event:
                        try:
                            candidate = orjson.loads(event[5:])
                        except orjson.JSONDecodeError:
                            candidate = None
                        if isinstance(candidate, dict) and isinstance(candidate.get("usage"), dict):
                            usage_event = candidate
                            if not candidate.get("choices"):
                                continue  # the usage-only chunk goes out last, with the cost in it
                    events.append(event)
                    out.append(event)
                # A disconnected client is still billed for what was generated: keep reading for
                # the upstream's usage (bounded by the upstream timeout).
                if out and not disconnected.is_set():
                    chunk = b"\n\n".join(out) + b"\n\n"
                    replay.append(chunk)
                    try:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    except OSError:  # the client is gone (servers that raise rather than drop the write)
                        disconnected.set()
                if finished:
                    break
        except Exception as exc:  # a broken upstream stream (timeouts, resets, protocol errors)
            status, http = "upstream_error", 502
            error = ApiError(502, "The upstream stream broke off.", type="api_error", code="upstream_broken")
            logger.warning("upstream stream for %s broke: %s", request.id, type(exc).__name__)
        finally:
            upstream.close()
            watcher.cancel()
        usage = wire.usage_from(usage_event) if usage_event else None
        text = None if usage else wire.stream_text(events, request.endpoint)
        self.account(request, route, token, usage, text, input_tokens, reservation.amount)
        if disconnected.is_set() and status == "ok":
            status, http = "client_closed", 499
        if status == "upstream_error" and not events:
            request.sell = request.buy = 0  # nothing was produced: nothing is billed
        await self.settle(request, reservation, status=status, http=http, error=error)
        request.settled = True
        if disconnected.is_set():
            return
        tail = b""
        if error is not None:
            tail += b"data: " + error.body() + b"\n\n"
        elif checked.include_usage:
            chunk_object = "text_completion" if request.endpoint == "completion" else "chat.completion.chunk"
            final = usage_event or {"id": f"chatcmpl-{request.id}", "object": chunk_object,
                                    "created": int(request.started), "model": checked.model, "choices": []}
            final["usage"] = {**(final.get("usage") or {}), "prompt_tokens": request.input_tokens,
                              "completion_tokens": request.output_tokens,
                              "total_tokens": request.input_tokens + request.output_tokens,
                              "cost": orjson.Fragment(rub(request.sell).encode())}
            tail += b"data: " + orjson.dumps(final) + b"\n\n"
        tail += b"data: [DONE]\n\n"
        replay.append(tail)
        if idem_key is not None and status == "ok":
            await self.idempotency_store(request, token, idem_key, raw, 200, [*SSE_HEADERS, (b"x-request-id", request.id.encode())],
                                         b"".join(replay))
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    # ------------------------------------------------------------------ idempotency
    async def idempotency_replay(self, send, request: Request, token: TokenSnapshot, key: str, raw: bytes) -> bool:
        if not key or len(key) > 255:
            raise bad_request("'Idempotency-Key' must be 1-255 characters.", param="Idempotency-Key", code="invalid_idempotency_key")
        digest = hashlib.sha256(raw).hexdigest()
        redis_key = _idem_redis_key(token, key)
        marker = orjson.dumps({"h": digest, "p": 1})
        created = await self.redis.execute("SET", redis_key, marker, "NX", "EX", IDEMPOTENCY_TTL)
        if created:
            return False
        stored = await self.redis.execute("GET", redis_key)
        if stored is None:  # expired between the two calls: treat as new
            return await self.idempotency_replay(send, request, token, key, raw)
        saved = orjson.loads(stored)
        if saved["h"] != digest:
            raise ApiError(409, "This Idempotency-Key was used with a different request body.", code="idempotency_key_reused")
        if saved.get("p"):
            raise ApiError(409, "A request with this Idempotency-Key is still in progress.", code="idempotency_in_progress")
        headers = [(k.encode(), v.encode()) for k, v in saved["hd"]]
        headers = [h for h in headers if h[0] not in (b"x-request-id", b"x-jetstream-cost")]
        headers += [(b"x-request-id", request.id.encode()), (b"x-jetstream-cost", b"0.000000"),
                    (b"x-jetstream-replayed-from", saved["rid"].encode()), (b"idempotent-replayed", b"true")]
        await self.meter_only(request, status="ok", http=saved["s"],
                              error=ApiError(200, "", type="", code="idempotent_replay"))
        await send({"type": "http.response.start", "status": saved["s"], "headers": headers})
        await send({"type": "http.response.body", "body": saved["b"].encode("latin-1")})
        return True

    async def idempotency_store(self, request: Request, token: TokenSnapshot, key: str, raw: bytes, status: int, headers: list,
                                body: bytes) -> None:
        record = {"h": hashlib.sha256(raw).hexdigest(), "s": status, "rid": next(v.decode() for k, v in headers if k == b"x-request-id"),
                  "hd": [(k.decode(), v.decode()) for k, v in headers], "b": body.decode("latin-1")}
        await self.redis.execute("SET", _idem_redis_key(token, key), orjson.dumps(record), "XX", "KEEPTTL")
        request.idempotency_stored = True

    # ------------------------------------------------------------------ info endpoints
    async def list_models(self, scope, send, request: Request) -> None:
        token = await self.authenticate(scope, request)
        data = [{"id": name, "object": "model", "created": route.created, "owned_by": route.provider_slug}
                for name, route in sorted(self.snapshots.routes().items()) if token.may_use(name)]
        await self._send_json(send, 200, {"object": "list", "data": data}, request)

    async def get_model(self, scope, send, request: Request, name: str) -> None:
        token = await self.authenticate(scope, request)
        route = self.snapshots.route(name)
        if route is None or not token.may_use(name):
            raise not_found(f"The model '{name}' does not exist or you do not have access to it.")
        await self._send_json(send, 200, {"id": name, "object": "model", "created": route.created,
                                          "owned_by": route.provider_slug}, request)

    async def key_info(self, scope, send, request: Request) -> None:
        token = await self.authenticate(scope, request)
        from .counters import key_report

        report = await key_report(self, token)
        await self._send_json(send, 200, {"data": report}, request)

    # ------------------------------------------------------------------ responses
    async def _send_json(self, send, status: int, obj, request: Request) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [JSON, (b"x-request-id", request.id.encode())]})
        await send({"type": "http.response.body", "body": orjson.dumps(obj)})

    async def _send_error(self, send, request: Request, error: ApiError) -> None:
        headers = [JSON, (b"x-request-id", request.id.encode()), (b"x-jetstream-cost", b"0.000000"),
                   *request.headers, *error.headers]
        try:
            await send({"type": "http.response.start", "status": error.status if error.status != 499 else 400, "headers": headers})
            await send({"type": "http.response.body", "body": error.body()})
        except (OSError, RuntimeError):
            pass  # the client is gone; the request is recorded all the same

    async def _respond_error(self, send, request: Request, error: ApiError) -> None:
        """A request rejected before any money moved: record it, then answer."""
        if request.endpoint in ENDPOINTS.values():
            status = "invalid" if error.status in (400, 404, 413, 422) else "rejected"
            if error.code == "client_closed":
                status = "client_closed"
            try:
                await self.meter_only(request, status=status, http=error.status, error=error)
            except (RedisConnectionError, RedisReplyError):
                logger.error("could not record rejected request %s (Redis unavailable)", request.id)
        await self._send_error(send, request, error)


_DISTINCT_IP = """
-- KEYS: day set ; ARGV: ip, cap
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 172800)
return 1
"""


def _opt(value: int | None) -> str | int:
    return "" if value is None else value


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1").strip()
    return None


def _idem_redis_key(token: TokenSnapshot, key: str) -> str:
    return f"js:idem:{token.id}:{hashlib.sha256(key.encode()).hexdigest()}"


def _rate_headers(token: TokenSnapshot, reservation: Reservation) -> list[tuple[bytes, bytes]]:
    headers = []
    if token.rpm:
        headers += [(b"x-ratelimit-limit-requests", str(token.rpm).encode()),
                    (b"x-ratelimit-remaining-requests", str(max(0, reservation.rpm_left)).encode())]
    if token.tpm:
        headers += [(b"x-ratelimit-limit-tokens", str(token.tpm).encode()),
                    (b"x-ratelimit-remaining-tokens", str(max(0, reservation.tpm_left)).encode())]
    return headers


async def _watch_disconnect(receive, disconnected: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected.set()
            return
