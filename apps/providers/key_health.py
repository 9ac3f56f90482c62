"""Supplier-key health as every proxy process shares it in Redis (no ORM here: the hot path reads it).

One hash, ``HEALTH_KEY`` (``js:keys:health``), holds a small JSON record per supplier key id that
has ever failed; a key with no record is healthy. Records are written only by the Lua script
``apps/proxy/redis_scripts.KEY_HEALTH`` (one command per failure, and per success of a key that
is not yet known healthy), which also increments ``VERSION_KEY``; each proxy worker reads that
version on its existing config poll (``apps/proxy/snapshot.py``, one ``MGET`` every 0.2 s) and
re-reads the hash only when it changed. A healthy request costs no Redis command at all.

A record (``KeyHealth``; JSON keys in brackets, times Unix seconds):

* ``state`` [``s``]: ``closed`` (serving), ``open`` (the circuit breaker tripped after N consecutive
  failures: no traffic until ``open_until``, then one probe request at a time — half-open),
  ``half_open`` (a probe succeeded, fewer than M so far), ``invalid`` (the provider refused the key,
  401/403) or ``exhausted`` (out of quota or money, 402 / ``insufficient_quota``);
* ``failures`` [``f``]: consecutive breaker failures (5xx, timeouts, resets) since the last success;
* ``successes`` [``ok``]: probe successes while half-open;
* ``open_until`` [``ou``], ``cool_until`` [``cu``]: the breaker's cool-off end, a 429 cooldown's end;
* ``at`` [``at``], ``code`` [``c``], ``http`` [``h``], ``error`` [``e``]: the last failure's time, the
  gateway's error code, the upstream's HTTP status (0 = none: a connection failure) and what it
  said, scrubbed.

``invalid`` and ``exhausted`` are also queued (``STATUS_QUEUE``) for ``apply_key_status_changes``
(``apps/providers/key_status.py``), which writes them to ``SupplierKey.status`` off the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson

HEALTH_KEY = "js:keys:health"
VERSION_KEY = "js:keys:health:version"
STATUS_QUEUE = "js:keys:status"  # list of {"id", "status", "reason", "at"} JSON objects, oldest first
PROBE_PREFIX = "js:keys:probe:"  # + key id: the half-open probe's lease (SET NX PX)

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
INVALID = "invalid"
EXHAUSTED = "exhausted"
PARKED = frozenset({INVALID, EXHAUSTED})


@dataclass(slots=True, frozen=True)
class KeyHealth:
    """One key's shared health record (see the module docstring for the fields and units)."""

    state: str = CLOSED
    failures: int = 0
    successes: int = 0
    open_until: float = 0.0
    cool_until: float = 0.0
    at: float = 0.0
    code: str = ""
    http: int = 0
    error: str = ""

    @classmethod
    def decode(cls, raw: bytes | str) -> KeyHealth:
        """A record from its JSON; anything unreadable is a healthy record (a bad record must not bench a key)."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return cls()
        if not isinstance(obj, dict):
            return cls()
        try:
            return cls(state=str(obj.get("s") or CLOSED), failures=int(obj.get("f") or 0), successes=int(obj.get("ok") or 0),
                       open_until=float(obj.get("ou") or 0), cool_until=float(obj.get("cu") or 0),
                       at=float(obj.get("at") or 0), code=str(obj.get("c") or ""), http=int(obj.get("h") or 0),
                       error=str(obj.get("e") or ""))
        except (TypeError, ValueError):
            return cls()

    @property
    def known_healthy(self) -> bool:
        """Closed with no failure counted: a success changes nothing (and is not reported)."""
        return self.state == CLOSED and self.failures == 0

    def parked(self, updated_at: float) -> bool:
        """Disabled or exhausted by a failure newer than the key's last save (``updated_at``, Unix
        seconds): a person who re-enabled the key since then has the last word."""
        return self.state in PARKED and self.at >= updated_at

    def circuit(self, now: float) -> str:
        """The breaker as routing sees it at ``now``: ``closed``, ``open`` or ``half_open`` (an open
        breaker whose cool-off ended admits probes)."""
        if self.state == OPEN:
            return OPEN if now < self.open_until else HALF_OPEN
        if self.state == HALF_OPEN:
            return HALF_OPEN
        return CLOSED


def parse_health(entries: dict | Iterable) -> dict[int, KeyHealth]:
    """``HGETALL HEALTH_KEY``'s reply (a dict, or hiredis' flat [field, value, …] list) by key id."""
    pairs = entries.items() if isinstance(entries, dict) else zip(*[iter(entries)] * 2, strict=False)
    health: dict[int, KeyHealth] = {}
    for field, value in pairs:
        try:
            health[int(field)] = KeyHealth.decode(value)
        except ValueError:
            continue
    return health


def read_health(client, key_ids: Iterable[int] | None = None) -> dict[int, KeyHealth]:
    """The shared records (all, or of ``key_ids``) through a synchronous redis-py ``client`` (the
    admin's read; never the hot path). Raises ``redis.RedisError``."""
    if key_ids is None:
        return parse_health(client.hgetall(HEALTH_KEY))
    ids = list(key_ids)
    if not ids:
        return {}
    values = client.hmget(HEALTH_KEY, ids)
    return {key_id: KeyHealth.decode(value) for key_id, value in zip(ids, values, strict=True) if value is not None}


def reset_health(client, key_id: int) -> None:
    """Forget a key's record and probe lease (a person re-enabled it) and tell every worker, in one
    transaction through a synchronous redis-py ``client``. Raises ``redis.RedisError``."""
    pipe = client.pipeline(transaction=True)
    pipe.hdel(HEALTH_KEY, key_id)
    pipe.delete(f"{PROBE_PREFIX}{key_id}")
    pipe.incr(VERSION_KEY)
    pipe.execute()
