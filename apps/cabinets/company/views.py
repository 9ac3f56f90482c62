"""The company cabinet's pages."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from apps.cabinets.access import company_view
from apps.cabinets.rendering import render_page


@company_view()
def dashboard(request: HttpRequest) -> HttpResponse:
    """The company's dashboard: wallet balance, spend today / week / month, spend by day and model."""
    return render_page(request, "cabinets/company/dashboard.html", {"company": request.company})  # type: ignore[attr-defined]
