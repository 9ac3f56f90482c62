"""The supplier cabinet's forms: they parse and check input; the services in
``apps/providers/services.py`` and ``apps/billing/suppliers.py`` do the work."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from django import forms
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.billing.models import SupplierPayoutDetails
from apps.providers.models import Provider
from lib.money import MoneyFormatError, to_micro


class RublesField(forms.Field):
    """An amount typed in rubles ("1500", "1 500,50") → integer micro-rubles; at most 2 decimals
    (kopecks), greater than zero. ``required=False`` gives None for an empty box."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("widget", forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off", "maxlength": 24}))
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> int | None:
        text = str(value or "").strip().replace("\u00a0", "").replace(" ", "").replace(",", ".")
        if not text:
            return None
        if len(text) > 24:
            raise forms.ValidationError(_("Enter an amount in rubles greater than zero, e.g. 1500 or 1500.50."), code="invalid")
        try:
            micro = to_micro(text, allow_zero=False)
        except MoneyFormatError:
            raise forms.ValidationError(_("Enter an amount in rubles greater than zero, e.g. 1500 or 1500.50."),
                                        code="invalid") from None
        if micro % 10_000:
            raise forms.ValidationError(_("Amounts are in whole kopecks: at most two decimal places."), code="invalid")
        return micro


class AddKeyForm(forms.Form):
    """A new upstream key: provider, a name, the secret (never shown again) and an optional cap."""

    provider = forms.ModelChoiceField(label=_("Provider"), queryset=Provider.objects.none())
    name = forms.SlugField(label=_("Name"), max_length=100, help_text=_("Latin letters, digits, dashes, e.g. main-1."))
    secret = forms.CharField(label=_("API key"), max_length=4000, strip=True,
                             widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
                             help_text=_("Stored encrypted; afterwards only its last 4 characters are shown."))
    monthly_cap = RublesField(label=_("Monthly spend cap, RUB"), required=False,
                              help_text=_("The most the platform may spend through this key in a calendar month. "
                                          "Empty: no cap."))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["provider"].queryset = Provider.objects.filter(is_active=True).order_by("name", "slug")  # type: ignore[attr-defined]


class CapForm(forms.Form):
    monthly_cap = RublesField(label=_("Monthly spend cap, RUB"), required=False, help_text=_("Empty: no cap."))


class RotateForm(forms.Form):
    secret = forms.CharField(label=_("New API key"), max_length=4000, strip=True,
                             widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}))


class WithdrawalForm(forms.Form):
    """How much to withdraw; ``request_id`` is the form's one-time id (a double submit makes one request)."""

    amount = RublesField(label=_("Amount, RUB"))
    request_id = forms.UUIDField(widget=forms.HiddenInput)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {}).setdefault("request_id", uuid.uuid4())
        super().__init__(*args, **kwargs)


class PayoutDetailsForm(forms.ModelForm):
    class Meta:
        model = SupplierPayoutDetails
        fields = ["recipient", "inn", "kpp", "bank_name", "bik", "account_number", "correspondent_account", "card_reference"]


class PeriodForm(forms.Form):
    """A statement's period: whole days ``start``..``end`` inclusive in the platform's time zone
    (default: this month so far); at most ``MAX_DAYS`` days."""

    MAX_DAYS = 366

    start = forms.DateField(label=_("From"), required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label=_("To"), required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        today = timezone.localdate()
        start = cleaned.get("start") or today.replace(day=1)
        end = cleaned.get("end") or today
        if end < start:
            raise forms.ValidationError(_("The period ends before it starts."))
        if (end - start).days >= self.MAX_DAYS:
            raise forms.ValidationError(_("A statement covers at most %(days)s days.") % {"days": self.MAX_DAYS})
        cleaned["start"], cleaned["end"] = start, end
        return cleaned

    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        """[first midnight, midnight after the last day) as aware datetimes in TIME_ZONE."""
        zone = timezone.get_current_timezone()
        start, end = self.cleaned_data["start"], self.cleaned_data["end"]
        return (dt.datetime.combine(start, dt.time.min, tzinfo=zone),
                dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=zone))
