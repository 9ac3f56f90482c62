"""The company's transaction journal: filters, keyset pages, HTMX partials, streamed CSV and XLSX
exports, clear errors for bad input — and another tenant's objects are never reachable."""

from __future__ import annotations

import csv
import io

import openpyxl
import pytest
from django.urls import reverse

from tests.cabinets.journal_data import write_usage

pytestmark = pytest.mark.django_db

JOURNAL = reverse("cabinets:company:journal")
CSV = reverse("cabinets:company:journal_export_csv")
XLSX = reverse("cabinets:company:journal_export_xlsx")


def request_ids(page) -> list[str]:
    return [row["request_id"] for row in page.context["page"].rows]


def test_it_lists_every_request_of_the_company_newest_first(personas, signed_in):
    write_usage(personas)
    page = signed_in(personas.manager_a).get(JOURNAL)
    assert page.status_code == 200
    assert request_ids(page) == ["a-bot", "a-0", "a-1", "a-2", "a-3", "a-4"]
    text = page.content.decode()
    assert "upstream_unavailable" in text and "model-a" in text and "Mock" in text
    assert "b-1" not in text and "b-only" not in text


def test_it_filters_by_token_department_model_status_and_period(personas, signed_in):
    usage = write_usage(personas)
    client = signed_in(personas.manager_a)
    assert request_ids(client.get(JOURNAL, {"token": usage.other_token.pk})) == ["a-bot"]
    assert request_ids(client.get(JOURNAL, {"department": usage.department.pk})) == ["a-0", "a-1", "a-2", "a-3", "a-4"]
    assert request_ids(client.get(JOURNAL, {"model": usage.model_b.pk})) == ["a-bot"]
    assert request_ids(client.get(JOURNAL, {"status": "errors"})) == ["a-2"]
    assert request_ids(client.get(JOURNAL, {"status": "ok", "token": usage.token.pk})) == ["a-0", "a-1", "a-3", "a-4"]
    today = usage.now.astimezone(__import__("zoneinfo").ZoneInfo(personas.company_a.time_zone)).date()
    assert len(request_ids(client.get(JOURNAL, {"start": today.isoformat(), "end": today.isoformat()}))) == 6
    assert request_ids(client.get(JOURNAL, {"end": today.replace(year=today.year - 1).isoformat()})) == []


def test_it_refuses_another_companys_token_department_and_model_as_a_form_error(personas, signed_in):
    usage = write_usage(personas)
    client = signed_in(personas.manager_a)
    for name, value in (("token", usage.token_b.pk), ("model", usage.other_model.pk), ("department", 999_999)):
        page = client.get(JOURNAL, {name: value})
        assert page.status_code == 400, name
        assert page.context["filters"].errors[name]
        assert page.context["page"] is None and b"b-1" not in page.content
    # and the other company's manager sees only their own request, whatever they ask for
    other = signed_in(personas.manager_b)
    assert request_ids(other.get(JOURNAL)) == ["b-1"]
    assert other.get(JOURNAL, {"token": usage.token.pk}).status_code == 400


def test_it_explains_a_period_that_ends_before_it_starts_and_a_bad_date(personas, signed_in):
    client = signed_in(personas.manager_a)
    page = client.get(JOURNAL, {"start": "2026-11-10", "end": "2026-11-01"})
    assert page.status_code == 400
    assert page.context["filters"].errors["end"]
    assert client.get(JOURNAL, {"start": "yesterday"}).status_code == 400
    assert client.get(JOURNAL, {"status": "exploded"}).status_code == 400


def test_it_pages_by_keyset_and_never_repeats_or_skips(personas, signed_in):
    write_usage(personas, count=130)
    client = signed_in(personas.manager_a)
    seen, url, pages = [], JOURNAL, 0
    while True:
        page = client.get(url)
        assert page.status_code == 200
        seen += request_ids(page)
        pages += 1
        cursor = page.context["page"].next_cursor
        if cursor is None:
            break
        assert f"after={cursor}" in page.content.decode()
        url = f"{JOURNAL}?after={cursor}"
    assert pages == 3
    assert len(seen) == len(set(seen)) == 131
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        client.get(url)
    journal_sql = [q["sql"] for q in queries if "billing_usagerecord" in q["sql"]]
    assert journal_sql and not any("OFFSET" in sql for sql in journal_sql)


def test_it_answers_a_broken_cursor_with_a_clear_400(personas, signed_in):
    page = signed_in(personas.manager_a).get(JOURNAL, {"after": "not-a-cursor"})
    assert page.status_code == 400
    assert page.context["cursor_error"]


def test_it_renders_only_the_results_for_htmx(personas, signed_in):
    usage = write_usage(personas)
    page = signed_in(personas.manager_a).get(JOURNAL, {"token": usage.other_token.pk}, HTTP_HX_REQUEST="true",
                                             HTTP_HX_TARGET="journal-results")
    assert page.status_code == 200
    text = page.content.decode()
    assert "journal-table" in text and "<html" not in text and "journal-filters" not in text


def test_it_streams_the_filtered_journal_as_csv(personas, signed_in):
    usage = write_usage(personas)
    response = signed_in(personas.manager_a).get(CSV, {"token": usage.token.pk})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    text = b"".join(response.streaming_content).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == 6
    assert rows[1][0] == "a-0" and rows[1][11] == "0.01" and rows[1][2] == "ci"
    assert "b-1" not in text and "a-bot" not in text


def test_it_defuses_formulas_in_exported_cells(personas, signed_in):
    usage = write_usage(personas)
    usage.token.name = '=HYPERLINK("http://evil")'
    usage.token.save()
    response = signed_in(personas.manager_a).get(CSV, {"token": usage.token.pk})
    assert "'=HYPERLINK" in b"".join(response.streaming_content).decode("utf-8-sig")


def test_it_exports_xlsx_from_a_write_only_workbook(personas, signed_in):
    write_usage(personas)
    response = signed_in(personas.manager_a).get(XLSX, {"status": "errors"})
    assert response.status_code == 200 and response.streaming
    sheet = openpyxl.load_workbook(io.BytesIO(b"".join(response.streaming_content))).active
    cells = [[c.value for c in row] for row in sheet.iter_rows()]
    assert len(cells) == 2 and cells[1][0] == "a-2" and cells[1][17] == "upstream_unavailable"


def test_it_refuses_to_export_with_invalid_filters(personas, signed_in):
    usage = write_usage(personas)
    response = signed_in(personas.manager_a).get(CSV, {"token": usage.token_b.pk})
    assert response.status_code == 400 and not response.streaming


def test_it_is_404_for_an_outsider_and_a_supplier_on_every_journal_url(personas, signed_in):
    for user in (personas.outsider, personas.supplier_user):
        client = signed_in(user)
        for url in (JOURNAL, CSV, XLSX):
            assert client.get(url).status_code == 404, (user, url)


def test_the_export_is_get_only(personas, signed_in):
    assert signed_in(personas.manager_a).post(CSV).status_code == 405


@pytest.mark.django_db(transaction=True)
def test_it_streams_under_asgi_chunk_by_chunk_not_read_to_the_end_first(personas, signed_in, settings):
    import asyncio

    from django.test import AsyncClient

    from apps.billing import journal

    settings.DEBUG = False
    write_usage(personas, count=25)
    cookies = signed_in(personas.manager_a).cookies
    original = journal.EXPORT_CHUNK
    journal.EXPORT_CHUNK = 10  # three chunks of rows after the header

    async def fetch():
        client = AsyncClient()
        client.cookies = cookies
        response = await client.get(CSV)
        assert response.status_code == 200
        assert hasattr(response.streaming_content, "__aiter__")  # not a sync iterator Django would drain first
        chunks = [chunk async for chunk in response.streaming_content]
        from asgiref.sync import sync_to_async
        from django.db import connections

        await sync_to_async(connections.close_all)()  # the request thread's connection, or the test database stays in use
        return chunks

    try:
        chunks = asyncio.run(fetch())
    finally:
        journal.EXPORT_CHUNK = original
    assert len(chunks) >= 4
    assert len(b"".join(chunks).decode("utf-8-sig").splitlines()) == 1 + 26  # the header, 25 + 1 requests of company A


def test_it_keeps_and_shows_requests_older_than_90_days(personas, signed_in, superadmin_client):
    import datetime as dt

    from django.contrib import admin

    from apps.billing.models import UsageRecord

    usage = write_usage(personas)
    old = UsageRecord.objects.get(request_id="a-0")
    old.started_at = usage.now - dt.timedelta(days=120)
    old.save(update_fields=["started_at"])
    day = (usage.now - dt.timedelta(days=120)).date()
    page = signed_in(personas.manager_a).get(JOURNAL, {"start": (day - dt.timedelta(days=1)).isoformat(),
                                                       "end": (day + dt.timedelta(days=1)).isoformat()})
    assert request_ids(page) == ["a-0"]
    # Nobody deletes a usage record: not the admin, not a token's or company's deletion (PROTECT).
    request = superadmin_client.get("/admin/").wsgi_request
    assert not admin.site._registry[UsageRecord].has_delete_permission(request, old)
    assert all(f.remote_field.on_delete.__name__ == "PROTECT" for f in UsageRecord._meta.fields if f.is_relation)


def test_the_filterset_takes_the_company_from_the_request_as_the_api_backend_calls_it(personas):
    from django.http import QueryDict
    from django.test import RequestFactory

    from apps.billing.filtersets import UsageRecordFilterSet

    usage = write_usage(personas)
    request = RequestFactory().get("/")
    request.company = personas.company_b
    filters = UsageRecordFilterSet(QueryDict("status=ok"), None, request=request)
    assert filters.is_valid() and list(filters.qs.values_list("request_id", flat=True)) == ["b-1"]
    assert not UsageRecordFilterSet(QueryDict(f"token={usage.token.pk}"), request=request).is_valid()
    with pytest.raises(ValueError, match="company"):
        UsageRecordFilterSet(QueryDict(""))
