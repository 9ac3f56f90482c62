"""The usage event's one definition, and billing's door for writing it (real PostgreSQL).

The meter writer's side (reading the stream, acknowledging once, reclaiming) is tested in
tests/proxy/test_metering.py.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import orjson
import pytest
from django.db import OperationalError

from apps.billing import services
from apps.billing.models import Transfer, TransferKind, UsageRecord, UsageStatus
from apps.billing.usage import MalformedUsageEvent, UsageEvent
from apps.billing.usage_records import RecordOutcome, RefusedEvent, record_usage_batch
from apps.billing.wallets import WalletSums, company_wallet_sums, wallet_sums
from tests.billing.conftest import RUB

T0 = 1_780_000_000.25  # Unix seconds


def usage(books, request_id: str, *, sell: int = 0, buy: int = 0, **fields) -> UsageEvent:
    fields = {"status": UsageStatus.OK, "company_id": books.company.pk, "supplier_id": books.supplier.pk,
              "model_name": "gpt-4o-mini", "input_tokens": 1000, "output_tokens": 200, **fields}
    return UsageEvent(request_id=request_id, endpoint="chat", http_status=200, started_at=T0, finished_at=T0 + 1.5,
                      sell_cost=sell, buy_cost=buy, latency_ms=1500, ttft_ms=300, client_ip="192.0.2.7", **fields)


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


# --- normalisation: every value fits its column ----------------------------------------------

INT32, INT16, INT64 = 2**31 - 1, 2**15 - 1, 2**63 - 1
MODEL_NAME_MAX = UsageRecord._meta.get_field("model_name").max_length
ERROR_CODE_MAX = UsageRecord._meta.get_field("error_code").max_length


def bare(**fields) -> UsageEvent:
    return UsageEvent(**{"request_id": "req_n", "endpoint": "chat", "status": "ok", "http_status": 200, "started_at": T0,
                         "finished_at": T0 + 1, **fields})


@pytest.mark.parametrize(("field", "raw", "expected"), [
    # text PostgreSQL refuses: NUL and lone surrogates become U+FFFD, so the record shows something was there
    ("model_name", "demo\x00chat", "demo\ufffdchat"),
    ("error_code", "bad\x00code", "bad\ufffdcode"),
    ("error_type", "x\ud800y", "x\ufffdy"),
    ("endpoint", "\x00", "\ufffd"),
    ("request_id", "req\x00\udfff", "req\ufffd\ufffd"),
    # cut to the column's max_length (read from UsageRecord)
    ("model_name", "m" * 1000, "m" * MODEL_NAME_MAX),
    ("error_code", "é" * 100, "é" * ERROR_CODE_MAX),
    # wrong types: a number as its digits, anything else ""
    ("error_code", 429, "429"),
    ("model_name", ["a"], ""),
    ("model_name", None, ""),
    ("status", UsageStatus.OK, "ok"),
    # addresses inet refuses
    ("client_ip", "not-an-ip", None),
    ("client_ip", "10.0.0.1, 10.0.0.2", None),
    ("client_ip", "fe80::1%eth0", "fe80::1"),
    ("client_ip", 167772161, None),
    ("client_ip", "2001:DB8::1", "2001:db8::1"),
])
def test_it_cleans_text_and_addresses_without_flagging(field, raw, expected):
    event = bare(**{field: raw}).normalised()
    assert getattr(event, field) == expected
    assert type(getattr(event, field)) in (str, type(None))
    assert event.usage_clamped is False


@pytest.mark.parametrize(("field", "raw", "expected"), [
    ("output_tokens", 2**31, INT32),  # the issue's upstream usage
    pytest.param("output_tokens", 10**5000, INT32, id="output_tokens-10**5000"),  # beyond what Python will print
    ("input_tokens", 2**64, INT32),
    ("cached_tokens", -1, 0),
    ("latency_ms", 10**30, INT32),
    ("ttft_ms", -5, 0),
    ("http_status", 70_000, INT16),
    ("http_status", -1, 0),
    ("sell_cost", 2**63, INT64),
    ("buy_cost", -300, 0),  # the table's CHECK: costs are never negative
    ("fx_rub_per_unit", -(2**70), -(2**63)),
    ("output_tokens", "12", 0),
    ("output_tokens", True, 0),
    ("output_tokens", 1.5, 0),
    ("output_tokens", math.nan, 0),
    ("input_tokens", 1.8446744073709552e19, INT32),  # how orjson reads an integer beyond 64 bits
    ("ttft_ms", "soon", None),
    ("token_id", 2**63, None),  # an id clamped would point at another row
    ("company_id", "4", None),
    ("department_id", 0.5, None),
])
def test_it_clamps_counts_costs_and_ids_to_their_column_and_flags_the_event(field, raw, expected, caplog):
    with caplog.at_level(logging.WARNING, logger="jetstream.meter"):
        event = bare(**{field: raw}).normalised()
    assert getattr(event, field) == expected
    assert event.usage_clamped is True
    assert any(field in r.getMessage() and "req_n" in r.getMessage() for r in caplog.records)


def test_the_log_names_raw_numbers_but_never_a_string_from_a_numeric_field(caplog):
    with caplog.at_level(logging.WARNING, logger="jetstream.meter"):
        bare(company_id="sk-live-0123456789", output_tokens=2**31, input_tokens=10**5000).normalised()
    (message,) = [r.getMessage() for r in caplog.records]
    assert "sk-live" not in message
    assert "company_id=<str>" in message and "output_tokens=2147483648" in message
    assert "input_tokens=<int of 16610 bits>" in message


@pytest.mark.parametrize("raw", [math.nan, math.inf, -math.inf, -1.0, 1e20, "2026-01-01", True])
def test_a_time_that_is_no_unix_time_becomes_now(raw):
    before = time.time()
    event = bare(started_at=raw, finished_at=raw).normalised()
    assert before <= event.started_at <= event.finished_at <= time.time()
    assert event.usage_clamped is True


def test_a_normal_event_is_left_as_it_is():
    event = bare(token_id=3, company_id=4, input_tokens=INT32, sell_cost=INT64, http_status=INT16, client_ip="192.0.2.7",
                 model_name="m" * MODEL_NAME_MAX, finished_at=None)
    assert event.normalised() == dataclasses.replace(event, finished_at=T0)
    assert event.normalised().normalised() == event.normalised()


def test_the_proxys_events_take_the_fast_path_with_a_status_enum(monkeypatch):
    # The proxy passes UsageStatus members (a str subclass): they fit their column as they are, so
    # encoding must not fall back to normalising every field (twice per proxied request).
    event = bare(status=UsageStatus.OK, token_id=3, company_id=4, client_ip="192.0.2.7", ttft_ms=12)

    def refuse(self):
        raise AssertionError("normalised() ran for an event that fits")

    monkeypatch.setattr(UsageEvent, "normalised", refuse)
    assert orjson.loads(event.encode())["status"] == "ok"


def test_encoding_normalises_what_json_could_not_even_carry():
    # orjson refuses integers beyond 64 bits and lone surrogates; NaN would become null.
    event = bare(output_tokens=2**70, error_code="a\ud800", started_at=math.nan, model_name="demo\x00chat")
    decoded = UsageEvent.decode(event.encode())
    assert (decoded.output_tokens, decoded.error_code, decoded.model_name) == (INT32, "a\ufffd", "demo\ufffdchat")
    assert math.isfinite(decoded.started_at) and decoded.usage_clamped is True


@pytest.mark.parametrize("raw", [
    b'{"request_id": "req_f", "started_at": NaN, "output_tokens": 1e400}',
    b'{"request_id": "req_f", "started_at": 5, "model_name": "\\ud800", "output_tokens": 99999999999999999999999}',
    b'{"request_id": "req_f", "started_at": 5, "model_name": "caf\xe9"}',
    b'{"rid": "req_f", "t0": 5, "mn": "x\\u0000y", "ot": 4294967296, "ip": "nope", "http": 99999}',
])
def test_it_decodes_and_normalises_entries_another_writer_made(raw):
    event = UsageEvent.decode(raw)
    assert event.request_id == "req_f"
    assert "\x00" not in event.model_name and 0 <= event.output_tokens <= INT32 and math.isfinite(event.started_at)
    assert isinstance(event.model_name.encode("utf-8"), bytes)  # raises on a lone surrogate


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


# --- the door: poison never blocks a batch ---------------------------------------------------

def test_the_issues_poison_events_are_recorded_beside_the_others(books):
    services.top_up(company=books.company, amount=RUB, idempotency_id="invoice:1")
    events = [usage(books, "req_ok_1", sell=100, buy=90),
              usage(books, "req_nul_model", status=UsageStatus.INVALID, model_name="demo\x00chat", error_code="model_not_found"),
              usage(books, "req_huge_usage", sell=200, buy=180, output_tokens=2**31),
              usage(books, "req_nul_code", status=UsageStatus.UPSTREAM_ERROR, error_type="invalid_request_error",
                    error_code="bad\x00code"),
              usage(books, "req_ok_2", sell=300, buy=270)]
    outcome = record_usage_batch(events=events)
    assert outcome == RecordOutcome(written=("req_ok_1", "req_nul_model", "req_huge_usage", "req_nul_code", "req_ok_2"))
    records = {r.request_id: r for r in UsageRecord.objects.all()}
    assert records["req_nul_model"].model_name == "demo\ufffdchat"
    assert (records["req_huge_usage"].output_tokens, records["req_huge_usage"].usage_clamped) == (INT32, True)
    assert records["req_nul_code"].error_code == "bad\ufffdcode"
    assert [r.usage_clamped for r in (records["req_ok_1"], records["req_nul_model"], records["req_ok_2"])] == [False] * 3
    assert services.balance(books.wallet).posted == RUB - 600
    assert services.verify_ledger() == []


def test_an_event_the_database_refuses_on_its_own_is_isolated_and_returned(books, caplog):
    services.top_up(company=books.company, amount=RUB, idempotency_id="invoice:1")
    # No such token: the record's foreign key refuses it, with or without its charge.
    good = [usage(books, f"req_{i}", sell=10, buy=9) for i in range(7)]
    events = [*good[:5], usage(books, "req_ghost_token", sell=50, buy=45, token_id=987_654), *good[5:]]
    with caplog.at_level(logging.WARNING, logger="jetstream.meter"):
        outcome = record_usage_batch(events=events)
    assert outcome.written == tuple(e.request_id for e in good)
    assert outcome.refused == (RefusedEvent(index=5, request_id="req_ghost_token", error="IntegrityError"),)
    assert outcome.charges_refused == ()
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == {e.request_id for e in good}
    assert not Transfer.objects.filter(idempotency_id__startswith="usage:req_ghost_token:").exists()
    assert services.balance(books.wallet).posted == RUB - 70
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("req_ghost_token" in m and "IntegrityError" in m for m in errors)
    assert services.verify_ledger() == []


def test_an_unknown_supplier_leaves_the_record_without_its_charge(books):
    services.top_up(company=books.company, amount=RUB, idempotency_id="invoice:1")
    outcome = record_usage_batch(events=[usage(books, "req_a", sell=10, buy=9),
                                         usage(books, "req_no_payable", sell=20, buy=18, supplier_id=987_654)])
    assert outcome == RecordOutcome(written=("req_a", "req_no_payable"), charges_refused=("req_no_payable",))
    assert UsageRecord.objects.get(request_id="req_no_payable").error_code == "charge_refused_by_ledger"
    assert services.verify_ledger() == []


def test_a_placeholder_and_the_real_event_in_one_batch_are_both_written(books):
    # The sweeper gave up on a slow request, then it settled: both events reach one batch, and one
    # INSERT … ON CONFLICT DO UPDATE may not touch a row twice.
    services.top_up(company=books.company, amount=RUB, idempotency_id="invoice:1")
    lost = usage(books, "req_slow", status=UsageStatus.FAILED, error_code="gateway_lost")
    outcome = record_usage_batch(events=[usage(books, "req_a", sell=5), lost, usage(books, "req_slow", sell=300, buy=250)])
    assert outcome.written == ("req_a", "req_slow", "req_slow") and outcome.refused == ()
    record = UsageRecord.objects.get(request_id="req_slow")
    assert (record.status, record.error_code, record.sell_cost) == ("ok", "", 300)
    assert services.balance(books.wallet).posted == RUB - 305
    assert services.verify_ledger() == []


def test_a_failure_of_the_database_itself_is_not_taken_for_a_refusal():
    from apps.billing.usage_records import _refused_by_database

    assert not _refused_by_database(OperationalError("connection lost"))
    assert not _refused_by_database(RuntimeError("a bug"))


def test_a_cost_beyond_bigint_is_recorded_but_not_posted(books, caplog):
    # Clamped to bigint's ceiling it is no amount anyone owes, and posted it would leave the
    # payable's running sums no room: every later charge to it would overflow.
    services.top_up(company=books.company, amount=RUB, idempotency_id="invoice:1")
    events = [usage(books, "req_absurd", sell=10, buy=2**70), usage(books, "req_after", sell=20, buy=18)]
    with caplog.at_level(logging.ERROR, logger="jetstream.meter"):
        assert record_usage_batch(events=events) == RecordOutcome(written=("req_absurd", "req_after"))
    absurd = UsageRecord.objects.get(request_id="req_absurd")
    assert (absurd.sell_cost, absurd.buy_cost, absurd.usage_clamped) == (10, INT64, True)
    # The company's side was a real charge (the proxy caps it at the reservation): posted.
    assert Transfer.objects.get(idempotency_id="usage:req_absurd:sell").amount == 10
    assert not Transfer.objects.filter(idempotency_id="usage:req_absurd:buy").exists()
    assert Transfer.objects.get(idempotency_id="usage:req_after:buy").amount == 18
    assert services.balance(books.payable).posted == 18
    assert services.balance(books.wallet).posted == RUB - 30
    assert [r.getMessage() for r in caplog.records if "req_absurd" in r.getMessage()] == [
        "usage event req_absurd: a cost beyond the ledger's range is recorded (usage_clamped) but not posted"]
    assert services.verify_ledger() == []
