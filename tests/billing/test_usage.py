"""The usage event's one definition, and billing's door for writing it (real PostgreSQL).

The meter writer's side (reading the stream, acknowledging once, reclaiming) is tested in
tests/proxy/test_metering.py.
"""

from __future__ import annotations

import dataclasses
import logging

import orjson
import pytest

from apps.billing import services
from apps.billing.models import Transfer, TransferKind, UsageRecord, UsageStatus
from apps.billing.usage import MalformedUsageEvent, RecordOutcome, UsageEvent, record_usage_batch
from apps.billing.wallets import WalletSums, company_wallet_sums, wallet_sums
from tests.billing.conftest import RUB

T0 = 1_780_000_000.25  # Unix seconds


def usage(books, request_id: str, *, sell: int = 0, buy: int = 0, **fields) -> UsageEvent:
    fields = {"status": UsageStatus.OK, "company_id": books.company.pk, "supplier_id": books.supplier.pk, **fields}
    return UsageEvent(request_id=request_id, endpoint="chat", http_status=200, started_at=T0, finished_at=T0 + 1.5,
                      model_name="gpt-4o-mini", input_tokens=1000, output_tokens=200, sell_cost=sell, buy_cost=buy,
                      latency_ms=1500, ttft_ms=300, client_ip="192.0.2.7", **fields)


# --- the event ---------------------------------------------------------------------------------

def test_it_round_trips_an_event_through_its_encoding():
    event = UsageEvent(request_id="req_1", endpoint="chat", status=UsageStatus.CLIENT_CLOSED, http_status=200,
                       started_at=T0, finished_at=T0 + 2, token_id=3, company_id=4, department_id=5, model_name="m",
                       model_id=6, provider_id=7, supplier_key_id=8, supplier_id=9, price_id=10, fx_rub_per_unit=92_500_000,
                       stream=True, input_tokens=11, output_tokens=12, cached_tokens=13, usage_counted_locally=True,
                       sell_cost=14, buy_cost=15, error_type="t", error_code="c", latency_ms=16, ttft_ms=17, client_ip="::1")
    decoded = UsageEvent.decode(event.encode())
    assert decoded == event
    assert UsageEvent.decode(event.encode().decode()) == event  # str as well as bytes
    assert set(orjson.loads(event.encode())) == {f.name for f in dataclasses.fields(UsageEvent)}


def test_it_decodes_the_legacy_short_key_form():
    legacy = orjson.dumps({"rid": "req_old", "ep": "chat", "tok": 1, "co": 2, "dp": None, "mn": "gpt-4o-mini", "m": 3, "pv": 4,
                           "k": 5, "sup": 6, "pr": 7, "fx": 92_500_000, "st": True, "it": 10, "ot": 5, "ct": 2, "loc": False,
                           "sell": 300, "buy": 250, "status": "ok", "http": 200, "et": "", "ec": "", "lat": 40, "ttft": 9,
                           "ip": "127.0.0.1", "t0": T0, "t1": T0 + 1})
    assert UsageEvent.decode(legacy) == UsageEvent(
        request_id="req_old", endpoint="chat", status="ok", http_status=200, started_at=T0, finished_at=T0 + 1, token_id=1,
        company_id=2, department_id=None, model_name="gpt-4o-mini", model_id=3, provider_id=4, supplier_key_id=5, supplier_id=6,
        price_id=7, fx_rub_per_unit=92_500_000, stream=True, input_tokens=10, output_tokens=5, cached_tokens=2,
        usage_counted_locally=False, sell_cost=300, buy_cost=250, error_type="", error_code="", latency_ms=40, ttft_ms=9,
        client_ip="127.0.0.1")


def test_it_fills_what_a_minimal_event_leaves_out():
    event = UsageEvent.decode(b'{"request_id": "req_min", "started_at": 5.0, "someday": "a field from a newer proxy"}')
    assert (event.endpoint, event.status, event.http_status, event.finished_at) == ("", UsageStatus.FAILED, 0, 5.0)


@pytest.mark.parametrize("raw", [
    b"not json", b"", b"[1, 2]", b'"req_1"', b"{}", b'{"request_id": ""}', b'{"request_id": 7, "started_at": 1}',
    b'{"request_id": "req_1"}', b'{"request_id": "req_1", "started_at": "yesterday"}', b'{"rid": "req_1"}',
])
def test_it_refuses_what_is_not_an_event(raw):
    with pytest.raises(MalformedUsageEvent):
        UsageEvent.decode(raw)


# --- the door ----------------------------------------------------------------------------------

def test_it_writes_one_record_per_event_and_the_sell_and_buy_transfers(books):
    services.top_up(company=books.company, amount=RUB, idempotency_id="invoice:1")
    events = [usage(books, "req_1", sell=300, buy=250), usage(books, "req_2", sell=100), usage(books, "req_free"),
              usage(books, "req_no_company", sell=50, buy=40, company_id=None)]
    outcome = record_usage_batch(events=events)
    assert outcome == RecordOutcome(written=("req_1", "req_2", "req_free", "req_no_company"))
    record = UsageRecord.objects.get(request_id="req_1")
    assert (record.company_id, record.sell_cost, record.buy_cost, record.input_tokens, record.output_tokens) == (
        books.company.pk, 300, 250, 1000, 200)
    assert (record.started_at.timestamp(), record.finished_at.timestamp(), record.ttft_ms, record.client_ip) == (
        T0, T0 + 1.5, 300, "192.0.2.7")
    assert UsageRecord.objects.count() == 4
    transfers = {t.idempotency_id: (t.debit_account_id, t.credit_account_id, t.amount, t.kind, t.status, t.metadata)
                 for t in Transfer.objects.exclude(kind=TransferKind.TOP_UP)}
    assert transfers == {
        "usage:req_1:sell": (books.wallet.pk, books.revenue.pk, 300, "usage", "posted", {"request_id": "req_1"}),
        "usage:req_1:buy": (books.upstream_cost.pk, books.payable.pk, 250, "usage_cost", "posted", {"request_id": "req_1"}),
        "usage:req_2:sell": (books.wallet.pk, books.revenue.pk, 100, "usage", "posted", {"request_id": "req_2"}),
        # No company, nothing to charge; the supplier is still owed what the upstream cost.
        "usage:req_no_company:buy": (books.upstream_cost.pk, books.payable.pk, 40, "usage_cost", "posted",
                                     {"request_id": "req_no_company"}),
    }
    assert services.balance(books.wallet).posted == RUB - 400
    assert services.balance(books.payable).posted == 290
    assert services.verify_ledger() == []


def test_a_redelivered_batch_writes_nothing_twice(books):
    services.top_up(company=books.company, amount=RUB, idempotency_id="invoice:1")
    events = [usage(books, "req_1", sell=300, buy=250), usage(books, "req_2", sell=100, buy=80)]
    record_usage_batch(events=events)
    changed = [dataclasses.replace(e, output_tokens=999, sell_cost=e.sell_cost * 2) for e in events]
    assert record_usage_batch(events=changed) == RecordOutcome(written=("req_1", "req_2"))
    assert UsageRecord.objects.count() == 2
    assert UsageRecord.objects.get(request_id="req_1").output_tokens == 200  # the first write stands
    assert Transfer.objects.exclude(kind=TransferKind.TOP_UP).count() == 4
    assert services.balance(books.wallet).posted == RUB - 400
    assert services.verify_ledger() == []


def test_a_real_event_replaces_the_placeholder_for_a_request_thought_lost(books):
    services.top_up(company=books.company, amount=RUB, idempotency_id="invoice:1")
    lost = usage(books, "req_late", status=UsageStatus.FAILED, error_code="gateway_lost")
    record_usage_batch(events=[lost])
    record_usage_batch(events=[usage(books, "req_late", sell=300, buy=250)])
    record = UsageRecord.objects.get(request_id="req_late")
    assert (record.status, record.error_code, record.sell_cost) == ("ok", "", 300)
    # …but neither a second placeholder nor another real event replaces a real record.
    record_usage_batch(events=[lost])
    record_usage_batch(events=[usage(books, "req_late", sell=1)])
    assert UsageRecord.objects.get(request_id="req_late").sell_cost == 300
    assert services.balance(books.wallet).posted == RUB - 300


def test_a_charge_the_ledger_refuses_is_recorded_and_flagged_without_blocking_the_others(books, caplog):
    services.top_up(company=books.company, amount=1_000, idempotency_id="invoice:1")
    # Counters drifted: the wallet holds 1000 micro-RUB but a charge of 5000 arrives between two good ones.
    events = [usage(books, "req_ok_1", sell=100, buy=90), usage(books, "req_too_big", sell=5_000, buy=4_000),
              usage(books, "req_ok_2", sell=200, buy=180)]
    with caplog.at_level(logging.WARNING, logger="jetstream.meter"):
        outcome = record_usage_batch(events=events)
    assert outcome == RecordOutcome(written=("req_ok_1", "req_too_big", "req_ok_2"), charges_refused=("req_too_big",))
    records = {r.request_id: r for r in UsageRecord.objects.all()}
    assert set(records) == {"req_ok_1", "req_too_big", "req_ok_2"}
    assert records["req_too_big"].error_code == "charge_refused_by_ledger"
    assert records["req_too_big"].sell_cost == 5_000  # what the request cost is kept for the operator
    assert records["req_ok_1"].error_code == records["req_ok_2"].error_code == ""
    assert not Transfer.objects.filter(idempotency_id__startswith="usage:req_too_big:").exists()
    assert services.balance(books.wallet).available == 1_000 - 300
    assert any(r.levelno == logging.ERROR and "req_too_big" in r.getMessage() for r in caplog.records)
    assert services.verify_ledger() == []


def test_a_lone_refused_charge_is_recorded_and_flagged(books):
    outcome = record_usage_batch(events=[usage(books, "req_broke", sell=1)])  # the wallet holds nothing
    assert outcome.charges_refused == ("req_broke",)
    assert UsageRecord.objects.get(request_id="req_broke").error_code == "charge_refused_by_ledger"
    assert not Transfer.objects.filter(idempotency_id__startswith="usage:req_broke:").exists()


def test_an_empty_batch_writes_nothing(books):
    assert record_usage_batch(events=[]) == RecordOutcome(written=())
    assert not UsageRecord.objects.exists()


# --- wallet sums -------------------------------------------------------------------------------

def test_it_reads_wallet_sums_for_the_proxy_counters(books, personas):
    services.top_up(company=books.company, amount=5 * RUB, idempotency_id="invoice:1")
    services.hold(idempotency_id="h", debit=books.wallet, credit=books.revenue, amount=RUB, ttl_seconds=60)
    record_usage_batch(events=[usage(books, "req_1", sell=300)])
    books.wallet.credit_limit = 2 * RUB
    books.wallet.save(update_fields=["credit_limit"])
    sums = wallet_sums([books.company.pk, personas.company_a.pk])
    assert sums == {books.company.pk: WalletSums(posted_credits=5 * RUB, posted_debits=300, limit_less_holds=RUB)}
    assert wallet_sums(None)[books.company.pk] == sums[books.company.pk]
    # Company A has no wallet yet: the proxy's cold start creates it.
    assert company_wallet_sums(personas.company_a.pk) == (0, 0, 0)
    assert services.company_wallet(personas.company_a).pk in {a.pk for a in personas.company_a.ledger_accounts.all()}
