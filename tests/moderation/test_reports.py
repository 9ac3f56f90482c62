"""Moderation reports: the writer (stream → rows, idempotent), masked snippets, the metrics counts,
the company cabinet's moderation section (own company only) and the operator's."""

from __future__ import annotations

import time

import orjson
import pytest
from django.urls import reverse
from django.utils import timezone

from apps.moderation.findings import Category, Detection
from apps.moderation.report_models import ModerationReport
from apps.moderation.reports import (
    METRICS_KEY,
    REPORT_STREAM,
    ReportFilter,
    ReportItem,
    category_counts,
    encode_report,
    masked_snippet,
    metric_fields,
    write_report_batch,
)
from tests.cabinets.conftest import signed_in  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db


@pytest.fixture
def stream(redis_client):
    redis_client.delete(REPORT_STREAM, METRICS_KEY)
    yield redis_client
    redis_client.delete(REPORT_STREAM, METRICS_KEY)


def report(request_id: str, company_id: int, *items: ReportItem) -> bytes:
    return encode_report(request_id=request_id, company_id=company_id, token_id=None, at=time.time(), items=items)


PHONE_MASKED = ReportItem("phone", "pattern", "mask", "prompt", "text", "звоните [PHONE] вечером")
PASSPORT_BLOCKED = ReportItem("passport", "pattern", "block", "prompt", "image", "паспорт [PASSPORT]")


def test_a_snippet_replaces_every_detected_value_and_is_cut_around_the_finding():
    text = "x" * 100 + " Иван Петров, тел. +7 912 345-67-89 " + "y" * 100
    name = Detection(Category.PERSON, 101, 112, "Иван Петров", "ner")
    phone = Detection(Category.PHONE, 119, 135, "+7 912 345-67-89", "pattern")
    snippet = masked_snippet(text, [name, phone], phone)
    assert "[PERSON], тел. [PHONE]" in snippet
    assert "Петров" not in snippet and "912" not in snippet
    assert snippet.startswith("…") and snippet.endswith("…") and len(snippet) < 140


def test_the_writer_moves_reports_into_rows_once(stream, personas):
    company = personas.company_a
    stream.xadd(REPORT_STREAM, {"e": report("req_1", company.pk, PHONE_MASKED, PASSPORT_BLOCKED)})
    stream.xadd(REPORT_STREAM, {"e": b"not json"})
    stream.xadd(REPORT_STREAM, {"e": report("req_1", company.pk, PHONE_MASKED, PASSPORT_BLOCKED)})  # written twice: once
    assert write_report_batch(stream) == 4
    assert stream.xlen(REPORT_STREAM) == 0
    rows = list(ModerationReport.objects.order_by("position"))
    assert [(r.request_id, r.position, r.category, r.action, r.content_type) for r in rows] == [
        ("req_1", 0, "phone", "mask", "text"), ("req_1", 1, "passport", "block", "image")]


def test_a_deleted_token_leaves_its_reports_without_one(stream, personas):
    payload = orjson.loads(report("req_2", personas.company_a.pk, PHONE_MASKED)) | {"token_id": 999_999}
    stream.xadd(REPORT_STREAM, {"e": orjson.dumps(payload)})
    write_report_batch(stream)
    assert ModerationReport.objects.get().token_id is None


def test_counts_per_category_feed_the_metrics(stream):
    for name, count in metric_fields([PHONE_MASKED, PHONE_MASKED, PASSPORT_BLOCKED]).items():
        stream.hincrby(METRICS_KEY, name, count)
    assert category_counts(stream) == {"phone": {"mask": 2}, "passport": {"block": 1}}


def make_row(company, request_id: str, category: str = "phone", action: str = "mask", *, days_ago: int = 0) -> ModerationReport:
    return ModerationReport.objects.create(request_id=request_id, company=company, category=category, detector="pattern",
                                           action=action, direction="prompt", snippet=f"{request_id} [PHONE]",
                                           created_at=timezone.now() - timezone.timedelta(days=days_ago))


def test_the_company_page_shows_its_own_reports_only(personas, signed_in):  # noqa: F811
    make_row(personas.company_a, "req_a1")
    make_row(personas.company_a, "req_a2", "passport", "block")
    make_row(personas.company_a, "req_old", days_ago=40)
    make_row(personas.company_b, "req_b1")
    page = signed_in(personas.manager_a).get(reverse("cabinets:company:moderation"))
    assert page.status_code == 200
    body = page.content.decode()
    assert "req_a1 [PHONE]" in body and "req_a2 [PHONE]" in body
    assert "req_b1" not in body and "req_old" not in body
    assert [row["category"] for row in page.context["summary"]] == ["passport", "phone"]
    blocked = signed_in(personas.manager_a).get(reverse("cabinets:company:moderation"), {"action": "block", "days": "90"})
    assert [r.request_id for r in blocked.context["page"].object_list] == ["req_a2"]


def test_the_company_page_is_404_to_outsiders_and_the_operator_page_to_managers(personas, signed_in):  # noqa: F811
    assert signed_in(personas.outsider).get(reverse("cabinets:company:moderation")).status_code == 404
    assert signed_in(personas.manager_a).get(reverse("cabinets:operator:moderation")).status_code == 404


def test_the_operator_page_shows_every_company(personas, signed_in):  # noqa: F811
    make_row(personas.company_a, "req_a1")
    make_row(personas.company_b, "req_b1")
    page = signed_in(personas.superadmin).get(reverse("cabinets:operator:moderation"))
    body = page.content.decode()
    assert page.status_code == 200 and "req_a1" in body and "req_b1" in body and "Company B" in body


def test_an_htmx_filter_swaps_only_the_reports(personas, signed_in):  # noqa: F811
    make_row(personas.company_a, "req_a1")
    page = signed_in(personas.manager_a).get(reverse("cabinets:company:moderation"), HTTP_HX_REQUEST="true",
                                             HTTP_HX_TARGET="moderation-reports")
    body = page.content.decode()
    assert body.lstrip().startswith('<section id="moderation-reports">') and "<html" not in body


def test_a_filter_ignores_bad_values():
    chosen = ReportFilter.from_query({"category": "nope", "action": "delete", "days": "abc", "direction": "sideways"})
    assert chosen == ReportFilter()
    assert ReportFilter.from_query({"category": "phone", "days": "7"}).query() == "category=phone&days=7"
