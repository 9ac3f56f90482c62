"""Reconciliation: the proxy's Redis counters against PostgreSQL (the truth), repaired when they drift.

What must hold, for every company and token (micro-RUB):

* company ``out`` = open reservations + charges in usage events not yet acknowledged by the writer;
* company ``cr``/``db`` = the wallet's posted credits/debits, once the writer has merged them
  (``db`` may lag by the unwritten charges, never lead; ``cr`` neither lags for long nor leads);
* token total = its written usage (Σ sell_cost) + open reservations + charges not yet written;
* token week / month and department month (``js:tk:<id>:w:<week>``, ``…:m:<month>``,
  ``js:dp:<id>:m:<month>``) = the same, counting only requests that started in that calendar window
  of the company's time zone (as ``counters.py`` seeds them);
* the holds (company ``ha``/``hn``, ``js:tk:<id>:held`` and ``js:dp:<id>:held`` ``a``/``n``: what
  in-flight reservations hold, amount and count, which refusals quote) = the sum and the number of
  the live reservations that took a hold. The scripts change a hold and its reservation together,
  so one atomic read of Redis compares them exactly, with no PostgreSQL involved.

**Drift.** For each counter, ``drift = counter − (ledger + live reservations + unwritten charges)``.
Every correct operation moves both sides by the same amount — RESERVE adds ``a`` to the counter and
a reservation of ``a``; SETTLE swaps the reservation for an unwritten charge and moves the counter
by the difference; the writer turns an unwritten charge into a written one (and ``ACK`` lowers
``out`` by it as the event leaves the in-flight set); the sweeper releases a reservation from both
sides. So drift is invariant under live traffic: only a bug, a lost write or a hand edit changes it.

**Measuring.** One Lua script reads, atomically, every counter, the reservations set and the
stream entries not yet acknowledged (undelivered and pending) — a consistent picture of Redis.
Then PostgreSQL is read in one REPEATABLE READ transaction (wallet sums, written usage, which of
the unacknowledged events are already committed). The two reads are moments apart, so traffic in
between can fake a drift: a reservation whose request committed in between is counted twice (such
counters are skipped this round), and a request that reserved, settled and committed entirely in
the gap is not seen by Redis but is by PostgreSQL.

**Repairing.** Hence a drift is repaired only when a second, independent measurement (taken after
``confirm_delay`` seconds) finds the same non-zero drift on the same counter — a race leaves a
different or no drift the second time. The repair subtracts the drift, atomically, with
``INCRBY``/``HINCRBY``: it never *sets* a counter, so reservations held during the repair, and any
reserve/settle that lands between the measurement and the repair, stay counted — after it,
counter = ledger + live reservations + unwritten charges exactly. A lagging ``cr``/``db`` is
raised to the ledger's value with the same max-merge the writer uses (both only grow, so it is
always safe and needs no confirmation).

**Alerting.** Every confirmed mismatch is logged at ERROR, counted in ``js:metrics:reconcile_mismatch``
(repairs in ``js:metrics:reconcile_repaired``) and sent to the operators through
``apps.billing.alerts.notify_operators``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import zoneinfo
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import orjson
import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum

from apps.accounts.models import Department
from apps.billing.alerts import notify_operators
from apps.billing.models import UsageRecord
from apps.billing.usage import UsageEvent
from apps.billing.wallets import WalletSums, wallet_sums

from . import redis_scripts
from .metering import GROUP
from .models import ApiToken

logger = logging.getLogger("jetstream.reconcile")

MISMATCH_METRIC = "js:metrics:reconcile_mismatch"
REPAIRED_METRIC = "js:metrics:reconcile_repaired"

# One atomic read of Redis. KEYS: stream, reservations, company hashes…, spend counters (strings)…,
# hold hashes…; ARGV: group, number of company hashes, number of spend counters. Returns {company
# values, counter values, reservations, unacknowledged entries ([id, fields] as XRANGE gives them),
# hold values}.
_READ = """
local n, m = tonumber(ARGV[2]), tonumber(ARGV[3])
local companies, tokens, holds = {}, {}, {}
for i = 3, 2 + n do companies[#companies + 1] = redis.call('HMGET', KEYS[i], 'cr', 'db', 'out', 'ha', 'hn') end
-- a counter that expired (or is not a string) since it was listed reads 'x': not compared
for i = 3 + n, 2 + n + m do
  if redis.call('TYPE', KEYS[i]).ok == 'string' then tokens[#tokens + 1] = redis.call('GET', KEYS[i]) else tokens[#tokens + 1] = 'x' end
end
for i = 3 + n + m, #KEYS do holds[#holds + 1] = redis.call('HMGET', KEYS[i], 'a', 'n') end
local reservations = redis.call('ZRANGE', KEYS[2], 0, -1)
local entries = {}
if redis.call('EXISTS', KEYS[1]) == 1 then
  local last = nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local info = {}
    for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
    if info['name'] == ARGV[1] then last = info['last-delivered-id'] end
  end
  local start = '-'
  if last then start = '(' .. last end
  for _, e in ipairs(redis.call('XRANGE', KEYS[1], start, '+')) do entries[#entries + 1] = e end
  if last then
    for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 100000)) do
      for _, e in ipairs(redis.call('XRANGE', KEYS[1], p[1], p[1])) do entries[#entries + 1] = e end
    end
  end
end
return {companies, tokens, reservations, entries, holds}
"""

# KEYS: the counter; ARGV: hash field ('' for a string key), delta. Atomic INCRBY/HINCRBY of a
# counter that still exists (a counter Redis dropped is re-seeded from PostgreSQL by the proxy).
_ADJUST = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '' then redis.call('INCRBY', KEYS[1], ARGV[2]) else redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""

# KEYS: company hash; ARGV: field, ledger value. Raise a lagging cr/db to the ledger's (max-merge).
_RAISE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur == false or tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class Discrepancy:
    """One counter that disagrees with PostgreSQL: what it is, its Redis value and the value
    PostgreSQL implies (both micro-RUB); ``key``/``field`` name the counter (``field`` "" for a
    string key) and ``repaired`` says whether this run corrected it."""

    what: str
    redis_value: int
    expected: int
    key: str = ""
    field: str = ""
    repaired: bool = False
    unit: str = "micro-RUB"

    @property
    def drift(self) -> int:
        """Redis minus expected, micro-RUB."""
        return self.redis_value - self.expected

    def __str__(self) -> str:
        state = "repaired" if self.repaired else "not repaired"
        return f"{self.what}: Redis {self.redis_value}, expected {self.expected} ({self.unit}), {state}"


@dataclass(frozen=True)
class _Counter:
    """A spend counter (a Redis string, micro-RUB): whose (``owner`` "token" or "department", and its
    id) over which ``[start, end)`` of usage start times (None: all time)."""

    key: str
    owner: str
    owner_id: int
    start: dt.datetime | None = None
    end: dt.datetime | None = None

    @property
    def what(self) -> str:
        if self.start is None:
            return f"{self.owner} {self.owner_id} total spend"
        return f"{self.owner} {self.owner_id} spend in {self.key.rsplit(':', 1)[1]}"

    def covers(self, started_at: float) -> bool:
        """Whether a request started at ``started_at`` (Unix seconds) counts in this counter."""
        return self.start is None or self.end is None or self.start.timestamp() <= started_at < self.end.timestamp()


def _window(tz: zoneinfo.ZoneInfo, kind: str, window: str) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of an ISO week ("w", "2026-W48") or a month ("m", "2026-11") on ``tz``'s wall
    clock, as ``apps/proxy/windows.py`` draws them. Raises ``ValueError`` for a malformed id."""
    if kind == "w":
        year, week = window.split("-W")
        first = dt.date.fromisocalendar(int(year), int(week), 1)
        last = first + dt.timedelta(days=7)
    else:
        year, month = window.split("-")
        first = dt.date(int(year), int(month), 1)
        last = (first + dt.timedelta(days=32)).replace(day=1)
    return dt.datetime.combine(first, dt.time(), tz), dt.datetime.combine(last, dt.time(), tz)


def _spend_counters(keys: list[str]) -> list[_Counter]:
    """The token (total, week, month) and department (month) counters among ``keys``, with their
    windows in the company's time zone; keys of unknown tokens/departments or odd shape are left out."""
    parsed = [k.split(":") for k in keys]
    tokens = {int(p[2]) for p in parsed if p[1] == "tk" and p[2].isdigit()}
    departments = {int(p[2]) for p in parsed if p[1] == "dp" and p[2].isdigit()}
    zones = {("token", pk): tz for pk, tz in ApiToken.objects.filter(pk__in=tokens).values_list("pk", "company__time_zone")}
    zones |= {("department", pk): tz for pk, tz in Department.objects.filter(pk__in=departments).values_list("pk", "company__time_zone")}
    counters = []
    for key, parts in zip(keys, parsed, strict=True):
        owner = "token" if parts[1] == "tk" else "department"
        zone = zones.get((owner, int(parts[2]))) if parts[2].isdigit() else None
        if zone is None:
            continue
        if parts[3:] == ["total"] and owner == "token":
            counters.append(_Counter(key, owner, int(parts[2])))
        elif len(parts) == 5 and parts[3] in ("w", "m"):
            try:
                counters.append(_Counter(key, owner, int(parts[2]), *_window(zoneinfo.ZoneInfo(zone), parts[3], parts[4])))
            except ValueError:
                continue
    return counters


def _hold_keys(keys: list[str]) -> list[str]:
    """The token and department hold hashes (``js:tk:<id>:held``, ``js:dp:<id>:held``) among ``keys``."""
    return [k for k in keys if k.endswith(":held") and k.split(":")[1] in ("tk", "dp")]


def _hold_key_of(counter_key: str) -> str:
    """The hold hash beside a charged counter: ``js:tk:7:total`` → ``js:tk:7:held``,
    ``js:dp:3:m:2026-11`` → ``js:dp:3:held`` (as the scripts derive it)."""
    parts = counter_key.split(":")
    return ":".join(parts[:3] + ["held"])


@dataclass
class _RedisPicture:
    companies: dict[str, tuple[int, int, int, int, int]]
    counters: dict[str, int]
    holds: dict[str, tuple[int, int]] = field(default_factory=dict)
    expected_holds: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    held: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    held_requests: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    events: list[UsageEvent] = field(default_factory=list)


@dataclass
class _Ledger:
    wallets: dict[int, WalletSums]
    written: dict[str, int]  # counter key → Σ sell_cost of its usage records
    committed: set[str]


def _read_redis(client: redis.Redis, company_keys: list[str], counter_keys: list[str], hold_keys: Sequence[str] = ()) -> _RedisPicture:
    hold_keys = list(hold_keys)
    reply = cast(list, client.eval(_READ, 2 + len(company_keys) + len(counter_keys) + len(hold_keys), redis_scripts.STREAM_KEY,
                                   redis_scripts.RESERVATIONS_KEY, *company_keys, *counter_keys, *hold_keys, GROUP,
                                   len(company_keys), len(counter_keys)))
    companies_raw, counters_raw, reservations, entries, holds_raw = reply
    picture = _RedisPicture(
        companies={k: cast(tuple[int, int, int, int, int], tuple(int(v or 0) for v in values))
                   for k, values in zip(company_keys, companies_raw, strict=True)},
        counters={k: int(v) for k, v in zip(counter_keys, counters_raw, strict=True) if v != b"x"},
        holds={k: (int(a or 0), int(n or 0)) for k, (a, n) in zip(hold_keys, holds_raw, strict=True)})
    for member in reservations:
        reservation = orjson.loads(member)
        for key in reservation["keys"]:
            picture.held[key] += reservation["amount"]
            picture.held_requests[key].add(reservation.get("rid", ""))
        if reservation.get("h") == 1:  # it took a hold: on the company hash, the token's and the department's
            keys = reservation["keys"]
            for key in [keys[0], _hold_key_of(keys[1]), *([_hold_key_of(keys[4])] if len(keys) > 4 and keys[4] else [])]:
                picture.expected_holds[key][0] += reservation["amount"]
                picture.expected_holds[key][1] += 1
    for _, flat in entries:
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        if b"e" in fields:
            picture.events.append(UsageEvent.decode(fields[b"e"]))
    return picture


def _written(counters: list[_Counter]) -> dict[str, int]:
    """Σ sell_cost of the usage records each counter covers: one query per (owner kind, window)."""
    groups: dict[tuple, list[_Counter]] = defaultdict(list)
    for counter in counters:
        groups[(counter.owner, counter.start, counter.end)].append(counter)
    written: dict[str, int] = {}
    for (owner, start, end), members in groups.items():
        usage = UsageRecord.objects.filter(**{f"{owner}_id__in": [c.owner_id for c in members]})
        if start is not None:
            usage = usage.filter(started_at__gte=start, started_at__lt=end)
        sums = dict(usage.values(f"{owner}_id").annotate(s=Sum("sell_cost")).values_list(f"{owner}_id", "s"))
        written.update({c.key: sums.get(c.owner_id) or 0 for c in members})
    return written


def _read_ledger(companies: list[int], counters: list[_Counter], request_ids: list[str]) -> _Ledger:
    """Wallet sums, written usage per counter and the committed request ids, from one database snapshot."""
    # Only a transaction's first statement may set its isolation level; inside an outer transaction
    # (tests) the snapshot is that transaction's anyway.
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        wallets = wallet_sums(companies)
        written = _written(counters)
        committed = set(UsageRecord.objects.filter(request_id__in=request_ids).values_list("request_id", flat=True))
    return _Ledger(wallets, written, committed)


def _unwritten(events: list[UsageEvent], committed: set[str]) -> tuple[dict[int, int], dict[tuple[str, int], list[UsageEvent]]]:
    """(charges not yet acknowledged, by company; charges not yet committed, by (owner kind, id))."""
    by_company: dict[int, int] = defaultdict(int)
    by_owner: dict[tuple[str, int], list[UsageEvent]] = defaultdict(list)
    for event in events:
        if not event.sell_cost or event.company_id is None:
            continue
        by_company[event.company_id] += event.sell_cost
        # Committed but not yet acknowledged: in the usage records already, still in `out`.
        if event.request_id not in committed:
            if event.token_id is not None:
                by_owner[("token", event.token_id)].append(event)
            if event.department_id is not None:
                by_owner[("department", event.department_id)].append(event)
    return by_company, by_owner


def _measure(client: redis.Redis, company_keys: list[str], counters: list[_Counter],
             hold_keys: Sequence[str] = ()) -> dict[tuple[str, str], Discrepancy]:
    """One measurement: every counter whose drift is not zero, by (key, field)."""
    picture = _read_redis(client, company_keys, [c.key for c in counters], hold_keys)
    companies = [int(k.rsplit(":", 1)[1]) for k in company_keys]
    ledger = _read_ledger(companies, counters, [e.request_id for e in picture.events])
    unwritten_company, unwritten = _unwritten(picture.events, ledger.committed)
    found: dict[tuple[str, str], Discrepancy] = {}
    for company, key in zip(companies, company_keys, strict=True):
        if company in ledger.wallets:  # a wallet Redis knows and PostgreSQL does not: nothing to compare
            for d in _company_drifts(company, key, picture, ledger.wallets[company], unwritten_company[company]):
                found[(d.key, d.field)] = d
    for counter in counters:
        if counter.key not in picture.counters or picture.held_requests[counter.key] & ledger.committed:
            continue  # gone since listed; or a held request committed between the two reads: ambiguous this round
        pending = sum(e.sell_cost for e in unwritten[(counter.owner, counter.owner_id)] if counter.covers(e.started_at))
        expected = ledger.written[counter.key] + picture.held[counter.key] + pending
        if picture.counters[counter.key] != expected:
            found[(counter.key, "")] = Discrepancy(counter.what, picture.counters[counter.key], expected, counter.key, "")
    for d in _hold_drifts(picture):
        found[(d.key, d.field)] = d
    return found


def _hold_drifts(picture: _RedisPicture) -> list[Discrepancy]:
    """Holds that differ from the live reservations that took them (amount and count), for every
    company hash and hold hash read. Exact: a hold moves only with its reservation, in one script."""
    found = []
    values = {key: (a, n) for key, (*_rest, a, n) in picture.companies.items()} | picture.holds
    for key, (amount, count) in values.items():
        expected_amount, expected_count = picture.expected_holds.get(key, (0, 0))
        owner = key.split(":")
        name = {"co": "company", "tk": "token", "dp": "department"}[owner[1]] + f" {owner[2]}"
        fields = ("ha", "hn") if owner[1] == "co" else ("a", "n")
        if amount != expected_amount:
            found.append(Discrepancy(f"{name} amount held by in-flight requests", amount, expected_amount, key, fields[0]))
        if count != expected_count:
            found.append(Discrepancy(f"{name} in-flight requests holding", count, expected_count, key, fields[1], unit="requests"))
    return found


def _company_drifts(company: int, key: str, picture: _RedisPicture, sums: WalletSums, unwritten: int) -> list[Discrepancy]:
    cr, db, out, _ha, _hn = picture.companies[key]
    found = []
    expected_out = picture.held[key] + unwritten
    if out != expected_out:
        found.append(Discrepancy(f"company {company} outstanding spend", out, expected_out, key, "out"))
    if cr != sums.posted_credits:
        found.append(Discrepancy(f"company {company} posted credits", cr, sums.posted_credits, key, "cr"))
    if not sums.posted_debits - unwritten <= db <= sums.posted_debits:
        found.append(Discrepancy(f"company {company} posted debits", db, sums.posted_debits, key, "db"))
    return found


def reconcile(*, client: redis.Redis | None = None, repair: bool = True, confirm_delay: float = 0.2) -> list[Discrepancy]:
    """Compare every company and token counter in Redis with PostgreSQL and, with ``repair``,
    correct the drifts a second measurement confirms (see the module docstring for why that is
    safe with requests in flight). Returns the confirmed discrepancies (``repaired`` set on those
    corrected); logs each at ERROR, counts them in ``js:metrics:*`` and alerts the operators.

    Without ``repair`` one measurement is reported and nothing is written. Raises
    ``redis.RedisError`` when Redis cannot be reached."""
    own = client is None
    client = client or redis.Redis.from_url(settings.REDIS_URL)
    try:
        company_keys = sorted(k.decode() for k in client.scan_iter("js:co:*", count=1000))
        owned = sorted(k.decode() for pattern in ("js:tk:*", "js:dp:*") for k in client.scan_iter(pattern, count=1000))
        counters, hold_keys = _spend_counters(owned), _hold_keys(owned)
        first = _measure(client, company_keys, counters, hold_keys)
        if not repair or not first:
            found = list(first.values())
        else:
            time.sleep(confirm_delay)
            second = _measure(client, company_keys, counters, hold_keys)
            found = [_repair(client, d) for spot, d in second.items() if spot in first and first[spot].drift == d.drift]
    finally:
        if own:
            client.close()
    _report(found)
    return found


def _repair(client: redis.Redis, d: Discrepancy) -> Discrepancy:
    """Correct one confirmed drift: raise a lagging cr/db (max-merge), otherwise subtract the drift
    (a hold's amount or count included)."""
    if d.field in ("cr", "db") and d.drift < 0:
        target = d.expected
        done = client.eval(_RAISE, 1, d.key, d.field, target)
    else:
        done = client.eval(_ADJUST, 1, d.key, d.field, -d.drift)
    return Discrepancy(d.what, d.redis_value, d.expected, d.key, d.field, repaired=bool(done), unit=d.unit)


def _report(found: list[Discrepancy]) -> None:
    if not found:
        return
    for discrepancy in found:
        logger.error("reconciliation: %s", discrepancy)
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        pipe = client.pipeline()
        pipe.incrby(MISMATCH_METRIC, len(found))
        pipe.incrby(REPAIRED_METRIC, sum(d.repaired for d in found))
        pipe.execute()
    except redis.RedisError:
        logger.exception("reconciliation: could not count the mismatch metric")
    finally:
        client.close()
    notify_operators(subject=f"Jetstream: {len(found)} spend counter(s) disagreed with the ledger",
                     lines=[str(d) for d in found])
