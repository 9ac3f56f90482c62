"""Fuzz: usage events carrying every value PostgreSQL can refuse, mixed with good ones, through the
real stream (Redis) and the meter writer into the real ledger (PostgreSQL).

Whatever an event holds — NUL or a lone surrogate in any text field, strings far over their column,
integers beyond int16/int32/int64, negative counts and costs, NaN and infinite times, addresses
``inet`` refuses, the wrong JSON type anywhere — and whether a current proxy encoded it
(``UsageEvent.encode``) or another writer put raw JSON in the stream, every request gets exactly one
record, the charges land, the ledger verifies, nothing stays pending, and only events the database
refuses for what they point at (an unknown token) are set aside in the dead-letter stream.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import redis
from django.conf import settings

from apps.billing import services
from apps.billing.models import Transfer, UsageRecord
from apps.billing.usage import UsageEvent
from apps.proxy import redis_scripts
from apps.proxy.metering import DEAD_LETTER_KEY, GROUP, MeterWriter
from tests.billing.conftest import RUB
from tests.proxy.conftest import flush_gateway_keys

T0 = 1_780_000_000.5
REQUEST_ID_MAX = UsageRecord._meta.get_field("request_id").max_length
INT64 = 2**63 - 1

WRONG_TYPES = [None, True, [1], {"a": 1}, 1.5]
BAD = {
    "text": ["\x00", "a\x00b", "\ud800", "x\udfffy", "é" * 5_000, "x" * 70_000, 12345, 3.25, *WRONG_TYPES],
    "int32": [2**31, 2**32, 2**63, 2**64, 2**70, -1, -(2**31) - 1, -(2**70), math.nan, math.inf, -math.inf, "12", *WRONG_TYPES],
    "int16": [2**15, 70_000, 2**63, -1, -(2**40), math.nan, "200", *WRONG_TYPES],
    "int64": [2**63, 2**64, 2**80, -1, -(2**63) - 1, math.inf, "10", *WRONG_TYPES],
    "id": [2**63, 2**70, -(2**64), "4", math.nan, *WRONG_TYPES],  # never a valid id: normalised to None
    "time": [math.nan, math.inf, -math.inf, -1.0, 1e20, 2**70, True, 1e400],
    "ip": ["not-an-ip", "999.1.1.1", "1.2.3.4/33", "", "fe80::1%eth0", "1.2.3.4, 5.6.7.8", "\x00", 167772161, *WRONG_TYPES],
    "bool": ["yes", 2, *WRONG_TYPES],
}
FIELDS = {
    "endpoint": "text", "model_name": "text", "status": "text", "error_type": "text", "error_code": "text",
    "input_tokens": "int32", "output_tokens": "int32", "cached_tokens": "int32", "latency_ms": "int32", "ttft_ms": "int32",
    "http_status": "int16", "fx_rub_per_unit": "int64", "sell_cost": "int64", "buy_cost": "int64",
    "model_id": "id", "provider_id": "id", "supplier_key_id": "id", "price_id": "id", "department_id": "id",
    "started_at": "time", "finished_at": "time", "client_ip": "ip", "stream": "bool", "usage_counted_locally": "bool",
}
# The integer range each numeric field's column takes (costs: the table's CHECK keeps them ≥ 0).
RANGES = {"int32": (0, 2**31 - 1), "int16": (0, 2**15 - 1), "int64": (0, 2**63 - 1), "id": (1, 2**63 - 1)}
FX_RANGE = (-(2**63), 2**63 - 1)
SHORT = {"request_id": "rid", "endpoint": "ep", "token_id": "tok", "company_id": "co", "department_id": "dp", "model_name": "mn",
         "model_id": "m", "provider_id": "pv", "supplier_key_id": "k", "supplier_id": "sup", "price_id": "pr",
         "fx_rub_per_unit": "fx", "stream": "st", "input_tokens": "it", "output_tokens": "ot", "cached_tokens": "ct",
         "usage_counted_locally": "loc", "sell_cost": "sell", "buy_cost": "buy", "status": "status", "http_status": "http",
         "error_type": "et", "error_code": "ec", "latency_ms": "lat", "ttft_ms": "ttft", "client_ip": "ip",
         "started_at": "t0", "finished_at": "t1"}


@pytest.fixture
def meter(books):
    flush_gateway_keys()
    services.top_up(company=books.company, amount=1_000 * RUB, idempotency_id="invoice:fuzz")
    writer = MeterWriter(consumer="fuzz", block_ms=10, batch_size=64)
    writer.ensure_group()
    # The company's funds as the proxy keeps them: each acknowledgement lowers `out` by the entry's charge.
    writer.redis.hset(redis_scripts.company_key(books.company.pk), mapping={"cr": 1_000 * RUB, "db": 0, "lim": 0, "out": 0})
    yield writer
    writer.redis.close()
    flush_gateway_keys()


def good_event(books, index: int, rng: random.Random) -> dict:
    return {"request_id": f"req_{index}", "endpoint": "chat", "status": "ok", "http_status": 200, "started_at": T0 + index,
            "finished_at": T0 + index + 0.5, "company_id": books.company.pk, "supplier_id": books.supplier.pk,
            "model_name": "gpt-4o-mini", "input_tokens": rng.randrange(1, 5_000), "output_tokens": rng.randrange(0, 5_000),
            "sell_cost": rng.randrange(0, 10_000), "buy_cost": rng.randrange(0, 9_000), "latency_ms": 40,
            "client_ip": "192.0.2.7"}


def poisoned(event: dict, rng: random.Random) -> tuple[dict, bool]:
    """The event with 1-6 fields replaced by values PostgreSQL would refuse; whether one of them is clamped."""
    clamped = False
    for name in rng.sample(sorted(FIELDS), rng.randint(1, 6)):
        kind = FIELDS[name]
        value = event[name] = rng.choice(BAD[kind])
        if kind == "time":
            clamped = True  # none of them is a Unix time
        elif kind in RANGES and value is not None:
            low, high = FX_RANGE if name == "fx_rub_per_unit" else RANGES[kind]
            clamped = clamped or not (type(value) is int and low <= value <= high)
    if rng.random() < 0.2:  # the request id itself: NUL, a surrogate, far over its column
        event["request_id"] = event["request_id"] + rng.choice(["\x00", "\ud800", "_" + "y" * 200])
    return event, clamped


def raw_entry(event: dict, rng: random.Random) -> bytes:
    """As a current proxy writes it, or as another writer might have: stdlib JSON (NaN, big ints,
    lone surrogates escaped), sometimes in the old short-key form."""
    how = rng.choice(["encode", "json", "short"])
    if how == "encode":
        return UsageEvent(**event).encode()
    if how == "short":
        event = {SHORT[k]: v for k, v in event.items()}
    return json.dumps(event).encode()


def stored_request_id(request_id: str) -> str:
    return request_id.replace("\x00", "\ufffd").replace("\ud800", "\ufffd")[:REQUEST_ID_MAX]


def drain(writer: MeterWriter) -> None:
    for _ in range(1_000):
        if writer.run_once() == 0 and writer.redis.xpending(redis_scripts.STREAM_KEY, GROUP)["pending"] == 0:
            return
    raise AssertionError("the meter did not drain the stream")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_poison_never_stops_the_meter_and_every_request_gets_one_record(books, meter, seed):
    rng = random.Random(seed)
    client = redis.Redis.from_url(settings.REDIS_URL)
    expected: dict[str, bool] = {}  # stored request id → flagged usage_clamped
    refused: set[str] = set()
    refused_sells = 0
    for index in range(240):
        event = good_event(books, index, rng)
        clamped = False
        roll = rng.random()
        if roll < 0.6:
            event, clamped = poisoned(event, rng)
        elif roll < 0.64:
            event["token_id"] = 900_000 + index  # no such token: the database refuses it whatever its values
            refused.add(event["request_id"])
            refused_sells += event["sell_cost"]
        client.xadd(redis_scripts.STREAM_KEY, {"e": raw_entry(event, rng)})
        if event["request_id"] not in refused:
            expected[stored_request_id(event["request_id"])] = clamped
    assert len(expected) + len(refused) == 240  # distinct requests

    drain(meter)

    records = {r.request_id: r for r in UsageRecord.objects.all()}
    assert set(records) == set(expected)
    assert UsageRecord.objects.count() == len(expected)  # one record per request
    assert {r: records[r].usage_clamped for r in records} == expected
    dead = [orjson_request_id(fields) for _, fields in client.xrange(DEAD_LETTER_KEY)]
    assert sorted(dead) == sorted(refused)
    assert client.xpending(redis_scripts.STREAM_KEY, GROUP)["pending"] == 0
    assert services.verify_ledger() == []
    # Every cost recorded is in the ledger once, and nothing else is — but a cost clamped to
    # bigint's ceiling, which is recorded and flagged, never posted.
    assert all(r.usage_clamped for r in records.values() if INT64 in (r.sell_cost, r.buy_cost))
    assert not any(r.error_code == "charge_refused_by_ledger" for r in records.values())
    sells = dict(Transfer.objects.filter(kind="usage").values_list("metadata__request_id", "amount"))
    assert sells == {r.request_id: r.sell_cost for r in records.values() if 0 < r.sell_cost < INT64}
    buys = dict(Transfer.objects.filter(kind="usage_cost").values_list("metadata__request_id", "amount"))
    assert buys == {r.request_id: r.buy_cost for r in records.values() if 0 < r.buy_cost < INT64}
    assert services.balance(books.wallet).posted == 1_000 * RUB - sum(sells.values())
    # Each acknowledgement lowered the proxy's `out` by what was posted (a set-aside event's charge
    # included: it is kept in the dead letter), never by an absurd amount.
    funds = client.hgetall(redis_scripts.company_key(books.company.pk))
    assert int(funds[b"out"]) == -(sum(sells.values()) + refused_sells)
    assert int(funds[b"db"]) == sum(sells.values())
    for record in records.values():
        for name in ("request_id", "endpoint", "model_name", "status", "error_type", "error_code"):
            value = getattr(record, name)
            assert "\x00" not in value and len(value) <= UsageRecord._meta.get_field(name).max_length
    client.close()


def orjson_request_id(fields: dict[bytes, bytes]) -> str:
    event = json.loads(fields[b"e"])
    return event.get("request_id", event.get("rid"))
