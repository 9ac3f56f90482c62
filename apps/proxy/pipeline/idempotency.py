"""The idempotency stage: an ``Idempotency-Key`` replays the first successful answer, free.

The key is claimed (SET NX, 24 h) before any money moves; a second request with the same key and
body gets the stored answer with ``idempotent-replayed: true`` and cost 0 (and its own usage
record), a different body gets 409, a request still running gets 409. Only a success is stored;
anything else frees the key for a retry.
"""

from __future__ import annotations

import asyncio
import hashlib

import orjson

from apps.billing.models import UsageStatus
from lib.resp import Redis

from ..exceptions import ApiError, bad_request
from .context import Call
from .responses import HeaderList
from .spend import SpendCounters

TTL_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255


def _redis_key(call: Call) -> str:
    key = call.idempotency_key or ""
    return f"js:idem:{call.token.id}:{hashlib.sha256(key.encode()).hexdigest()}"


def _request_digest(call: Call) -> str:
    # The dialect and endpoint are part of the request: one body sent with one key to
    # /v1/chat/completions and to /v1/messages is two requests (the second is refused 409, never
    # answered with the first's answer in the other dialect's shape).
    return hashlib.sha256(f"{call.dialect.name}:{call.endpoint}:".encode() + call.raw).hexdigest()


class IdempotencyStore:
    """Claims, stores and replays answers by (token, Idempotency-Key) in Redis."""

    def __init__(self, redis: Redis, counters: SpendCounters) -> None:
        self._redis = redis
        self._counters = counters

    async def replay(self, call: Call, send) -> bool:
        """Claim ``call.idempotency_key``, or answer from what it stored: True if the call was
        answered here. Raises ``ApiError`` 400 (bad key), 409 (other body, or still running)."""
        key = call.idempotency_key
        if not key or len(key) > MAX_KEY_LENGTH:
            raise bad_request(f"'Idempotency-Key' must be 1-{MAX_KEY_LENGTH} characters.", param="Idempotency-Key",
                              code="invalid_idempotency_key")
        digest = _request_digest(call)
        redis_key = _redis_key(call)
        while True:
            if await self._redis.execute("SET", redis_key, orjson.dumps({"h": digest, "p": 1}), "NX", "EX", TTL_SECONDS):
                return False
            stored = await self._redis.execute("GET", redis_key)
            if stored is not None:  # else it expired between the two calls: claim it anew
                break
        saved = orjson.loads(stored)
        if saved["h"] != digest:
            # 409 is one of the statuses the SDKs retry; this one a retry cannot cure.
            raise ApiError(409, "This Idempotency-Key was used with a different request body.", code="idempotency_key_reused",
                           retryable=False)
        if saved.get("p"):
            raise ApiError(409, "A request with this Idempotency-Key is still in progress.", code="idempotency_in_progress")
        # This answer's own request id and processing time come from ``answering``; an answer stored by an
        # older worker may still hold its request id.
        headers = [(k.encode(), v.encode()) for k, v in saved["hd"]]
        headers = [h for h in headers if h[0] not in (b"x-request-id", b"x-jetstream-cost", b"openai-processing-ms")]
        headers += [(b"x-jetstream-cost", b"0.000000"), (b"x-jetstream-replayed-from", saved["rid"].encode()),
                    (b"idempotent-replayed", b"true")]
        await self._counters.record(call, status=UsageStatus.OK, http=saved["s"], error=ApiError(200, "", type="", code="idempotent_replay"))
        await send({"type": "http.response.start", "status": saved["s"], "headers": headers})
        await send({"type": "http.response.body", "body": saved["b"].encode("latin-1")})
        return True

    async def store(self, call: Call, status: int, headers: HeaderList, body: bytes) -> None:
        """Keep a successful answer for replays (no-op without an Idempotency-Key)."""
        if call.idempotency_key is None:
            return
        record = {"h": _request_digest(call), "s": status, "rid": call.id,
                  "hd": [(k.decode(), v.decode()) for k, v in headers], "b": body.decode("latin-1")}
        await self._redis.execute("SET", _redis_key(call), orjson.dumps(record), "XX", "KEEPTTL")
        call.idempotency_stored = True

    async def release(self, call: Call) -> None:
        """Free the key of a call that stored nothing, so a retry runs anew (shielded: runs even when
        the call is cancelled)."""
        if call.idempotency_key is not None and not call.idempotency_stored:
            await asyncio.shield(self._redis.execute("DEL", _redis_key(call)))
