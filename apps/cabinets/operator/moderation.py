"""The operator cabinet's moderation section: every company's moderation reports, with the same
filters as the company's page."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from apps.cabinets.access import operator_view
from apps.cabinets.company.moderation import report_context
from apps.cabinets.rendering import render_page
from apps.moderation.report_models import ModerationReport


@operator_view
def moderation(request: HttpRequest) -> HttpResponse:
    """Moderation reports across companies (superusers only)."""
    return render_page(request, "cabinets/operator/moderation.html", report_context(request, ModerationReport.objects.all()),
                       partial="cabinets/company/moderation_reports.html")
