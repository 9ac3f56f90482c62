"""Reports: a worked example computed by hand (two companies in two time zones, two suppliers, two
models, six requests), checked figure by figure; exports in CSV and XLSX; the superadmin's page;
and every report is a fixed number of aggregate queries whatever the number of records."""

from __future__ import annotations

import csv
import datetime as dt
import io
import zoneinfo

import openpyxl
import pytest
from django.utils import timezone

from apps.billing import reports
from apps.billing.reports import Forecast, SpendRow, SupplierEarnings
from apps.billing.resources import ForecastResource, SpendRowResource

MSK = zoneinfo.ZoneInfo("Europe/Moscow")  # the platform's TIME_ZONE in tests: UTC+3
UTC = dt.UTC
NOV = (dt.datetime(2026, 11, 1, tzinfo=MSK), dt.datetime(2026, 12, 1, tzinfo=MSK))


@pytest.fixture
def example(db, settings):
    """The worked example (micro-RUB):

    ====  =========  =========  =====  ===  ===========================  ==========  ==========
    req   company    token      model  sup  started (UTC)                sell        buy
    ====  =========  =========  =====  ===  ===========================  ==========  ==========
    r1    Acme       acme-ci    A      S1   2026-11-02 07:00 (10:00 MSK)  1 250 000     900 000
    r2    Acme       acme-ci    B      S2   2026-11-02 20:30 (23:30 MSK)    300 000     200 000
    r3    Acme       acme-bot   A      S1   2026-11-02 21:30 (00:30 3rd)  2 000 000   1 500 000
    r4    Borealis   bor-1      A      S2   2026-11-10 12:00              5 000 000   4 000 000
    r5    Borealis   bor-1      B      —    2026-11-10 13:00                 50 000           0
    r6    Acme       acme-ci    A      S1   2026-10-31 20:59 (23:59 MSK)  7 000 000           1
    ====  =========  =========  =====  ===  ===========================  ==========  ==========

    acme-ci is in department R&D, acme-bot in Sales; Borealis has none and lives in Vladivostok
    (UTC+10). Written through billing's door (``record_usage_batch``), so the ledger has the
    sell and buy transfers too (created now, whatever the request's time).
    """
    from apps.accounts.models import Company, Department, Supplier
    from apps.billing import services
    from apps.billing.models import AccountKind, TransferKind
    from apps.billing.usage import UsageEvent
    from apps.billing.usage_records import ledger_accounts, record_usage_batch
    from apps.providers.models import Model, Provider, SupplierKey
    from apps.proxy.models import ApiToken

    ledger_accounts.clear()
    acme = Company.objects.create(slug="acme", name="Acme")
    borealis = Company.objects.create(slug="borealis", name="Borealis", time_zone="Asia/Vladivostok")
    rnd = Department.objects.create(company=acme, slug="rnd", name="R&D")
    sales = Department.objects.create(company=acme, slug="sales", name="Sales")
    s1 = Supplier.objects.create(slug="s1", name="North Keys")
    s2 = Supplier.objects.create(slug="s2", name="South Keys")
    provider = Provider.objects.create(slug="mock", name="Mock", kind="mock")
    model_a = Model.objects.create(name="model-a", provider=provider, upstream_model="a")
    model_b = Model.objects.create(name="model-b", provider=provider, upstream_model="b")
    k1 = SupplierKey.objects.create(supplier=s1, provider=provider, name="k1")
    k2 = SupplierKey.objects.create(supplier=s2, provider=provider, name="k2")
    tokens = {}
    for name, company, department in (("acme-ci", acme, rnd), ("acme-bot", acme, sales), ("bor-1", borealis, None)):
        tokens[name] = ApiToken(company=company, department=department, name=name)
        tokens[name].set_secret(f"js-{name}-0123456789abcdef0123456789abcdef")
        tokens[name].save()
    for company in (acme, borealis):
        services.top_up(company=company, amount=100_000_000, idempotency_id=f"report-top-up-{company.pk}")

    def event(rid, token, model, key, at, sell, buy, tokens_in, tokens_out, cached=0):
        t = tokens[token]
        return UsageEvent(request_id=rid, endpoint="chat", status="ok", http_status=200, started_at=at.timestamp(),
                          finished_at=at.timestamp() + 1, token_id=t.pk, company_id=t.company_id, department_id=t.department_id,
                          model_name=model.name, model_id=model.pk, provider_id=provider.pk,
                          supplier_key_id=key.pk if key else None, supplier_id=key.supplier_id if key else None,
                          input_tokens=tokens_in, output_tokens=tokens_out, cached_tokens=cached, sell_cost=sell, buy_cost=buy)

    outcome = record_usage_batch(events=[
        event("r1", "acme-ci", model_a, k1, dt.datetime(2026, 11, 2, 7, 0, tzinfo=UTC), 1_250_000, 900_000, 1000, 500, 200),
        event("r2", "acme-ci", model_b, k2, dt.datetime(2026, 11, 2, 20, 30, tzinfo=UTC), 300_000, 200_000, 2000, 100),
        event("r3", "acme-bot", model_a, k1, dt.datetime(2026, 11, 2, 21, 30, tzinfo=UTC), 2_000_000, 1_500_000, 500, 500),
        event("r4", "bor-1", model_a, k2, dt.datetime(2026, 11, 10, 12, 0, tzinfo=UTC), 5_000_000, 4_000_000, 100, 1000),
        event("r5", "bor-1", model_b, None, dt.datetime(2026, 11, 10, 13, 0, tzinfo=UTC), 50_000, 0, 10, 10),
        event("r6", "acme-ci", model_a, k1, dt.datetime(2026, 10, 31, 20, 59, tzinfo=UTC), 7_000_000, 1, 1, 1),
    ])
    assert not outcome.refused
    services.transfer(idempotency_id="payout-s2", debit=services.supplier_payable(s2),
                      credit=services.platform_account(AccountKind.PLATFORM_CASH), amount=1_000_000, kind=TransferKind.PAYOUT)
    yield {"acme": acme, "borealis": borealis, "rnd": rnd, "sales": sales, "s1": s1, "s2": s2, "a": model_a, "b": model_b,
           **tokens}
    ledger_accounts.clear()


def figures(rows):
    return [(r.label, r.requests, r.sell_cost, r.buy_cost, r.margin) for r in rows]


def test_spend_by_company_department_token_and_model(example):
    # Acme in November (MSK): r1 + r2 + r3 (r6 is 31 October 23:59 MSK): sell 1.25 + 0.3 + 2.0 = 3.55 RUB,
    # buy 0.9 + 0.2 + 1.5 = 2.6 RUB. Borealis: r4 + r5 = 5.05 / 4.0 RUB.
    assert figures(reports.spend_by("company", *NOV)) == [("Borealis", 2, 5_050_000, 4_000_000, 1_050_000),
                                                          ("Acme", 3, 3_550_000, 2_600_000, 950_000)]
    assert figures(reports.spend_by("department", *NOV)) == [("—", 2, 5_050_000, 4_000_000, 1_050_000),
                                                             ("Sales", 1, 2_000_000, 1_500_000, 500_000),
                                                             ("R&D", 2, 1_550_000, 1_100_000, 450_000)]
    assert figures(reports.spend_by("token", *NOV)) == [("bor-1", 2, 5_050_000, 4_000_000, 1_050_000),
                                                        ("acme-bot", 1, 2_000_000, 1_500_000, 500_000),
                                                        ("acme-ci", 2, 1_550_000, 1_100_000, 450_000)]
    model_a, model_b = reports.spend_by("model", *NOV)
    # model A: r1 + r3 + r4; tokens 1000 + 500 + 100 in, 500 + 500 + 1000 out, 200 cached.
    assert model_a == SpendRow(str(example["a"].pk), "model-a", 3, 1600, 2000, 200, 8_250_000, 6_400_000)
    assert model_b == SpendRow(str(example["b"].pk), "model-b", 2, 2010, 110, 0, 350_000, 200_000)
    assert figures(reports.spend_by("company", *NOV, company_id=example["acme"].pk)) == [("Acme", 3, 3_550_000, 2_600_000, 950_000)]
    october = (dt.datetime(2026, 10, 1, tzinfo=MSK), NOV[0])
    assert figures(reports.spend_by("company", *october)) == [("Acme", 1, 7_000_000, 1, 6_999_999)]


def test_spend_by_day_in_a_time_zone(example):
    # r3 is 2 November 21:30 UTC: the 3rd in Moscow, the 2nd in UTC.
    assert [(r.key, r.requests, r.sell_cost) for r in reports.spend_by("day", *NOV)] == [
        ("2026-11-02", 2, 1_550_000), ("2026-11-03", 1, 2_000_000), ("2026-11-10", 2, 5_050_000)]
    assert [(r.key, r.requests, r.sell_cost) for r in reports.spend_by("day", *NOV, tz="UTC")] == [
        ("2026-11-02", 3, 3_550_000), ("2026-11-10", 2, 5_050_000)]
    with pytest.raises(ValueError, match="unknown dimension"):
        reports.spend_by("colour", *NOV)


def test_supplier_earnings_from_usage_and_from_the_ledger(example):
    # Usage in November: S1 served r1 + r3 (0.9 + 1.5), S2 r2 + r4 (0.2 + 4.0). The ledger booked every
    # buy transfer now, so in a period ending tomorrow S1 also has r6's 1 micro-RUB; S2 was paid 1 RUB.
    end = timezone.now() + dt.timedelta(days=1)
    s1, s2 = example["s1"].pk, example["s2"].pk
    assert reports.supplier_earnings(NOV[0], end) == [SupplierEarnings(s2, "South Keys", 2, 4_200_000, 4_200_000, 1_000_000),
                                                      SupplierEarnings(s1, "North Keys", 2, 2_400_000, 2_400_001, 0)]


def test_platform_margin_from_usage_and_the_ledger(example):
    end = timezone.now() + dt.timedelta(days=1)
    margin = reports.platform_margin(NOV[0], end)
    # Usage from 1 November: sell 3.55 + 5.05 = 8.6 RUB, buy 2.6 + 4.0 = 6.6 RUB. Ledger (all six
    # requests booked now): sell 8.6 + 7 = 15.6 RUB; buy 6.6 RUB + 1 micro-RUB (r5 had no supplier).
    assert (margin.sell, margin.buy, margin.margin) == (8_600_000, 6_600_000, 2_000_000)
    assert (margin.ledger_sell, margin.ledger_buy, margin.ledger_margin) == (15_600_000, 6_600_001, 8_999_999)
    assert sum(r.margin for r in reports.margin_by("model", NOV[0], end)) == margin.margin
    assert [r.label for r in reports.margin_by("company", NOV[0], end)] == ["Borealis", "Acme"]


def test_month_end_forecast_from_the_run_rate(example):
    now = dt.datetime(2026, 11, 10, 15, 0, tzinfo=UTC)
    # Acme (MSK): November started 1 Nov 00:00 MSK; now is 10 Nov 18:00 MSK: 9 d 18 h = 842 400 s of
    # 2 592 000. Spent 3 550 000 → 3 550 000 × 2 592 000 // 842 400 = 10 923 076.
    # Borealis (UTC+10): now is 11 Nov 01:00 there: 10 d 1 h = 867 600 s. Spent 5 050 000 →
    # 5 050 000 × 2 592 000 // 867 600 = 13 089 600 000 000 // 867 600 = 15 087 136.
    assert reports.month_forecast(now) == [
        Forecast(example["borealis"].pk, "Borealis", "2026-11", 5_050_000, 867_600, 2_592_000, 15_087_136),
        Forecast(example["acme"].pk, "Acme", "2026-11", 3_550_000, 842_400, 2_592_000, 10_923_076)]
    # Between r1 and r2 Acme has spent only r1: 2 Nov 12:00 MSK = 1 d 12 h = 129 600 s → 1 250 000 × 20 = 25 000 000.
    early = reports.month_forecast(dt.datetime(2026, 11, 2, 9, 0, tzinfo=UTC), company_id=example["acme"].pk)
    assert [(f.spent, f.elapsed_seconds, f.forecast) for f in early] == [(1_250_000, 129_600, 25_000_000)]


def test_exports_in_csv_and_xlsx(example):
    rows = reports.spend_by("company", *NOV)
    dataset = SpendRowResource().export(rows)
    table = list(csv.reader(io.StringIO(dataset.export("csv"))))
    assert table[0] == ["key", "label", "requests", "input_tokens", "output_tokens", "cached_tokens", "sell_cost", "sell_cost_rub",
                        "buy_cost", "buy_cost_rub", "margin", "margin_rub", "capped_requests", "capped_amount",
                        "capped_amount_rub", "cache_write_tokens", "images"]
    none_capped = ["0", "0", "0", "0", "0"]
    assert table[1:] == [[str(example["borealis"].pk), "Borealis", "2", "110", "1010", "0", "5050000", "5.05", "4000000", "4", "1050000", "1.05",
                          *none_capped],
                         [str(example["acme"].pk), "Acme", "3", "3500", "1100", "200", "3550000", "3.55", "2600000", "2.6", "950000", "0.95",
                          *none_capped]]
    sheet = openpyxl.load_workbook(io.BytesIO(dataset.export("xlsx"))).active
    cells = [[c.value for c in row] for row in sheet.iter_rows()]
    assert cells[0][:2] == ["key", "label"] and cells[1][1] == "Borealis" and str(cells[2][7]) == "3.55"
    forecast = ForecastResource().export(reports.month_forecast(dt.datetime(2026, 11, 10, 15, 0, tzinfo=UTC)))
    assert list(csv.reader(io.StringIO(forecast.export("csv"))))[1][-2:] == ["15087136", "15.087136"]
    with pytest.raises(PermissionError):
        SpendRowResource().import_data(dataset)


def test_a_formula_in_a_label_is_defused(example):
    example["acme-ci"].name = "=HYPERLINK(\"http://evil\")"
    example["acme-ci"].save()
    text = SpendRowResource().export(reports.spend_by("token", *NOV)).export("csv")
    assert "'=HYPERLINK" in text


def test_reports_are_aggregate_queries_whatever_the_number_of_records(example, django_assert_num_queries):
    from django.db import connection

    with connection.cursor() as cursor:  # 20 000 more usage records, in SQL
        cursor.execute("""
            INSERT INTO billing_usagerecord (request_id, token_id, company_id, department_id, model_id, endpoint, model_name, stream,
                input_tokens, output_tokens, cached_tokens, usage_counted_locally, sell_cost, buy_cost, status, http_status,
                error_type, error_code, latency_ms, usage_clamped, attempts, started_at, finished_at, recorded_at)
            SELECT 'bulk-' || i, %s, %s, NULL, %s, 'chat', 'model-b', false, 1, 1, 0, false, 10, 7, 'ok', 200, '', '', 1, false, '[]'::jsonb,
                   timestamptz '2026-11-15 12:00+00' + i * interval '1 second', timestamptz '2026-11-15 12:00+00', now()
            FROM generate_series(1, 20000) AS i""", [example["bor-1"].pk, example["borealis"].pk, example["b"].pk])
    for dimension in reports.DIMENSION_CHOICES:
        with django_assert_num_queries(2):  # the sums (rollup + partial days), then the capped / cache-write / image figures
            reports.spend_by(dimension, *NOV)
    with django_assert_num_queries(3):
        reports.supplier_earnings(*NOV)
    with django_assert_num_queries(2):
        margin = reports.platform_margin(*NOV)
    assert margin.sell == 8_600_000 + 20_000 * 10
    with django_assert_num_queries(3):  # the zones in use, then one per zone (two)
        reports.month_forecast(dt.datetime(2026, 11, 20, tzinfo=UTC))


def test_the_superadmin_report_page_and_its_downloads(example, client, personas):
    url = "/admin/billing/reports/?report=spend&dimension=company&start=2026-11-01&end=2026-11-30"
    client.force_login(personas.superadmin)
    page = client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Borealis" in html and "5050000" in html and "3.55" in html
    download = client.get(url + "&format=csv")
    assert download["Content-Type"].startswith("text/csv") and "jetstream-spend.csv" in download["Content-Disposition"]
    assert download.content.decode().splitlines()[1].split(",")[1:3] == ["Borealis", "2"]
    xlsx = client.get(url.replace("report=spend", "report=suppliers") + "&format=xlsx")
    assert openpyxl.load_workbook(io.BytesIO(xlsx.content)).active["B2"].value == "South Keys"
    assert client.get("/admin/billing/reports/?report=forecast").status_code == 200
    client.force_login(personas.manager_a)
    assert client.get(url).status_code in (302, 403)
    client.logout()
    assert client.get(url).status_code == 302
