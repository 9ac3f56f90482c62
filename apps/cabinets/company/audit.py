"""A company's audit trail, for its owners and managers: its own events only."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET

from apps.audit import services
from apps.audit.export import FORMATS
from apps.audit.forms import AuditFilterForm
from apps.audit.streaming import export_response
from apps.cabinets.access import COMPANY_MANAGERS, company_view
from apps.cabinets.rendering import render_page


@require_GET
@company_view(*COMPANY_MANAGERS)
def audit_log(request: HttpRequest) -> HttpResponse:
    """The company's events, newest first, 50 a page (``?before=<seq>``), with filters."""
    form = AuditFilterForm(request.GET)
    company = request.company  # type: ignore[attr-defined]
    page = services.page(form.filters(company_id=company.pk), before=form.cleaned_data.get("before")) if form.is_valid() else None
    return render_page(request, "cabinets/company/audit.html", {"form": form, "page": page, "formats": FORMATS,
                        "export_url": "cabinets:company:audit_export", "page_url": "cabinets:company:audit", "company": company},
                       partial="cabinets/audit/_rows.html", status=200 if page is not None else 400)


@require_GET
@company_view(*COMPANY_MANAGERS)
def audit_export(request: HttpRequest, fmt: str) -> HttpResponse:
    """The company's filtered events as a JSON-lines or RFC 5424 syslog download, oldest first."""
    form = AuditFilterForm(request.GET)
    if fmt not in FORMATS or not form.is_valid():
        return HttpResponseBadRequest(_("Check the filters: %(errors)s") % {"errors": form.errors.as_text() or fmt},
                                      content_type="text/plain; charset=utf-8")
    company = request.company  # type: ignore[attr-defined]
    return export_response(form.filters(company_id=company.pk), fmt, name=company.slug)
