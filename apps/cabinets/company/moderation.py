"""The company cabinet's moderation section: what the company's data policy logged, masked and
blocked — counts per category and the reports themselves (masked snippets only), filtered by
category, action, direction and period."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse

from apps.cabinets.access import company_view
from apps.cabinets.rendering import render_page
from apps.moderation.report_models import ModerationReport
from apps.moderation.reports import PERIODS, ReportFilter, category_choices, summary

PAGE_SIZE = 50


def report_context(request: HttpRequest, reports) -> dict:
    """The page's context for ``reports`` (already limited to what the viewer may see): the filter,
    the per-category summary and one page of rows."""
    chosen = ReportFilter.from_query(request.GET)
    rows = chosen.apply(reports)
    page = Paginator(rows.select_related("token", "company"), PAGE_SIZE).get_page(request.GET.get("page"))
    return {"filter": chosen, "summary": summary(rows), "page": page, "categories": category_choices(), "periods": PERIODS}


@company_view()
def moderation(request: HttpRequest) -> HttpResponse:
    """Moderation reports of this company (any member may read them: they hold no sensitive values)."""
    context = report_context(request, ModerationReport.objects.filter(company=request.company))  # type: ignore[attr-defined]
    return render_page(request, "cabinets/company/moderation.html", {**context, "company": request.company},  # type: ignore[attr-defined]
                       partial="cabinets/company/moderation_reports.html")
