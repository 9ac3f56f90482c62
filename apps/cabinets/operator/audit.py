"""The operator's audit trail: every tenant's events, filtered, paged by ``seq``, exported."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET

from apps.audit import services
from apps.audit.export import FORMATS
from apps.audit.forms import AuditFilterForm
from apps.audit.streaming import export_response
from apps.cabinets.access import operator_view
from apps.cabinets.rendering import render_page


@require_GET
@operator_view
def audit_log(request: HttpRequest) -> HttpResponse:
    """All events, newest first, 50 a page (``?before=<seq>`` for older ones), with filters."""
    form = AuditFilterForm(request.GET, operator=True)
    page = services.page(form.filters(), before=form.cleaned_data.get("before")) if form.is_valid() else None
    return render_page(request, "cabinets/operator/audit.html", {"form": form, "page": page, "formats": FORMATS,
                        "export_url": "cabinets:operator:audit_export", "page_url": "cabinets:operator:audit"},
                       partial="cabinets/audit/_rows.html", status=200 if page is not None else 400)


@require_GET
@operator_view
def audit_export(request: HttpRequest, fmt: str) -> HttpResponse:
    """The filtered events as a JSON-lines or RFC 5424 syslog download, oldest first."""
    form = AuditFilterForm(request.GET, operator=True)
    if fmt not in FORMATS or not form.is_valid():
        return HttpResponseBadRequest(_("Check the filters: %(errors)s") % {"errors": form.errors.as_text() or fmt},
                                      content_type="text/plain; charset=utf-8")
    return export_response(form.filters(), fmt, name="platform")
