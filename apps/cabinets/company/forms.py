"""The company cabinet's forms: tokens, departments, members and the wallet.

Amounts are typed in rubles ("1500", "12,50") and cleaned to integer micro-rubles
(``lib.admin.MicroAmountField``); the services validate again (model ``full_clean``), and
their ``ValidationError`` is put back on the form (``apply_errors``), so one rule is never
written twice.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.accounts.models import Company, CompanyRole, Department
from apps.billing.models import TransferKind
from apps.invoicing.models import CompanyRequisites
from apps.providers.models import Model
from apps.proxy.models import ApiToken, TokenEnvironment, TokenStatus, validate_cidr
from lib.admin import MicroAmountField

_LIMIT_HELP = _("In rubles, e.g. 5000 or 12.50; empty = no limit.")
_SPLIT = re.compile(r"[\s,;]+")


def apply_errors(form: forms.Form, error: ValidationError) -> None:
    """Show a service's ``ValidationError`` on ``form``: on the field it names when the form has
    that field, else above the form."""
    if hasattr(error, "error_dict"):
        for field, errors in error.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, error)


class ListField(forms.CharField):
    """Several values typed one per line (or separated by commas or spaces) → a sorted list without
    duplicates; each value checked by ``item_validator``."""

    widget = forms.Textarea(attrs={"rows": 3})

    def __init__(self, *, item_validator=None, max_items: int = 100, **kwargs: Any) -> None:
        self.item_validator = item_validator
        self.max_items = max_items
        super().__init__(required=False, strip=True, **kwargs)

    def prepare_value(self, value: Any) -> Any:
        """A list (the model's value) is shown one item per line."""
        return "\n".join(value) if isinstance(value, list | tuple) else value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        if isinstance(value, list | tuple):
            return list(value)
        items = sorted({item for item in _SPLIT.split(value or "") if item})
        if len(items) > self.max_items:
            raise ValidationError(_("At most %(n)d values."), params={"n": self.max_items})
        return items

    def validate(self, value: list[str]) -> None:
        if self.item_validator is not None:
            errors = []
            for item in value:
                try:
                    self.item_validator(item)
                except ValidationError as exc:
                    errors.extend(exc.messages)
            if errors:
                raise ValidationError(errors)


def _known_model(name: str) -> None:
    if len(name) > 128 or not Model.objects.filter(name=name).exists():
        raise ValidationError(_("There is no model %(name)s."), params={"name": name})


class CompanyTimeZoneMixin:
    """Dates typed in the form are read in the company's time zone (where its limits roll over)."""

    time_zone: str

    def full_clean(self) -> None:
        import zoneinfo

        with timezone.override(zoneinfo.ZoneInfo(self.time_zone)):
            super().full_clean()  # type: ignore[misc]


class TokenForm(CompanyTimeZoneMixin, forms.Form):
    """A token's name and every setting a manager may change (``services.TOKEN_SETTINGS`` less
    owner and fallbacks). ``initial`` from ``token_initial(token)`` when editing."""

    name = forms.CharField(label=_("Name"), max_length=100, help_text=_("Unique within the company, e.g. ci-backend."))
    department = forms.ModelChoiceField(label=_("Department"), queryset=Department.objects.none(), required=False,
                                        empty_label=_("— none —"))
    environment = forms.ChoiceField(label=_("Environment"), choices=TokenEnvironment.choices, initial=TokenEnvironment.PROD)
    limit_total = MicroAmountField(label=_("Total limit, RUB"), required=False, help_text=_LIMIT_HELP)
    limit_weekly = MicroAmountField(label=_("Weekly limit, RUB"), required=False, help_text=_LIMIT_HELP)
    limit_monthly = MicroAmountField(label=_("Monthly limit, RUB"), required=False, help_text=_LIMIT_HELP)
    rpm = forms.IntegerField(label=_("Requests per minute"), required=False, min_value=0, max_value=2_000_000_000,
                             help_text=_("Empty = no limit."))
    tpm = forms.IntegerField(label=_("Tokens per minute"), required=False, min_value=0, max_value=2_000_000_000,
                             help_text=_("Empty = no limit."))
    models_allow = ListField(label=_("Allowed models"), item_validator=_known_model,
                             help_text=_("One per line; empty = every model."))
    models_deny = ListField(label=_("Denied models"), item_validator=_known_model, help_text=_("One per line."))
    ip_allow = ListField(label=_("Allowed IP addresses and networks"), item_validator=validate_cidr,
                         help_text=_("One per line, e.g. 203.0.113.7 or 10.0.0.0/8; empty = any address."))
    max_distinct_ips = forms.IntegerField(label=_("Distinct client IPs per day"), required=False, min_value=1,
                                          max_value=1_000_000, help_text=_("Empty = no cap."))
    expires_at = forms.DateTimeField(label=_("Expires"), required=False,
                                     widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
                                     input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"])

    def __init__(self, *args: Any, company: Company, token: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.time_zone = company.time_zone
        self.company, self.token = company, token
        self.fields["department"].queryset = Department.objects.filter(company=company).order_by("name")
        self.fields["expires_at"].help_text = _("Time zone %(zone)s; empty = never.") % {"zone": company.time_zone}
        names = list(Model.objects.filter(is_active=True).order_by("name").values_list("name", flat=True)[:40])
        if names:
            self.fields["models_allow"].help_text = _("One per line; empty = every model. Available: %(names)s.") % {"names": ", ".join(names)}

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        others = ApiToken.objects.filter(company=self.company, name=name)
        if self.token is not None:
            others = others.exclude(pk=self.token.pk)
        if others.exists():
            raise ValidationError(_("The company already has a token named %(name)s."), params={"name": name})
        return name

    def clean_expires_at(self):
        value = self.cleaned_data.get("expires_at")
        changed = "expires_at" in self.changed_data
        if value is not None and changed and value <= timezone.now():
            raise ValidationError(_("The expiry must be in the future."))
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        both = set(cleaned.get("models_allow") or []) & set(cleaned.get("models_deny") or [])
        if both:
            self.add_error("models_deny", _("Models both allowed and denied: %(m)s") % {"m": ", ".join(sorted(both))})
        return cleaned

    def token_settings(self) -> dict[str, Any]:
        """The cleaned settings as ``services.issue_token`` / ``update_token`` take them (name apart)."""
        return {name: self.cleaned_data[name] for name in self.fields if name != "name"}


def token_initial(token: Any) -> dict[str, Any]:
    """A ``TokenForm``'s initial values from a token."""
    return {name: getattr(token, name) for name in TokenForm.base_fields}


class TokenReasonForm(forms.Form):
    """Why a token is blocked (required: the developer sees it in the 403 answer) or revoked."""

    reason = forms.CharField(label=_("Reason"), max_length=300, required=False, strip=True,
                             widget=forms.TextInput(attrs={"placeholder": _("Reason")}))

    def __init__(self, *args: Any, required: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reason"].required = required
        if required:
            self.fields["reason"].error_messages["required"] = _("Give a reason: the token's users see it.")


class TokenFilterForm(forms.Form):
    """The token list's filters (all optional; a bad value is ignored, not an error page)."""

    q = forms.CharField(label=_("Search"), required=False, max_length=100)
    status = forms.ChoiceField(label=_("Status"), required=False, choices=[("", _("Any status")), *TokenStatus.choices])
    environment = forms.ChoiceField(label=_("Environment"), required=False,
                                    choices=[("", _("Any environment")), *TokenEnvironment.choices])
    department = forms.ModelChoiceField(label=_("Department"), required=False, queryset=Department.objects.none(),
                                        empty_label=_("Any department"))

    def __init__(self, *args: Any, company: Company, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["department"].queryset = Department.objects.filter(company=company).order_by("name")

    def filters(self) -> dict[str, Any]:
        """Keyword arguments for ``services.company_tokens`` (the valid filters only)."""
        if not self.is_valid():
            return {}
        data = self.cleaned_data
        return {"status": data["status"], "environment": data["environment"], "department": data["department"],
                "search": data["q"]}


class DepartmentForm(forms.Form):
    """A department's name, parent and monthly budget (rubles); the slug only when it is created."""

    name = forms.CharField(label=_("Name"), max_length=200)
    slug = forms.SlugField(label=_("Short name (slug)"), max_length=64, required=False,
                           help_text=_("Latin letters, digits and hyphens; used by configuration files. Empty = made from the name."))
    parent = forms.ModelChoiceField(label=_("Parent department"), queryset=Department.objects.none(), required=False,
                                    empty_label=_("— top level —"))
    monthly_budget = MicroAmountField(label=_("Monthly budget, RUB"), required=False,
                                      help_text=_("A cap on the month's spend of all its tokens; empty = no cap."))

    def __init__(self, *args: Any, company: Company, department: Department | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        parents = Department.objects.filter(company=company).order_by("name")
        if department is not None:
            parents = parents.exclude(pk=department.pk)
            del self.fields["slug"]
        self.fields["parent"].queryset = parents


class MemberRoleForm(forms.Form):
    """A member's new role."""

    role = forms.ChoiceField(label=_("Role"), choices=CompanyRole.choices)


class InvitationForm(forms.Form):
    """Who to invite (an email) and with which role."""

    email = forms.EmailField(label=_("Email"), max_length=254)
    role = forms.ChoiceField(label=_("Role"), choices=CompanyRole.choices, initial=CompanyRole.VIEWER)


class RemoveMemberForm(forms.Form):
    """Removing a member: whether their tokens are revoked with them."""

    revoke_tokens = forms.BooleanField(label=_("Also revoke the tokens they own"), required=False)


class TopUpForm(forms.Form):
    """A top-up request: the amount in rubles (whole kopecks) and a one-time key, so a form sent
    twice makes one request."""

    amount = MicroAmountField(label=_("Amount, RUB"), allow_zero=False, help_text=_("VAT included, e.g. 50000."))
    request_key = forms.CharField(widget=forms.HiddenInput, max_length=100)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {}).setdefault("request_key", uuid.uuid4().hex)
        super().__init__(*args, **kwargs)


class RequisitesForm(forms.ModelForm):
    """The company as its invoices and acts name the buyer."""

    class Meta:
        model = CompanyRequisites
        fields = ["legal_name", "inn", "kpp", "address"]


HISTORY_KINDS = {
    "": (),
    "top_up": (TransferKind.TOP_UP,),
    "usage": (TransferKind.USAGE,),
    "other": (TransferKind.CORRECTION, TransferKind.TRANSFER, TransferKind.HOLD, TransferKind.PAYOUT, TransferKind.USAGE_COST),
}


class HistoryFilterForm(forms.Form):
    """The wallet history's filter: every transfer, top-ups, usage or the rest (corrections…)."""

    kind = forms.ChoiceField(label=_("Show"), required=False, choices=[
        ("", _("Everything")), ("top_up", _("Top-ups")), ("usage", _("Usage")), ("other", _("Corrections and other"))])
    cursor = forms.CharField(required=False, widget=forms.HiddenInput, max_length=500)

    def kinds(self) -> tuple[str, ...]:
        """The transfer kinds chosen (empty = all)."""
        return HISTORY_KINDS[self.cleaned_data.get("kind") or ""] if self.is_valid() else ()
