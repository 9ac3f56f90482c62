"""The supplier-key balancer: which keys a call tries, in what order, and what a failure does to a
key — with the keys' health shared by every proxy process through Redis.

Order (``KeyBalancer.order``): among a model's active keys, the lowest ``priority`` first; within
a priority, smooth weighted round-robin by ``weight`` (nginx's: exact — weights 5, 1, 1 give
a a b a c a a, every 7 picks), then the group's other keys as fallbacks by weight. Skipped: keys
disabled or exhausted (until a person re-enables them), keys in a 429 cooldown, keys whose circuit
breaker is open. A key whose breaker finished its cool-off (half-open) is tried first in its
group, but only by the one request that wins its probe lease (``SET NX``, shared by all
processes); it closes after ``BREAKER_CLOSE_AFTER`` successful probes and opens again on a failed
one. A key resting in this worker only (``KeyRoute.cooldown_until``: the adapter's cooldown after
a 5xx or a timeout) is tried last, not skipped. There is no supplier cap in the data model today,
so none is checked.

What a failure does (``KeyBalancer.failed``, from the adapter's ``UpstreamFailure``):

* ``disable`` (401/403) → the key is ``invalid``; ``park`` (402, ``insufficient_quota``) →
  ``exhausted``: out of every process at once, and written to ``SupplierKey.status`` with the
  provider's answer (scrubbed) as the reason, off the hot path (``apps/providers/key_status.py``);
* a rate limit (429) → a cooldown of the upstream's ``Retry-After`` / ``retry-after-ms``
  (``UpstreamFailure.cooldown``);
* any other failure that fails over (5xx, timeouts, connection errors and resets) counts towards
  the breaker: ``BREAKER_FAILURES`` in a row open it for ``BREAKER_COOLOFF_SECONDS``.

Each is one Redis command (``redis_scripts.KEY_HEALTH``) when it happens. Every worker refreshes
its copy of the records on the config poll it already makes (``SnapshotCache``: the health version
rides on the same ``MGET``; the records are read only when it changed). A success costs nothing
unless the worker's copy shows the key failing (then one command resets or closes it), so a
healthy request makes no Redis call of its own. Because copies lag by up to one poll (0.2 s),
"consecutive" failures are counted across processes approximately: a success another worker has
not yet seen may not reset a count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from apps.providers.adapters.base import UpstreamFailure
from apps.providers.key_health import (
    EXHAUSTED,
    HALF_OPEN,
    HEALTH_KEY,
    INVALID,
    OPEN,
    PROBE_PREFIX,
    STATUS_QUEUE,
    VERSION_KEY,
    KeyHealth,
    parse_health,
)
from lib.resp import RedisConnectionError, RedisReplyError

from .redis_scripts import KEY_HEALTH

if TYPE_CHECKING:
    from .snapshot import KeyRoute

logger = logging.getLogger("jetstream.proxy")

RATE_LIMITED = "upstream_rate_limited"


@dataclass(slots=True, frozen=True)
class BreakerSettings:
    """The per-key circuit breaker: ``failures`` in a row open it, for ``cooloff`` seconds; then it
    admits one probe at a time and closes after ``successes`` successful probes."""

    failures: int = 3
    successes: int = 2
    cooloff: float = 30.0

    @classmethod
    def from_settings(cls, conf: Mapping[str, Any]) -> BreakerSettings:
        """From ``settings.JETSTREAM``: ``BREAKER_FAILURES``, ``BREAKER_CLOSE_AFTER``, ``BREAKER_COOLOFF_SECONDS``."""
        return cls(failures=conf["BREAKER_FAILURES"], successes=conf["BREAKER_CLOSE_AFTER"], cooloff=conf["BREAKER_COOLOFF_SECONDS"])


def smooth_pick(group: Sequence[KeyRoute]) -> KeyRoute:
    """One key of a non-empty ``group`` by smooth weighted round-robin (nginx's): every key's
    running ``current`` grows by its weight, the largest wins and gives back the group's total.
    Over any run of sum(weights) picks each key is picked exactly ``weight`` times, spread out."""
    total = 0
    best = group[0]
    for key in group:
        key.current += key.weight
        total += key.weight
        if key.current > best.current:
            best = key
    best.current -= total
    return best


class KeyBalancer:
    """One worker's view of every key's shared health and the balancer over it (module docstring).

    ``redis`` is the worker's ``lib.resp.Redis`` (None: health is kept in this process only — tests
    and tools); ``health`` the records by key id, replaced by ``refresh``; ``version`` the health
    version they were read at.
    """

    def __init__(self, redis: Any, breaker: BreakerSettings | None = None) -> None:
        self.redis = redis
        self.breaker = breaker or BreakerSettings()
        self.health: dict[int, KeyHealth] = {}
        self.version: bytes | None = None
        self._script = redis.register_script(KEY_HEALTH) if redis is not None else b""

    # ------------------------------------------------------------------ routing (no I/O)
    def usable(self, key: KeyRoute, now: float) -> bool:
        """Whether the shared health lets ``key`` be tried at ``now`` (Unix seconds): not parked, not in
        a rate-limit cooldown, breaker not open."""
        record = self.health.get(key.id)
        if record is None:
            return True
        return not (record.parked(key.updated_at) or record.cool_until > now or record.circuit(now) == OPEN)

    def is_probe(self, key: KeyRoute, now: float) -> bool:
        """Whether a call to ``key`` is a half-open breaker's probe (it needs ``admit_probe`` first)."""
        record = self.health.get(key.id)
        return record is not None and record.circuit(now) == HALF_OPEN

    def order(self, keys: Sequence[KeyRoute], now: float | None = None) -> list[KeyRoute]:
        """The usable ``keys`` in the order to try them (module docstring); [] when none is usable.
        Keys resting in this worker only (``KeyRoute.cooldown_until``: the adapter's cooldown after
        a 5xx or a timeout, which the shared breaker does not yet hold against them) come last."""
        now = time.time() if now is None else now
        mono = time.monotonic()
        usable = [key for key in keys if self.usable(key, now)]
        ready = [key for key in usable if key.cooldown_until <= mono]
        resting = sorted((key for key in usable if key.cooldown_until > mono), key=lambda key: key.cooldown_until)
        ordered: list[KeyRoute] = []
        for priority in sorted({key.priority for key in ready}):
            group = [key for key in ready if key.priority == priority]
            probes = [key for key in group if self.is_probe(key, now)]
            serving = [key for key in group if key not in probes]
            ordered += probes
            if serving:
                first = smooth_pick(serving)
                ordered.append(first)
                ordered += sorted((key for key in serving if key is not first), key=lambda key: -key.weight)
        return ordered + resting

    def retry_in(self, keys: Sequence[KeyRoute], now: float | None = None) -> float | None:
        """Seconds until the first of ``keys`` that is only resting (a rate-limit cooldown, an open
        breaker) may be tried again; None when every key is parked."""
        now = time.time() if now is None else now
        waits: list[float] = []
        for key in keys:
            record = self.health.get(key.id)
            if record is None:
                waits.append(0.0)
            elif not record.parked(key.updated_at):
                waits.append(max(0.0, record.cool_until - now, record.open_until - now if record.circuit(now) == OPEN else 0.0))
        return min(waits) if waits else None

    # ------------------------------------------------------------------ shared state (Redis)
    async def admit_probe(self, key: KeyRoute) -> bool:
        """Take ``key``'s probe lease (one half-open probe at a time across every process; it lapses
        after the breaker's cool-off if its holder dies). False: another request is probing."""
        if self.redis is None:
            return True
        try:
            reply = await self.redis.execute("SET", f"{PROBE_PREFIX}{key.id}", b"1", "NX", "PX",
                                             max(1, int(self.breaker.cooloff * 1000)))
        except (RedisConnectionError, RedisReplyError):
            logger.warning("could not take the probe lease of supplier key %s; trying it anyway", key.id)
            return True
        return reply is not None

    async def succeeded(self, key: KeyRoute) -> None:
        """``key`` answered 2xx. No Redis command unless this worker's copy shows the key failing."""
        record = self.health.get(key.id)
        if record is None or record.known_healthy:
            return
        await self._report(key, "ok", self.breaker.successes)

    @staticmethod
    def counts_for_breaker(failure: UpstreamFailure) -> bool:
        """Whether ``failure`` counts towards the key's circuit breaker: it fails over and is no
        refusal of the key, no exhausted account and no rate limit (5xx, timeouts, connection errors)."""
        return failure.failover and not (failure.disable or failure.park or failure.code == RATE_LIMITED)

    async def failed(self, key: KeyRoute, failure: UpstreamFailure) -> None:
        """What ``failure`` means for ``key``, shared with every process (module docstring). A failure
        about the request (no failover) changes nothing."""
        detail = failure.detail or failure.message
        if failure.disable or failure.park:
            await self._report(key, "park", INVALID if failure.disable else EXHAUSTED, failure.code, failure.status, detail)
        elif failure.code == RATE_LIMITED:
            await self._report(key, "cool", float(failure.cooldown or 0), failure.code, failure.status, detail)
        elif self.counts_for_breaker(failure):
            await self._report(key, "fail", self.breaker.failures, float(self.breaker.cooloff), failure.code, failure.status,
                               detail)

    async def _report(self, key: KeyRoute, op: str, *args: Any) -> None:
        if self.redis is None:
            return
        keys = (HEALTH_KEY, VERSION_KEY, STATUS_QUEUE, f"{PROBE_PREFIX}{key.id}")
        values = [op, key.id, repr(time.time()), *(repr(a) if isinstance(a, float) else a for a in args)]
        try:
            reply = await self.redis.evalsha(self._script, keys, values)
        except (RedisConnectionError, RedisReplyError):
            # The request goes on; this worker still rests the key (the caller's local cooldown).
            logger.warning("could not record the health of supplier key %s (%s)", key.id, op)
            return
        if reply:
            self.health[key.id] = KeyHealth.decode(reply)
        else:
            self.health.pop(key.id, None)

    async def refresh(self, version: bytes | None) -> int:
        """Re-read every record (the health version changed to ``version``); returns the number of
        status changes queued for the database. Raises the Redis client's errors."""
        entries, queued = await self._read()
        self.health = parse_health(entries or [])
        self.version = version
        return int(queued or 0)

    async def _read(self) -> tuple[Any, Any]:
        # Two commands pipelined on the one connection: one round trip's wait.
        return tuple(await asyncio.gather(self.redis.execute("HGETALL", HEALTH_KEY), self.redis.execute("LLEN", STATUS_QUEUE)))
