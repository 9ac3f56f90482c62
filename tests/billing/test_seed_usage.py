"""``manage.py seed_usage`` (COPY) and the scale cells' timing code (bench/journal_cells.py), with a
small count: the 10-million-record run is `make bench`'s."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from apps.billing.models import UsageDay, UsageRecord

pytestmark = pytest.mark.django_db


def test_it_seeds_records_with_copy_and_the_rollup_follows(personas):
    out = io.StringIO()
    call_command("seed_usage", records=2500, company=personas.company_a.slug, days=10, tokens=4, models=3, chunk=1000, stdout=out)
    assert "Wrote 2500 usage records" in out.getvalue()
    records = UsageRecord.objects.filter(company=personas.company_a)
    assert records.count() == 2500
    assert records.values("token_id").distinct().count() == 4 and records.values("model_id").distinct().count() == 3
    rolled = UsageDay.objects.filter(company=personas.company_a)
    assert sum(rolled.values_list("requests", flat=True)) == 2500
    assert sum(rolled.values_list("sell_cost", flat=True)) == sum(records.values_list("sell_cost", flat=True))
    # A second run adds, with the same tokens and models; the rebuilt rollup says the same.
    call_command("seed_usage", records=10, company=personas.company_a.slug, tokens=4, models=3, rebuild_rollups=True, stdout=io.StringIO())
    assert sum(rolled.values_list("requests", flat=True)) == records.count() == 2510
    assert personas.company_a.tokens.count() == 4


def test_it_refuses_an_unknown_company_and_a_bad_count(personas):
    with pytest.raises(CommandError, match="no company"):
        call_command("seed_usage", records=1, company="nope", stdout=io.StringIO())
    with pytest.raises(CommandError, match="--days"):
        call_command("seed_usage", records=1, company=personas.company_a.slug, days=0, stdout=io.StringIO())


def test_the_scale_cells_time_every_page_they_report(personas):
    from bench import journal_cells

    call_command("seed_usage", records=300, company=personas.company_a.slug, days=5, tokens=3, models=2, stdout=io.StringIO())
    result = journal_cells.measure(personas.company_a, repeats=2)
    assert result["records"] == 300 and result["filter"]["token"]
    for cell in ("dashboard", "journal_page", "export_first_byte", "export_first_rows"):
        assert len(result[cell]["runs_ms"]) == 2 and result[cell]["median_ms"] > 0
        assert result[cell]["met"] == (result[cell]["median_ms"] < journal_cells.TARGET_MS)


def test_the_report_shows_each_scale_cell_against_its_target():
    from bench import report

    cell = {"median_ms": 12.5, "max_ms": 20.0, "runs_ms": [12.5], "target_ms": 300, "met": True}
    slow = {**cell, "median_ms": 450.0, "met": False}
    lines = report._journal({"journal": {"records": 10_000_000, "dashboard": cell, "journal_page": cell,
                                         "export_first_byte": cell, "export_first_rows": slow, "export_chunk": 2000}})
    text = "\n".join(lines)
    assert "10,000,000 usage records" in text
    assert "| Company dashboard | 12.5 ms | 20.0 ms | < 300 ms | met |" in text
    assert "| CSV export, first 2\u202f000 rows | 450.0 ms" in text and "**NOT MET**" in text
    assert report._journal({}) == ["Not measured (BENCH_JOURNAL_CELLS=0)."]
    assert report._journal({"journal": {"error": "seeding failed\nmore"}})[0] == "**FAILED**: seeding failed"
