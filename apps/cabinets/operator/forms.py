"""The operator cabinet's forms."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from lib.money import MoneyFormatError, to_coefficient


class RejectForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), max_length=300, required=False)


class CoefficientForm(forms.Form):
    """A company × model sell coefficient ("1.25", "1,1"); empty removes it."""

    sell_coefficient = forms.CharField(label=_("Sell coefficient"), max_length=12, required=False)

    def clean_sell_coefficient(self) -> Any:
        text = self.cleaned_data["sell_coefficient"].strip().replace(",", ".")
        if not text:
            return None
        try:
            return to_coefficient(text)
        except MoneyFormatError:
            raise forms.ValidationError(_("A coefficient is a positive number with at most 4 decimal places, e.g. 1.25."),
                                        code="invalid") from None


class PeriodDaysForm(forms.Form):
    """How many days back the turnover report covers."""

    CHOICES = [(7, _("7 days")), (30, _("30 days")), (90, _("90 days")), (365, _("a year"))]
    days = forms.TypedChoiceField(label=_("Period"), choices=CHOICES, coerce=int, required=False, empty_value=30)
