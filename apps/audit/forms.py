"""The trail's filter form, shared by the operator's and the companies' audit pages and exports."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .actions import ACTIONS
from .exceptions import InvalidExportFilter
from .services import EventFilter, company_id_for_slug


def action_choices() -> list[tuple[str, Any]]:
    """``[("", all), ("token.", "token.*"), …, ("token.created", "API token created"), …]``."""
    subjects = sorted({name.split(".")[0] + "." for name in ACTIONS})
    return [("", _("All actions")), *((s, f"{s}*") for s in subjects), *((name, label) for name, label in ACTIONS.items())]


class AuditFilterForm(forms.Form):
    """Period (days, inclusive, in the current time zone), action, actor e-mail, and the keyset
    cursor ``before`` (a ``seq``). ``operator=True`` adds a company filter (by slug)."""

    since = forms.DateField(label=_("From"), required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(label=_("To"), required=False, widget=forms.DateInput(attrs={"type": "date"}))
    action = forms.ChoiceField(label=_("Action"), required=False, choices=action_choices)
    actor = forms.CharField(label=_("Actor"), required=False, max_length=254)
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, *args: Any, operator: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if operator:
            self.fields["company"] = forms.SlugField(label=_("Company (slug)"), required=False, max_length=64)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            raise forms.ValidationError(_("The period's start must not come after its end."))
        slug = data.get("company")
        if slug:
            try:
                data["company_id"] = company_id_for_slug(slug)
            except InvalidExportFilter:
                self.add_error("company", _("No company has this slug."))
        return data

    def filters(self, **tenant: int | None) -> EventFilter:
        """The valid form's ``EventFilter``; ``tenant`` (``company_id=`` / ``supplier_id=``) pins the tenant."""
        data = self.cleaned_data
        return EventFilter(
            since=_midnight(data.get("since")), until=_midnight(data["until"] + dt.timedelta(days=1)) if data.get("until") else None,
            action=data.get("action") or "", actor=(data.get("actor") or "").strip(),
            company_id=tenant.get("company_id", data.get("company_id")), supplier_id=tenant.get("supplier_id"),
        )


def _midnight(day: dt.date | None) -> dt.datetime | None:
    return None if day is None else timezone.make_aware(dt.datetime.combine(day, dt.time(0)))
