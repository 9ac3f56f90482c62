"""The daily rollup (UsageDay): kept by the database on every write of usage records — the meter's
batches, a placeholder replaced by the real event, COPY, deletes — in the company's time zone; and
rebuilt from the records to the same figures."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from apps.billing import rollups
from apps.billing.models import UsageDay, UsageRecord
from apps.billing.usage import UsageEvent
from apps.billing.usage_records import record_usage_batch

pytestmark = pytest.mark.django_db

UTC = dt.UTC
VLADIVOSTOK = zoneinfo.ZoneInfo("Asia/Vladivostok")


@pytest.fixture
def world(db):
    from apps.accounts.models import Company, Department
    from apps.billing import services
    from apps.providers.models import Model, Provider
    from apps.proxy.models import ApiToken

    acme = Company.objects.create(slug="acme", name="Acme")  # Europe/Moscow
    far = Company.objects.create(slug="far", name="Far East", time_zone="Asia/Vladivostok")
    rnd = Department.objects.create(company=acme, slug="rnd", name="R&D")
    provider = Provider.objects.create(slug="mock", name="Mock", kind="mock")
    model_a = Model.objects.create(name="model-a", provider=provider, upstream_model="a")
    model_b = Model.objects.create(name="model-b", provider=provider, upstream_model="b")
    tokens = {}
    for name, company, department in (("ci", acme, rnd), ("bot", acme, None), ("far", far, None)):
        tokens[name] = ApiToken(company=company, department=department, name=name)
        tokens[name].set_secret(f"js-{name}-0123456789abcdef0123456789abcdef")
        tokens[name].save()
    for company in (acme, far):
        services.top_up(company=company, amount=100_000_000, idempotency_id=f"rollup-top-up-{company.pk}")
    return {"acme": acme, "far_east": far, "rnd": rnd, "a": model_a, "b": model_b, **tokens}


def event(world, rid, token, model, at, *, sell=1000, buy=600, status="ok", tokens_in=10, tokens_out=5, latency=100, error_code=""):
    t = world[token]
    return UsageEvent(request_id=rid, endpoint="chat", status=status, http_status=200 if status == "ok" else 502,
                      started_at=at.timestamp(), finished_at=at.timestamp() + 0.1, token_id=t.pk, company_id=t.company_id,
                      department_id=t.department_id, model_name=world[model].name, model_id=world[model].pk,
                      input_tokens=tokens_in, output_tokens=tokens_out, sell_cost=sell, buy_cost=buy, latency_ms=latency,
                      error_code=error_code)


def rollup(**lookup):
    return sorted(UsageDay.objects.filter(**lookup).values_list("day", "token__name", "model__name", "requests", "errors",
                                                                "input_tokens", "output_tokens", "sell_cost", "buy_cost",
                                                                "latency_ms"))


def test_it_rolls_up_each_batch_per_day_token_and_model_in_the_companys_time_zone(world):
    # 20:30 UTC on 2 Nov is 23:30 in Moscow (the 2nd) and 06:30 on the 3rd in Vladivostok.
    at = dt.datetime(2026, 11, 2, 20, 30, tzinfo=UTC)
    record_usage_batch(events=[
        event(world, "r1", "ci", "a", at),
        event(world, "r2", "ci", "a", at + dt.timedelta(minutes=70), sell=2000, latency=300),
        event(world, "r3", "ci", "b", at, status="upstream_error", sell=0, buy=0, tokens_in=7, tokens_out=0),
        event(world, "r4", "far", "a", at),
    ])
    # r2 is 00:40 on the 3rd in Moscow: another day.
    assert rollup(company=world["acme"]) == [
        (dt.date(2026, 11, 2), "ci", "model-a", 1, 0, 10, 5, 1000, 600, 100),
        (dt.date(2026, 11, 2), "ci", "model-b", 1, 1, 7, 0, 0, 0, 100),
        (dt.date(2026, 11, 3), "ci", "model-a", 1, 0, 10, 5, 2000, 600, 300),
    ]
    assert rollup(company=world["far_east"]) == [(dt.date(2026, 11, 3), "far", "model-a", 1, 0, 10, 5, 1000, 600, 100)]
    # A second batch adds to the same rows; a batch written again (a meter retry) adds nothing.
    again = [event(world, "r5", "ci", "a", at - dt.timedelta(hours=1), sell=500)]
    record_usage_batch(events=again)
    record_usage_batch(events=again)
    assert rollup(company=world["acme"], model=world["a"], day=dt.date(2026, 11, 2)) == [
        (dt.date(2026, 11, 2), "ci", "model-a", 2, 0, 20, 10, 1500, 1200, 200)]
    assert UsageDay.objects.get(company=world["acme"], model=world["a"], day=dt.date(2026, 11, 2)).department_id == world["rnd"].pk


def test_a_placeholder_replaced_by_the_real_event_is_counted_once(world):
    at = dt.datetime(2026, 11, 5, 9, 0, tzinfo=UTC)
    record_usage_batch(events=[event(world, "lost-1", "bot", "a", at, status="failed", sell=0, buy=0, tokens_in=0, tokens_out=0,
                                     error_code="gateway_lost")])
    assert rollup(company=world["acme"]) == [(dt.date(2026, 11, 5), "bot", "model-a", 1, 1, 0, 0, 0, 0, 100)]
    record_usage_batch(events=[event(world, "lost-1", "bot", "a", at, sell=4242)])
    assert rollup(company=world["acme"]) == [(dt.date(2026, 11, 5), "bot", "model-a", 1, 0, 10, 5, 4242, 600, 100)]


def test_deleted_records_leave_the_rollup(world):
    at = dt.datetime(2026, 11, 6, 9, 0, tzinfo=UTC)
    record_usage_batch(events=[event(world, "d1", "bot", "a", at), event(world, "d2", "bot", "a", at)])
    UsageRecord.objects.filter(request_id="d1").delete()
    assert rollup(company=world["acme"]) == [(dt.date(2026, 11, 6), "bot", "model-a", 1, 0, 10, 5, 1000, 600, 100)]


def test_rebuild_gives_the_figures_the_triggers_kept(world):
    base = dt.datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
    record_usage_batch(events=[event(world, f"b{i}", ("ci", "bot", "far")[i % 3], ("a", "b")[i % 2], base + dt.timedelta(hours=7 * i),
                                     sell=100 + i, status="ok" if i % 5 else "invalid") for i in range(60)])
    kept = rollup()
    removed_all = rollups.rebuild_usage_days()
    assert removed_all.removed == removed_all.written == len(kept)
    assert rollup() == kept
    # One company from a day on: the other company's rows and the earlier days stay as they are.
    UsageDay.objects.filter(company=world["acme"], day__gte=dt.date(2026, 11, 10)).update(sell_cost=0)
    UsageDay.objects.filter(company=world["far_east"]).update(sell_cost=1)
    rollups.rebuild_usage_days(company_id=world["acme"].pk, since=dt.date(2026, 11, 10))
    assert rollup(company=world["acme"]) == [row for row in kept if row[1] in ("ci", "bot")]
    assert set(UsageDay.objects.filter(company=world["far_east"]).values_list("sell_cost", flat=True)) == {1}


def test_usage_sums_reads_whole_days_from_the_rollup_and_edges_from_the_records(world, django_assert_num_queries):
    base = dt.datetime(2026, 11, 1, 0, 30, tzinfo=UTC)
    events = [event(world, f"s{i}", ("ci", "far")[i % 2], "a", base + dt.timedelta(hours=5 * i), sell=10 ** (i % 4)) for i in range(40)]
    record_usage_batch(events=events)
    start, end = dt.datetime(2026, 11, 2, 13, 17, tzinfo=UTC), dt.datetime(2026, 11, 8, 2, 5, tzinfo=UTC)
    expected = sum(e.sell_cost for e in events if start.timestamp() <= e.started_at < end.timestamp())
    # Proof the rollup is read: doubled rollup rows double the whole days' share only.
    with django_assert_num_queries(1):
        (total,) = rollups.usage_sums(start, end)
    assert total.sell_cost == expected
    acme_only = [e for e in events if e.company_id == world["acme"].pk and start.timestamp() <= e.started_at < end.timestamp()]
    (acme,) = rollups.usage_sums(start, end, by="company", company_id=world["acme"].pk, time_zone="Europe/Moscow")
    assert (acme.requests, acme.sell_cost, acme.label) == (len(acme_only), sum(e.sell_cost for e in acme_only), "Acme")
    UsageDay.objects.update(sell_cost=0)
    (zeroed,) = rollups.usage_sums(start, end)
    assert 0 < zeroed.sell_cost < expected


def test_dashboard_periods_come_from_whole_local_days(world):
    today = dt.date(2026, 11, 18)  # a Wednesday
    at = dt.datetime(2026, 11, 18, 10, 0, tzinfo=UTC)
    record_usage_batch(events=[
        event(world, "p1", "ci", "a", at, sell=1),                                # today
        event(world, "p2", "ci", "a", at - dt.timedelta(days=2), sell=10),        # Monday
        event(world, "p3", "ci", "b", at - dt.timedelta(days=3), sell=100),       # last Sunday, this month
        event(world, "p4", "bot", "a", at - dt.timedelta(days=18), sell=1000),    # 31 Oct: last month
    ])
    spend = rollups.period_spend(company_id=world["acme"].pk, today=today)
    assert (spend.today, spend.week, spend.month, spend.requests_month) == (1, 11, 111, 3)
    days = rollups.daily_spend(company_id=world["acme"].pk, first=dt.date(2026, 11, 14), last=today)
    assert [(d.day.day, d.sell_cost) for d in days] == [(14, 0), (15, 100), (16, 10), (17, 0), (18, 1)]
    labels, series = rollups.spend_by_day_and_model(company_id=world["acme"].pk, first=dt.date(2026, 11, 15), last=today, top=1)
    assert labels[0] == dt.date(2026, 11, 15) and len(labels) == 4
    assert series == [("model-b", [100, 0, 0, 0]), ("", [0, 10, 0, 1])]


def test_the_command_checks_and_rebuilds_the_rollup(world):
    import io

    from django.core.management import CommandError, call_command

    at = dt.datetime(2026, 11, 7, 9, 0, tzinfo=UTC)
    record_usage_batch(events=[event(world, f"c{i}", ("ci", "far")[i % 2], "a", at + dt.timedelta(hours=i)) for i in range(10)])
    out = io.StringIO()
    call_command("rollup_usage", check=True, stdout=out)
    assert "matches" in out.getvalue()
    UsageDay.objects.filter(company=world["acme"]).update(sell_cost=7)
    with pytest.raises(CommandError, match="differ"):
        call_command("rollup_usage", check=True, company="acme", stdout=io.StringIO())
    call_command("rollup_usage", check=True, company="far", stdout=io.StringIO())  # the other company is right
    call_command("rollup_usage", company="acme", since="2026-11-01", stdout=io.StringIO())
    call_command("rollup_usage", check=True, stdout=io.StringIO())
    with pytest.raises(CommandError, match="no company"):
        call_command("rollup_usage", company="nope", stdout=io.StringIO())


def test_a_cost_clamped_at_bigints_ceiling_saturates_the_rollup_and_never_refuses_a_record(world):
    at = dt.datetime(2026, 11, 8, 9, 0, tzinfo=UTC)
    ceiling = 2**63 - 1
    outcome = record_usage_batch(events=[event(world, "huge", "bot", "a", at, sell=ceiling, buy=ceiling)])
    assert not outcome.refused
    outcome = record_usage_batch(events=[event(world, "after", "bot", "a", at + dt.timedelta(minutes=1), sell=5)])
    assert outcome.written == ("after",) and not outcome.refused
    row = UsageDay.objects.get(company=world["acme"], day=dt.date(2026, 11, 8))
    assert (row.requests, row.sell_cost) == (2, ceiling)
    (total,) = rollups.usage_sums(at - dt.timedelta(days=2), at + dt.timedelta(days=2))
    assert total.requests == 2 and total.sell_cost >= ceiling
    assert rollups.check_usage_days() == 0
