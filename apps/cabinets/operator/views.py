"""The operator cabinet's pages (the superadmin's, beside the Django admin)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from apps.cabinets.access import operator_view
from apps.cabinets.rendering import render_page


@operator_view
def dashboard(request: HttpRequest) -> HttpResponse:
    """Companies and suppliers at a glance, the approvals queue, platform turnover and margin."""
    return render_page(request, "cabinets/operator/dashboard.html")
