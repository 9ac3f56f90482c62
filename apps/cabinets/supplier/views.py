"""The supplier cabinet's pages."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from apps.cabinets.access import supplier_view
from apps.cabinets.rendering import render_page


@supplier_view()
def dashboard(request: HttpRequest) -> HttpResponse:
    """The supplier's dashboard: balance (accrued / on hold / available / paid out) and keys."""
    return render_page(request, "cabinets/supplier/dashboard.html", {"supplier": request.supplier})  # type: ignore[attr-defined]
