"""The transaction journal's filters: one django-filter ``FilterSet`` the company cabinet and the
REST API share (NetBox's rule: one filterset for UI and API).

``UsageRecordFilterSet(data, company=company)`` filters one company's usage records by period
(``start``/``end``: local dates in the company's time zone, both inclusive), ``token``,
``department``, ``model`` (ids of the company's own objects; another company's id is refused like
any unknown choice) and ``status`` (a ``UsageStatus`` value, or ``errors`` for every request that
did not end ``ok``). Every filter maps to an index (migration 0011): the journal pages stay index
range scans at any size.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any, cast

import django_filters
from django import forms
from django.db import models
from django.db.models import Q, QuerySet
from django.utils.translation import gettext_lazy as _

from apps.billing.models import UsageDay, UsageRecord, UsageStatus

#: The ``status`` filter's value for "every request that did not end ok".
ERRORS = "errors"
STATUS_CHOICES = [(ERRORS, _("Any error")), *UsageStatus.choices]


def _related(field: str) -> type[models.Model]:
    # accounts / proxy / providers sit above billing in the layering: reached through the relation.
    return cast("type[models.Model]", UsageRecord._meta.get_field(field).related_model)


class PeriodForm(forms.Form):
    """Refuses a period that ends before it starts, on the ``end`` field."""

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and end < start:
            self.add_error("end", _("The period ends before it starts."))
        return cleaned


class UsageRecordFilterSet(django_filters.FilterSet):
    """One company's usage records, filtered. ``company`` (or ``request.company``; ``ValueError``
    without either) scopes the queryset and the choices; its ``time_zone`` turns the dates into
    instants. Invalid input leaves ``is_valid()`` False with the errors on ``form`` (``qs`` then
    applies only the valid filters: callers check ``is_valid()`` first)."""

    start = django_filters.DateFilter(label=_("From"), method="filter_start",
                                      widget=forms.DateInput(attrs={"type": "date"}))
    end = django_filters.DateFilter(label=_("To (inclusive)"), method="filter_end",
                                    widget=forms.DateInput(attrs={"type": "date"}))
    token = django_filters.ModelChoiceFilter(label=_("Token"), queryset=_related("token")._default_manager.none(),
                                             empty_label=_("All tokens"))
    department = django_filters.ModelChoiceFilter(label=_("Department"),
                                                  queryset=_related("department")._default_manager.none(),
                                                  empty_label=_("All departments"))
    model = django_filters.ModelChoiceFilter(label=_("Model"), queryset=_related("model")._default_manager.none(),
                                             empty_label=_("All models"))
    status = django_filters.ChoiceFilter(label=_("Status"), choices=STATUS_CHOICES, method="filter_status",
                                         empty_label=_("Any status"))

    class Meta:
        model = UsageRecord
        fields = ["start", "end", "token", "department", "model", "status"]
        form = PeriodForm

    def __init__(self, data: Any = None, queryset: QuerySet[UsageRecord] | None = None, *, company: Any = None,
                 request: Any = None, prefix: str | None = None) -> None:
        # django-filter's DRF backend passes only (data, queryset, request): the company then comes
        # from the request, as the cabinet's and the API's access checks set it.
        company = company if company is not None else getattr(request, "company", None)
        if company is None:
            raise ValueError("UsageRecordFilterSet needs the company (company= or request.company)")
        self.company = company
        self.tz = zoneinfo.ZoneInfo(company.time_zone)
        if queryset is None:
            queryset = UsageRecord.objects.all()
        super().__init__(data, queryset.filter(company=company), request=request, prefix=prefix)
        filters = self.filters
        filters["token"].queryset = _related("token")._default_manager.filter(company=company).order_by("name")
        filters["department"].queryset = _related("department")._default_manager.filter(company=company).order_by("name")
        # The models this company has used (the daily rollup knows them without touching the records).
        used = UsageDay.objects.filter(company=company, model__isnull=False).order_by().values("model_id").distinct()
        filters["model"].queryset = _related("model")._default_manager.filter(pk__in=used).order_by("name")

    def _midnight(self, day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), self.tz)

    def filter_start(self, queryset: QuerySet[UsageRecord], name: str, value: dt.date) -> QuerySet[UsageRecord]:
        """Records from ``value``'s local midnight on."""
        return queryset.filter(started_at__gte=self._midnight(value))

    def filter_end(self, queryset: QuerySet[UsageRecord], name: str, value: dt.date) -> QuerySet[UsageRecord]:
        """Records before the local midnight after ``value`` (the day is included)."""
        return queryset.filter(started_at__lt=self._midnight(value + dt.timedelta(days=1)))

    def filter_status(self, queryset: QuerySet[UsageRecord], name: str, value: str) -> QuerySet[UsageRecord]:
        """One status, or ``errors``: every status but ``ok``."""
        return queryset.filter(~Q(status=UsageStatus.OK)) if value == ERRORS else queryset.filter(status=value)
