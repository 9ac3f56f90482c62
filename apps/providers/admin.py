"""Superadmin pages for providers, models, prices, supplier keys and egress proxies.

Secrets are write-only here: a supplier key's secret and an egress proxy's URL (which may carry
credentials) are typed into a password box that never renders a value back; pages show only the
last four characters or the credential-free URL. Prices are versions: added, never edited.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from import_export.admin import ImportExportMixin

from apps.providers.models import EgressProxy, Model, Price, Provider, SupplierKey
from apps.providers.resources import ModelResource, PriceResource
from lib.admin import SPREADSHEET_FORMATS, AppendOnlyAdminMixin, ExportPermissionMixin, MicroAmountField, rub_column
from lib.crypto import SecretDecryptionError
from lib.money import format_rub


class WriteOnlySecretField(forms.CharField):
    """A password box that never renders the stored value back into the page."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("strip", True)
        if kwargs.get("label"):
            kwargs["label"] = capfirst(kwargs["label"])
        super().__init__(widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}), **kwargs)


class EgressProxyForm(forms.ModelForm):
    url = WriteOnlySecretField(
        label=_("URL"), max_length=1000, required=False,
        help_text=_("e.g. socks5://user:password@proxy.example.net:1080. Stored encrypted and never shown again; "
                    "leave empty to keep the current one."),
    )

    class Meta:
        model = EgressProxy
        fields = ["slug", "country", "url", "internal", "is_active"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is None:
            self.fields["url"].required = True
            self.fields["url"].help_text = _("e.g. socks5://user:password@proxy.example.net:1080. "
                                             "Stored encrypted and never shown again.")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        url = cleaned.get("url")
        if url:
            # The URL check depends on the "internal" flag of this very submission.
            self.instance.internal = bool(cleaned.get("internal"))
            try:
                self.instance.set_url(url)
            except ValidationError as exc:
                self.add_error(None, exc)
        elif "internal" in self.changed_data and self.instance.pk is not None:
            # Turning "internal" off must re-check the stored URL against the stricter rule.
            self.instance.internal = bool(cleaned.get("internal"))
            try:
                self.instance.set_url(self.instance.reveal_url())
            except SecretDecryptionError:
                self.add_error("url", _("The stored URL cannot be decrypted any more; enter it again."))
            except ValidationError:
                self.add_error("internal", _("The stored URL points at an internal address; enter a public URL first."))
        return cleaned


@admin.register(EgressProxy)
class EgressProxyAdmin(admin.ModelAdmin):
    form = EgressProxyForm
    list_display = ["slug", "country", "url_display", "internal", "is_active", "created_at"]
    list_filter = ["country", "internal", "is_active"]
    search_fields = ["slug", "country", "url_display"]
    date_hierarchy = "created_at"

    def get_fields(self, request: HttpRequest, obj: EgressProxy | None = None) -> list[str]:
        fields = ["slug", "country", "url", "internal", "is_active"]
        return fields if obj is None else ["slug", "country", "url_display", "url", "internal", "is_active", "created_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: EgressProxy | None = None) -> list[str]:
        return [] if obj is None else ["url_display", "created_at"]


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    # The model's clean() refuses unsafe base URLs (SSRF) unless "internal" is ticked.
    list_display = ["slug", "name", "kind", "base_url", "country", "internal", "egress", "is_active", "created_at"]
    list_filter = ["kind", "country", "internal", "is_active"]
    search_fields = ["slug", "name", "base_url"]
    list_select_related = ["egress"]
    autocomplete_fields = ["egress"]
    date_hierarchy = "created_at"
    fields = ["slug", "name", "kind", "base_url", "country", "internal", "egress", "options", "is_active"]

    def formfield_for_dbfield(self, db_field, request: HttpRequest, **kwargs: Any):
        if db_field.name == "base_url":
            # A base URL typed without a scheme is an HTTPS one (Django 6's default, chosen now).
            kwargs["assume_scheme"] = "https"
        return super().formfield_for_dbfield(db_field, request, **kwargs)


@admin.register(Model)
class ModelAdmin(ExportPermissionMixin, ImportExportMixin, admin.ModelAdmin):
    resource_classes = [ModelResource]
    formats = SPREADSHEET_FORMATS
    list_display = ["name", "provider", "upstream_model", "modality", "context_window", "max_output_tokens", "fallbacks",
                    "routing", "is_active", "created_at"]
    list_filter = ["modality", "routing", "is_active", "provider"]
    search_fields = ["name", "upstream_model", "provider__slug"]
    list_select_related = ["provider"]
    autocomplete_fields = ["provider"]
    date_hierarchy = "created_at"


_PRICE_HELP = _("In the price's currency per 1M tokens, e.g. 0.15")


class PriceForm(forms.ModelForm):
    input_per_1m = MicroAmountField(label=_("input per 1M tokens"), help_text=_PRICE_HELP)
    output_per_1m = MicroAmountField(label=_("output per 1M tokens"), help_text=_PRICE_HELP)
    cached_input_per_1m = MicroAmountField(label=_("cached input per 1M tokens"), required=False,
                                           help_text=_("Empty = the input price."))

    class Meta:
        model = Price
        fields = ["model", "currency", "input_per_1m", "output_per_1m", "cached_input_per_1m", "valid_from"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("cached_input_per_1m") is None and cleaned.get("input_per_1m") is not None:
            cleaned["cached_input_per_1m"] = cleaned["input_per_1m"]
        return cleaned


def _price_column(field: str, description: str):
    """A price in its own currency: at least 2 decimals, every micro-unit kept ("0.075 USD")."""
    return rub_column(field, description, exact=True, currency=lambda price: price.currency)


@admin.register(Price)
class PriceAdmin(ExportPermissionMixin, AppendOnlyAdminMixin, ImportExportMixin, admin.ModelAdmin):
    form = PriceForm
    resource_classes = [PriceResource]
    formats = SPREADSHEET_FORMATS
    list_display = ["model", "currency", "input_price", "output_price", "cached_input_price", "valid_from", "created_at"]
    list_filter = ["currency", "model__provider"]
    search_fields = ["model__name", "model__upstream_model"]
    list_select_related = ["model"]
    autocomplete_fields = ["model"]
    date_hierarchy = "valid_from"

    input_price = _price_column("input_per_1m", _("input per 1M tokens"))
    output_price = _price_column("output_per_1m", _("output per 1M tokens"))
    cached_input_price = _price_column("cached_input_per_1m", _("cached input per 1M tokens"))

    @admin.display(description=_("new version"))
    def new_version(self, obj: Price) -> str:
        query = urlencode({
            "model": obj.model_id, "currency": obj.currency,
            "input_per_1m": format_rub(obj.input_per_1m, 0, exact=True),
            "output_per_1m": format_rub(obj.output_per_1m, 0, exact=True),
            "cached_input_per_1m": format_rub(obj.cached_input_per_1m, 0, exact=True),
        })
        return format_html('<a href="{}?{}">{}</a>', reverse("admin:providers_price_add"), query,
                           _("Add a new price version from this one"))

    def get_fields(self, request: HttpRequest, obj: Price | None = None) -> list[str]:
        if obj is None:
            return ["model", "currency", "input_per_1m", "output_per_1m", "cached_input_per_1m", "valid_from"]
        return ["model", "currency", "input_price", "output_price", "cached_input_price", "valid_from", "created_at",
                "new_version"]

    def get_readonly_fields(self, request: HttpRequest, obj: Price | None = None) -> list[str]:
        return [] if obj is None else self.get_fields(request, obj)


class SupplierKeyForm(forms.ModelForm):
    secret = WriteOnlySecretField(
        label=_("secret"), max_length=4000, required=False,
        help_text=_("The upstream API key. Stored encrypted; only its last 4 characters are ever shown. "
                    "Leave empty to keep the current one."),
    )
    monthly_cap = MicroAmountField(
        label=_("monthly spend cap, RUB"), required=False, allow_zero=False,
        help_text=_("The most the platform may spend through this key in a calendar month (at the buy price); "
                    "the balancer stops using the key once its month's spend reaches it. Empty: no cap."),
    )

    class Meta:
        model = SupplierKey
        fields = ["supplier", "provider", "name", "secret", "weight", "priority", "status", "status_reason", "buy_coefficient",
                  "monthly_cap"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is None:
            self.fields["secret"].required = True
            self.fields["secret"].help_text = _("The upstream API key. Stored encrypted; only its last 4 characters are ever shown.")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        secret = cleaned.get("secret")
        if secret:
            try:
                self.instance.set_secret(secret)
            except ValidationError as exc:
                self.add_error(None, exc)
        return cleaned


@admin.register(SupplierKey)
class SupplierKeyAdmin(admin.ModelAdmin):
    form = SupplierKeyForm
    list_display = ["name", "provider", "supplier", "masked_secret", "secret_key_id", "status", "priority", "weight",
                    "buy_coefficient", "monthly_cap_rub", "updated_at"]
    list_filter = ["status", "provider", "secret_key_id"]
    search_fields = ["name", "supplier__name", "supplier__slug", "provider__slug", "=secret_last4"]
    list_select_related = ["provider", "supplier"]
    autocomplete_fields = ["supplier", "provider"]
    date_hierarchy = "created_at"

    monthly_cap_rub = rub_column("monthly_cap", _("monthly cap, RUB"))

    @admin.display(description=_("secret"))
    def masked_secret(self, obj: SupplierKey) -> str:
        return obj.masked_secret

    def get_fields(self, request: HttpRequest, obj: SupplierKey | None = None) -> list[str]:
        fields = ["supplier", "provider", "name", "secret", "weight", "priority", "status", "status_reason", "buy_coefficient",
                  "monthly_cap"]
        if obj is None:
            return fields
        return ["supplier", "provider", "name", "masked_secret", "secret_key_id", "secret", "weight", "priority",
                "status", "status_reason", "buy_coefficient", "monthly_cap", "created_at", "updated_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: SupplierKey | None = None) -> list[str]:
        return [] if obj is None else ["masked_secret", "secret_key_id", "created_at", "updated_at"]
