"""The company cabinet's pages."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from apps.cabinets.access import company_view
from apps.cabinets.company import dashboard as company_dashboard
from apps.cabinets.rendering import render_page


@company_view()
def dashboard(request: HttpRequest) -> HttpResponse:
    """The company's dashboard: wallet balance, spend today / week / month, spend by day and model
    (a chart drawn from a JSON data island, and the same figures as tables), top tokens, limits
    close to their end and active alerts — every figure from the daily rollup and the ledger."""
    context = company_dashboard.dashboard_context(request.company, timezone.now())  # type: ignore[attr-defined]
    return render_page(request, "cabinets/company/dashboard.html", context)
