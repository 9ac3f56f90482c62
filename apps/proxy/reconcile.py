"""Reconciliation: the proxy's Redis counters against PostgreSQL (the truth).

Report-only on purpose: it never rewrites a counter (a correction racing live traffic could
loosen a limit); a discrepancy is logged for the operator with both values.

What must hold, for every company and token:
* company ``out`` = open reservations + charges in usage events not yet written;
* company ``cr``/``db`` = the wallet's posted credits/debits, once the writer has merged them
  (``db`` may lag by the unwritten charges, never lead);
* token total = its written usage (Σ sell_cost) + open reservations + unwritten charges.

In-flight work is read from Redis itself: the reservations set, the stream entries not yet delivered
to the writer, and those delivered but not acknowledged. A counter that changes while it is
being checked is skipped for this round, not reported.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import cast

import orjson
import redis
from django.conf import settings
from django.db.models import Sum

from apps.billing.models import UsageRecord
from apps.billing.usage import UsageEvent
from apps.billing.wallets import wallet_sums

from . import redis_scripts
from .metering import GROUP

logger = logging.getLogger("jetstream.reconcile")


@dataclass(frozen=True)
class Discrepancy:
    """One counter that disagrees with PostgreSQL: what it is, its Redis value and the value
    PostgreSQL implies (both micro-RUB)."""

    what: str
    redis_value: int
    expected: int

    def __str__(self) -> str:
        return f"{self.what}: Redis {self.redis_value}, expected {self.expected} (micro-RUB)"


def _in_flight(client: redis.Redis) -> tuple[dict[str, int], dict[int, int], dict[int, int]]:
    """(reserved amounts by counter key, unwritten charges by company, unwritten charges by token)."""
    held: dict[str, int] = defaultdict(int)
    for member in cast(list[bytes], client.zrange(redis_scripts.RESERVATIONS_KEY, 0, -1)):
        reservation = orjson.loads(member)
        for key in reservation["keys"]:
            held[key] += reservation["amount"]
    unwritten_company: dict[int, int] = defaultdict(int)
    unwritten_token: dict[int, int] = defaultdict(int)
    try:
        groups = {g["name"].decode(): g for g in client.xinfo_groups(redis_scripts.STREAM_KEY)}
    except redis.ResponseError:  # no stream yet: nothing unwritten
        return held, unwritten_company, unwritten_token
    group = groups.get(GROUP)
    start = b"-" if group is None else b"(" + group["last-delivered-id"]
    entries = list(cast(list, client.xrange(redis_scripts.STREAM_KEY, start, "+")))  # not yet delivered to a writer
    if group is not None:
        for pending in client.xpending_range(redis_scripts.STREAM_KEY, GROUP, "-", "+", 100_000):
            entries += cast(list, client.xrange(redis_scripts.STREAM_KEY, pending["message_id"], pending["message_id"]))
    events = [UsageEvent.decode(fields[b"e"]) for _, fields in entries if fields]
    # A writer may have committed an entry and not yet acknowledged it: its charge is already in
    # the usage records (so not unwritten for the token), but not yet out of the company's `out`.
    committed = set(UsageRecord.objects.filter(request_id__in=[e.request_id for e in events]).values_list("request_id", flat=True))
    for event in events:
        if event.sell_cost and event.company_id is not None:
            unwritten_company[event.company_id] += event.sell_cost
            if event.request_id not in committed and event.token_id is not None:
                unwritten_token[event.token_id] += event.sell_cost
    return held, unwritten_company, unwritten_token


def reconcile(*, client: redis.Redis | None = None) -> list[Discrepancy]:
    """Compare every company and token counter in Redis with PostgreSQL; log and return what
    differs (nothing is rewritten). Raises ``redis.RedisError`` when Redis cannot be reached."""
    own = client is None
    client = client or redis.Redis.from_url(settings.REDIS_URL)
    found: list[Discrepancy] = []
    try:
        company_keys = sorted(k.decode() for k in client.scan_iter("js:co:*", count=1000))
        token_keys = sorted(k.decode() for k in client.scan_iter("js:tk:*:total", count=1000))
        before = _snapshot(client, company_keys, token_keys)
        held, unwritten_company, unwritten_token = _in_flight(client)
        companies = [int(k.rsplit(":", 1)[1]) for k in company_keys]
        ledger = wallet_sums(companies)
        tokens = [int(k.split(":")[2]) for k in token_keys]
        written = dict(UsageRecord.objects.filter(token_id__in=tokens).values("token_id").annotate(total=Sum("sell_cost"))
                       .values_list("token_id", "total"))
        after = _snapshot(client, company_keys, token_keys)
        for company, key in zip(companies, company_keys, strict=True):
            if before[key] != after[key] or company not in ledger:
                continue  # moved while we looked, or a wallet Redis knows and PostgreSQL does not (reported below)
            cr, db, out = before[key]
            posted_credits, posted_debits, _ = ledger[company]
            expected_out = held.get(key, 0) + unwritten_company.get(company, 0)
            if out != expected_out:
                found.append(Discrepancy(f"company {company} outstanding spend", out, expected_out))
            if cr != posted_credits:
                found.append(Discrepancy(f"company {company} posted credits", cr, posted_credits))
            if not posted_debits - unwritten_company.get(company, 0) <= db <= posted_debits:
                found.append(Discrepancy(f"company {company} posted debits", db, posted_debits))
        for token, key in zip(tokens, token_keys, strict=True):
            if before[key] != after[key]:
                continue
            expected = (written.get(token) or 0) + held.get(key, 0) + unwritten_token.get(token, 0)
            if before[key] != expected:
                found.append(Discrepancy(f"token {token} total spend", before[key], expected))
    finally:
        if own:
            client.close()
    for discrepancy in found:
        logger.warning("reconciliation: %s", discrepancy)
    return found


def _snapshot(client: redis.Redis, company_keys: list[str], token_keys: list[str]) -> dict:
    pipe = client.pipeline(transaction=True)  # one consistent read of every counter
    for key in company_keys:
        pipe.hmget(key, "cr", "db", "out")
    for key in token_keys:
        pipe.get(key)
    values = pipe.execute()
    snapshot: dict = {}
    for key, value in zip(company_keys, values[:len(company_keys)], strict=True):
        snapshot[key] = tuple(int(v or 0) for v in value)
    for key, value in zip(token_keys, values[len(company_keys):], strict=True):
        snapshot[key] = int(value or 0)
    return snapshot
