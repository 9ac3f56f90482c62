"""Admission stages: authenticate → read the body → police. Nothing here moves money.

Authenticate takes ``Authorization: Bearer js-…`` or ``x-api-key`` and finds the token's
in-process snapshot (no database query per request); police checks the client address, the model
and the token's rules; the distinct-IP cap is the only check that may cost a Redis call (once per
new address per day).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from lib.jsonbytes import nesting_exceeds
from lib.resp import Redis

from ..exceptions import ApiError, bad_request, forbidden, not_found, unauthorized
from ..models import TokenStatus, hash_token
from ..snapshot import ModelRoute, SnapshotCache, TokenSnapshot
from .context import Call

# Which model modalities may serve each endpoint.
MODALITY_FOR = {"chat": ("chat",), "completion": ("completion", "chat"), "embedding": ("embedding",)}
MAX_SECRET_LENGTH = 256
# Levels of arrays and objects a body may nest. The parser (orjson) reads 1024, the encoder that
# forwards the body writes 254: a body between the two passed the door and failed inside (a 500).
# Real requests nest under 20 (a tool's JSON Schema a few levels more); 64 leaves room and is
# one limit every later stage can hold.
MAX_JSON_DEPTH = 64


def bearer(scope: dict[str, Any]) -> str | None:
    """The API token the client sent (``Authorization: Bearer …`` or ``x-api-key``), or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                return credential.strip()
        elif name == b"x-api-key" and value:
            return value.decode("latin-1").strip()
    return None


async def authenticate(call: Call, snapshots: SnapshotCache) -> TokenSnapshot:
    """The call's token, also set on ``call.token``. Raises ``ApiError`` 401 (unknown, revoked,
    expired) or 403 (blocked, company suspended)."""
    secret = bearer(call.scope)
    if not secret or not secret.startswith("js-") or len(secret) > MAX_SECRET_LENGTH:
        raise unauthorized()
    token = await snapshots.token(hash_token(secret))
    if token is None:
        raise unauthorized()
    call.token = token
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


async def read_body(scope: dict[str, Any], receive, max_body: int) -> bytes:
    """The whole request body (bytes). Raises ``ApiError`` 413 above ``max_body`` bytes, 400
    ``json_too_deep`` for JSON nested deeper than ``MAX_JSON_DEPTH`` levels, 499 if the client
    leaves first."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > max_body:
            raise ApiError(413, f"The request body exceeds {max_body} bytes.", code="request_too_large")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(499, "The client closed the request.", code="client_closed")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            raise ApiError(413, f"The request body exceeds {max_body} bytes.", code="request_too_large")
        chunks.append(chunk)
        if not message.get("more_body"):
            return check_depth(b"".join(chunks))


def check_depth(raw: bytes) -> bytes:
    """``raw`` if it nests at most ``MAX_JSON_DEPTH`` levels. Raises ``ApiError`` 400 ``json_too_deep``.

    Costs nothing measurable: a body with fewer brackets than the limit (a plain chat) is passed
    on two ``count`` calls; others take a few C-level passes (``lib/jsonbytes.py``)."""
    if nesting_exceeds(raw, MAX_JSON_DEPTH):
        raise bad_request(f"The request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep; "
                          f"the gateway's limit is {MAX_JSON_DEPTH} levels.", code="json_too_deep")
    return raw


class ClientAddress:
    """The client's IP: the peer address, or — when the peer is a trusted proxy and a header is
    configured — the right-most address in that header that a trusted proxy did not add."""

    def __init__(self, *, header: str, trusted_proxies: Sequence[str]) -> None:
        self._header = header.lower().encode()
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_proxies]

    def _is_trusted(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in net for net in self._trusted)

    def __call__(self, scope: dict[str, Any]) -> str | None:
        peer = scope.get("client")
        address = peer[0] if peer else None
        if not self._header or address is None:
            return address
        try:
            if not self._is_trusted(ipaddress.ip_address(address)):
                return address
        except ValueError:
            return address
        for name, value in scope["headers"]:
            if name == self._header and (client := self._from_header(value)) is not None:
                return client
        return address

    def _from_header(self, value: bytes) -> str | None:
        for hop in reversed([h.strip() for h in value.decode("latin-1").split(",") if h.strip()]):
            try:
                ip = ipaddress.ip_address(hop)
            except ValueError:
                return None
            if not self._is_trusted(ip):
                return str(ip)
        return None


def police(call: Call, snapshots: SnapshotCache) -> ModelRoute:
    """The route of the requested model, also set on ``call.route``, after the token's rules.
    Raises ``ApiError`` 403 (address or model not allowed), 404 (unknown model), 422 (the model
    cannot serve this endpoint), 503 ``fx_rate_stale`` (its currency's newest rate is too old) or
    ``model_not_priced`` (no price or FX rate)."""
    token, model = call.token, call.request.model
    if token.ip_networks:
        try:
            ip = ipaddress.ip_address(call.client_ip or "")
        except ValueError:
            ip = None
        if ip is None or not any(ip in net for net in token.ip_networks):
            raise forbidden(f"Requests from {call.client_ip} are not allowed for this token.", code="ip_not_allowed")
    route = snapshots.route(model)
    if route is None:
        raise not_found(f"The model '{model}' does not exist or you do not have access to it.")
    if not token.may_use(model):
        raise forbidden(f"This token may not use the model '{model}'.", code="model_not_allowed")
    if route.modality not in MODALITY_FOR[call.endpoint]:
        raise ApiError(422, f"The model '{model}' is a {route.modality} model and cannot serve this endpoint.",
                       param="model", code="unsupported_model_for_endpoint")
    if route.fx_stale is not None:
        currency, date = route.fx_stale
        raise ApiError(503, f"The model '{model}' is priced in {currency}, and the newest {currency} exchange rate "
                            f"is from {date}, too old to price a request. Try again when the rate has been updated.",
                       type="api_error", code="fx_rate_stale")
    if not route.priced:
        raise ApiError(503, f"The model '{model}' has no price or exchange rate configured.", type="api_error",
                       code="model_not_priced")
    call.route = route
    return route


_DISTINCT_IP = """
-- KEYS: day set ; ARGV: ip, cap
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 172800)
return 1
"""


class DistinctIpCap:
    """A token's cap on distinct client IPs per day (company time zone), global through Redis; an
    address this worker has already admitted today costs no Redis call."""

    MAX_REMEMBERED = 50_000

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(_DISTINCT_IP)
        self._seen: dict[tuple[int, str], set[str]] = {}

    async def admit(self, call: Call) -> None:
        """Raises ``ApiError`` 403 ``too_many_client_ips`` for a new address over the cap."""
        token = call.token
        if not token.max_distinct_ips or call.client_ip is None:
            return
        day = datetime.now(token.time_zone).strftime("%Y-%m-%d")
        seen = self._seen.setdefault((token.id, day), set())
        if call.client_ip in seen:
            return
        admitted = await self._redis.evalsha(self._script, [f"js:ip:{token.id}:{day}"], [call.client_ip, token.max_distinct_ips])
        if not admitted:
            raise forbidden(f"This token has reached its limit of {token.max_distinct_ips} distinct client IPs today.",
                            code="too_many_client_ips")
        seen.add(call.client_ip)
        if len(self._seen) > self.MAX_REMEMBERED:
            self._seen.clear()
