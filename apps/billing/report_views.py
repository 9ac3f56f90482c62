"""The superadmin's report page (/admin/billing/reports/): spend by company / department / token /
model / day, supplier earnings, platform margin and month-end forecasts over a period, with CSV and
XLSX exports (django-import-export resources in ``resources.py``). Superusers only."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.billing import reports
from apps.billing.resources import ForecastResource, SpendRowResource, SupplierEarningsResource

REPORTS = [("spend", _("Spend")), ("suppliers", _("Supplier earnings")), ("forecast", _("Month-end forecast"))]
EXPORT_FORMATS = {"csv": "text/csv; charset=utf-8",
                  "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


class ReportForm(forms.Form):
    """What to report: kind, grouping, a period of whole days [start, end] in the platform's time zone."""

    report = forms.ChoiceField(label=_("report"), choices=REPORTS, initial="spend")
    dimension = forms.ChoiceField(label=_("by"), choices=[(d, d) for d in reports.DIMENSION_CHOICES], initial="company")
    start = forms.DateField(label=_("from"), required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label=_("to (inclusive)"), required=False, widget=forms.DateInput(attrs={"type": "date"}))
    company = forms.IntegerField(label=_("company id"), required=False, min_value=1)

    def period(self) -> tuple[dt.datetime, dt.datetime]:
        """[start, end + 1 day) as aware datetimes; defaults: this month so far."""
        tz = zoneinfo.ZoneInfo(str(settings.TIME_ZONE))
        today = timezone.now().astimezone(tz).date()
        start = self.cleaned_data.get("start") or today.replace(day=1)
        end = self.cleaned_data.get("end") or today
        return (dt.datetime.combine(start, dt.time(), tz), dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), tz))


def _rows(form: ReportForm) -> tuple[list[Any], Any]:
    start, end = form.period()
    report = form.cleaned_data["report"]
    if report == "suppliers":
        return reports.supplier_earnings(start, end), SupplierEarningsResource()
    if report == "forecast":
        return reports.month_forecast(timezone.now(), company_id=form.cleaned_data.get("company")), ForecastResource()
    rows = reports.spend_by(form.cleaned_data["dimension"], start, end, company_id=form.cleaned_data.get("company"))
    return rows, SpendRowResource()


def report_view(request: HttpRequest) -> HttpResponse:
    """The report page; ``?format=csv|xlsx`` answers the same report as a download."""
    if not request.user.is_superuser:
        raise PermissionDenied
    form = ReportForm(request.GET or None)
    context: dict[str, Any] = {**admin.site.each_context(request), "title": _("Reports"), "form": form}
    if form.is_valid():
        rows, resource = _rows(form)
        dataset = resource.export(rows)
        fmt = request.GET.get("format")
        if fmt in EXPORT_FORMATS:
            response = HttpResponse(dataset.export(fmt), content_type=EXPORT_FORMATS[fmt])
            response["Content-Disposition"] = f'attachment; filename="jetstream-{form.cleaned_data["report"]}.{fmt}"'
            return response
        start, end = form.period()
        context.update(headers=dataset.headers, table=[list(r) for r in dataset], period=(start, end),
                       margin=reports.platform_margin(start, end), query=request.GET.urlencode())
    return TemplateResponse(request, "admin/billing/reports.html", context)
