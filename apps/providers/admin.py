"""Superadmin pages for providers, models, prices, supplier keys and egress proxies.

Secrets are write-only here: a supplier key's secret and an egress proxy's URL (which may carry
credentials) are typed into a password box that never renders a value back; pages show only the
last four characters or the credential-free URL. Prices are versions: added, never edited.

Supplier keys show their shared health (``apps/providers/key_health.py``, read from Redis at most
once a second for every page): circuit state, rate-limit cooldown, the last error (scrubbed by the
proxy) and the average latency of the key's answers in the last hour (from usage records).
Re-enabling a key (status back to active) also clears its health record in every proxy.

Local nodes show their health as the health task last saw it (state, check latency, last error,
when), their outstanding requests summed over the proxy workers (approximate, published about once
a second), their cost per 1M tokens and the average buy cost and latency of their requests in the
last hour (from usage records).

Egress proxies show what their periodic health check found (``apps.proxy.egress_health``): health, last
check, latency and the last error (scrubbed), in their list and on each provider's page, next to
the provider's egress proxies in their order.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import redis
from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.postgres.aggregates import ArrayAgg
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db.models import Avg, CharField, Count, FloatField, Func, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Cast, Concat, Extract
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from import_export.admin import ImportExportMixin

from apps.billing.models import UsageRecord, UsageStatus
from apps.providers import key_health, node_health
from apps.providers.models import (
    EgressHealth,
    EgressProxy,
    LocalNode,
    Model,
    NodeCostMode,
    Price,
    Provider,
    ProviderEgress,
    SupplierKey,
    SupplierKeyStatus,
)
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
    probe_url = forms.URLField(label=_("probe URL"), max_length=500, required=False, assume_scheme="https",
                               help_text=EgressProxy._meta.get_field("probe_url").help_text)
    url = WriteOnlySecretField(
        label=_("URL"), max_length=1000, required=False,
        help_text=_("e.g. socks5://user:password@proxy.example.net:1080. Stored encrypted and never shown again; "
                    "leave empty to keep the current one."),
    )

    class Meta:
        model = EgressProxy
        fields = ["slug", "country", "url", "internal", "is_active", "probe_url"]

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


def _health_label(egress: EgressProxy) -> str:
    """"up", "down" or "not checked yet", with the time of the last check."""
    label = str(EgressHealth(egress.health).label)
    if egress.health_checked_at is None:
        return label
    return f"{label} ({timezone.localtime(egress.health_checked_at):%Y-%m-%d %H:%M:%S})"


@admin.register(EgressProxy)
class EgressProxyAdmin(admin.ModelAdmin):
    form = EgressProxyForm
    list_display = ["slug", "country", "url_display", "health", "health_checked_at", "latency", "health_error",
                    "internal", "is_active", "created_at"]
    list_filter = ["country", "health", "internal", "is_active"]
    search_fields = ["slug", "country", "url_display"]
    date_hierarchy = "created_at"

    @admin.display(description=_("latency"), ordering="health_latency_ms")
    def latency(self, obj: EgressProxy) -> str:
        return "—" if obj.health_latency_ms is None else f"{obj.health_latency_ms} ms"

    def get_fields(self, request: HttpRequest, obj: EgressProxy | None = None) -> list[str]:
        fields = ["slug", "country", "url", "internal", "is_active", "probe_url"]
        if obj is None:
            return fields
        return ["slug", "country", "url_display", "url", "internal", "is_active", "probe_url", "health",
                "health_checked_at", "latency", "health_error", "created_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: EgressProxy | None = None) -> list[str]:
        return [] if obj is None else ["url_display", "health", "health_checked_at", "latency", "health_error", "created_at"]


class ProviderEgressInline(admin.TabularInline):
    """A provider's egress proxies in order, each with its last health check (read-only)."""

    model = ProviderEgress
    extra = 0
    autocomplete_fields = ["egress"]
    fields = ["egress", "priority", "egress_url", "egress_health", "egress_latency", "egress_error"]
    readonly_fields = ["egress_url", "egress_health", "egress_latency", "egress_error"]

    @admin.display(description=_("URL"))
    def egress_url(self, obj: ProviderEgress) -> str:
        return obj.egress.url_display if obj.pk else "—"

    @admin.display(description=_("health"))
    def egress_health(self, obj: ProviderEgress) -> str:
        return _health_label(obj.egress) if obj.pk else "—"

    @admin.display(description=_("latency"))
    def egress_latency(self, obj: ProviderEgress) -> str:
        latency = obj.egress.health_latency_ms if obj.pk else None
        return "—" if latency is None else f"{latency} ms"

    @admin.display(description=_("last error"))
    def egress_error(self, obj: ProviderEgress) -> str:
        return (obj.egress.health_error or "—") if obj.pk else "—"

    def get_queryset(self, request: HttpRequest) -> QuerySet[ProviderEgress]:
        return super().get_queryset(request).select_related("egress")


@admin.register(ProviderEgress)
class ProviderEgressAdmin(admin.ModelAdmin):
    """Every provider's egress proxies in order, with each proxy's last health check."""

    list_display = ["provider", "priority", "egress", "health", "latency", "last_error"]
    list_filter = ["provider", "egress__country", "egress__health"]
    search_fields = ["provider__slug", "egress__slug"]
    list_select_related = ["provider", "egress"]
    autocomplete_fields = ["provider", "egress"]

    @admin.display(description=_("health"), ordering="egress__health")
    def health(self, obj: ProviderEgress) -> str:
        return _health_label(obj.egress)

    @admin.display(description=_("latency"))
    def latency(self, obj: ProviderEgress) -> str:
        return "—" if obj.egress.health_latency_ms is None else f"{obj.egress.health_latency_ms} ms"

    @admin.display(description=_("last error"))
    def last_error(self, obj: ProviderEgress) -> str:
        return obj.egress.health_error or "—"


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    """Providers with their visibility columns: keys healthy/total (the keys' shared health, read
    from Redis at most once a second), requests, upstream errors and the average latency of
    answers in the last hour, and the last upstream error of the last 24 hours (from usage records:
    its time, HTTP status and the gateway's code — records keep no upstream text). All of it comes
    from one annotated query for the whole page (correlated subqueries), never a query per row."""

    # The model's clean() refuses unsafe base URLs (SSRF) unless "internal" is ticked.
    list_display = ["slug", "name", "kind", "base_url", "country", "internal", "egress_list", "is_active", "keys_health",
                    "requests_last_hour", "errors_last_hour", "latency_last_hour", "last_upstream_error", "created_at"]
    list_filter = ["kind", "country", "internal", "is_active"]
    search_fields = ["slug", "name", "base_url"]
    date_hierarchy = "created_at"
    fields = ["slug", "name", "kind", "base_url", "country", "internal", "options", "is_active"]
    inlines = [ProviderEgressInline]
    visibility_fields = ["keys_health", "requests_last_hour", "errors_last_hour", "latency_last_hour", "last_upstream_error"]

    def get_fields(self, request: HttpRequest, obj: Provider | None = None) -> list[str]:
        return self.fields if obj is None else [*self.fields, *self.visibility_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: Provider | None = None) -> list[str]:
        return [] if obj is None else list(self.visibility_fields)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Provider]:
        now = timezone.now()
        hour, day = now - timedelta(hours=1), now - timedelta(days=1)
        recent = UsageRecord.objects.filter(provider=OuterRef("pk"), started_at__gte=hour).values("provider")
        errors = recent.filter(status__in=[UsageStatus.UPSTREAM_ERROR, UsageStatus.FAILED])
        last_error = (UsageRecord.objects.filter(provider=OuterRef("pk"), started_at__gte=day, status=UsageStatus.UPSTREAM_ERROR)
                      .order_by("-started_at"))
        keys = SupplierKey.objects.filter(provider=OuterRef("pk")).values("provider")
        active = keys.filter(status=SupplierKeyStatus.ACTIVE)
        return super().get_queryset(request).prefetch_related("egress_links__egress").annotate(
            _keys_total=Subquery(keys.annotate(n=Count("pk")).values("n")),
            _active_keys=Subquery(active.annotate(ids=ArrayAgg(Func(
                "pk", Extract("updated_at", "epoch"), function="ARRAY", template="%(function)s[%(expressions)s]",
                output_field=ArrayField(FloatField())), order_by="pk")).values("ids")),
            _requests=Subquery(recent.annotate(n=Count("pk")).values("n")),
            _errors=Subquery(errors.annotate(n=Count("pk")).values("n")),
            _latency=Subquery(recent.filter(status=UsageStatus.OK).annotate(avg=Avg("latency_ms")).values("avg")),
            _last_error_at=Subquery(last_error.values("started_at")[:1]),
            _last_error=Subquery(last_error.annotate(text=Concat(Cast("http_status", CharField()), Value(" "), "error_code",
                                                                 output_field=CharField())).values("text")[:1]),
        )

    @admin.display(description=_("keys healthy/total"))
    def keys_health(self, obj: Provider) -> str:
        """Active keys that routing would use now (breaker closed, not rate-limited, not parked by the
        proxy) / all keys; "?" for the healthy count when Redis cannot be read."""
        total = getattr(obj, "_keys_total", None) or 0
        records = _health.records()
        if records is None:
            return f"?/{total}"
        now = time.time()
        healthy = sum(1 for key_id, updated_at in (getattr(obj, "_active_keys", None) or [])
                      if _key_usable(records.get(int(key_id), key_health.KeyHealth()), updated_at, now))
        return f"{healthy}/{total}"

    @admin.display(description=_("requests, last hour"))
    def requests_last_hour(self, obj: Provider) -> int:
        return getattr(obj, "_requests", None) or 0

    @admin.display(description=_("errors, last hour"))
    def errors_last_hour(self, obj: Provider) -> int:
        """Requests that ended in an upstream error or a gateway failure."""
        return getattr(obj, "_errors", None) or 0

    @admin.display(description=_("avg latency, last hour"))
    def latency_last_hour(self, obj: Provider) -> str:
        value = getattr(obj, "_latency", None)
        return "—" if value is None else f"{round(value)} ms"

    @admin.display(description=_("last upstream error (24 h)"))
    def last_upstream_error(self, obj: Provider) -> str:
        at = getattr(obj, "_last_error_at", None)
        if at is None:
            return "—"
        return f"{timezone.localtime(at):%Y-%m-%d %H:%M:%S} {getattr(obj, '_last_error', '')}"[:300]

    @admin.display(description=_("egress proxies"))
    def egress_list(self, obj: Provider) -> str:
        """The provider's egress proxies in order, each with its health ("—": calls leave directly)."""
        links = sorted(obj.egress_links.all(), key=lambda link: (link.priority, link.egress.slug))
        return ", ".join(f"{link.egress.slug} ({EgressHealth(link.egress.health).label})" for link in links) or "—"

    def formfield_for_dbfield(self, db_field, request: HttpRequest, **kwargs: Any):
        if db_field.name == "base_url":
            # A base URL typed without a scheme is an HTTPS one (Django 6's default, chosen now).
            kwargs["assume_scheme"] = "https"
        return super().formfield_for_dbfield(db_field, request, **kwargs)


def _key_usable(record: key_health.KeyHealth, updated_at: float, now: float) -> bool:
    """Whether routing would try a key with this shared health now: not parked since its last save
    (``updated_at``, Unix seconds), breaker closed, no rate-limit cooldown running."""
    return not record.parked(updated_at) and record.circuit(now) == key_health.CLOSED and record.cool_until <= now


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
    cache_write_per_1m = MicroAmountField(label=_("cache write per 1M tokens"), required=False,
                                          help_text=_("Where the provider charges prompt-cache writes. Recorded; not charged yet."))
    per_request = MicroAmountField(label=_("per request"), required=False, help_text=_("Recorded; not charged yet."))
    per_image = MicroAmountField(label=_("per image"), required=False, help_text=_("Recorded; not charged yet."))

    class Meta:
        model = Price
        fields = ["model", "currency", "input_per_1m", "output_per_1m", "cached_input_per_1m", "cache_write_per_1m",
                  "per_request", "per_image", "source", "valid_from"]

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
    cache_write_price = _price_column("cache_write_per_1m", _("cache write per 1M tokens"))
    per_request_price = _price_column("per_request", _("per request"))
    per_image_price = _price_column("per_image", _("per image"))

    @admin.display(description=_("new version"))
    def new_version(self, obj: Price) -> str:
        prefill = {
            "model": obj.model_id, "currency": obj.currency,
            "input_per_1m": format_rub(obj.input_per_1m, 0, exact=True),
            "output_per_1m": format_rub(obj.output_per_1m, 0, exact=True),
            "cached_input_per_1m": format_rub(obj.cached_input_per_1m, 0, exact=True),
        }
        # The catalogue's extra prices carry over to the new version unless the superadmin clears them.
        for name in ("cache_write_per_1m", "per_request", "per_image"):
            if getattr(obj, name) is not None:
                prefill[name] = format_rub(getattr(obj, name), 0, exact=True)
        query = urlencode(prefill)
        return format_html('<a href="{}?{}">{}</a>', reverse("admin:providers_price_add"), query,
                           _("Add a new price version from this one"))

    def get_fields(self, request: HttpRequest, obj: Price | None = None) -> list[str]:
        if obj is None:
            return ["model", "currency", "input_per_1m", "output_per_1m", "cached_input_per_1m", "cache_write_per_1m",
                    "per_request", "per_image", "source", "valid_from"]
        return ["model", "currency", "input_price", "output_price", "cached_input_price", "cache_write_price",
                "per_request_price", "per_image_price", "source", "valid_from", "created_at", "new_version"]

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


logger = logging.getLogger(__name__)

_HEALTH_TTL = 1.0  # seconds one read of every key's health serves the admin's pages


class _HealthCache:
    """Every key's shared health record, read from Redis at most once per ``_HEALTH_TTL`` seconds
    (a changelist shows many keys: one read for all). Unreachable Redis reads as None."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read_at = 0.0
        self._records: dict[int, key_health.KeyHealth] | None = None

    def records(self) -> dict[int, key_health.KeyHealth] | None:
        with self._lock:
            if time.monotonic() - self._read_at > _HEALTH_TTL:
                self._records = _read_all_health()
                self._read_at = time.monotonic()
            return self._records


def _read_all_health() -> dict[int, key_health.KeyHealth] | None:
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        try:
            return key_health.read_health(client)
        finally:
            client.close()
    except redis.RedisError:
        logger.warning("could not read the supplier keys' health from Redis")
        return None


_health = _HealthCache()


def _when(unix: float) -> str:
    return timezone.localtime(datetime.fromtimestamp(unix, UTC)).strftime("%Y-%m-%d %H:%M:%S")


@admin.register(SupplierKey)
class SupplierKeyAdmin(admin.ModelAdmin):
    form = SupplierKeyForm
    list_display = ["name", "provider", "supplier", "masked_secret", "status", "health", "cooldown_until", "last_error",
                    "recent_latency", "priority", "weight", "buy_coefficient", "monthly_cap_rub", "updated_at"]
    list_filter = ["status", "provider", "secret_key_id"]
    search_fields = ["name", "supplier__name", "supplier__slug", "provider__slug", "=secret_last4"]
    list_select_related = ["provider", "supplier"]
    autocomplete_fields = ["supplier", "provider"]
    date_hierarchy = "created_at"

    monthly_cap_rub = rub_column("monthly_cap", _("monthly cap, RUB"))

    @admin.display(description=_("secret"))
    def masked_secret(self, obj: SupplierKey) -> str:
        return obj.masked_secret

    def get_queryset(self, request: HttpRequest) -> QuerySet[SupplierKey]:
        # The key's answers in the last hour, averaged in one subquery (index usage_key_time): no query per row.
        since = timezone.now() - timedelta(hours=1)
        latency = (UsageRecord.objects.filter(supplier_key=OuterRef("pk"), started_at__gte=since, status=UsageStatus.OK)
                   .values("supplier_key").annotate(avg=Avg("latency_ms")).values("avg"))
        return super().get_queryset(request).annotate(recent_latency_ms=Subquery(latency))

    def _record(self, obj: SupplierKey) -> key_health.KeyHealth | None:
        records = _health.records()
        return None if records is None else records.get(obj.pk, key_health.KeyHealth())

    @admin.display(description=_("health"))
    def health(self, obj: SupplierKey) -> str:
        """The breaker as routing sees it now: closed (serving; with the failures counted so far), open
        or half-open (probing); disabled or exhausted by the proxy; "unknown" when Redis cannot be read."""
        record = self._record(obj)
        if record is None:
            return str(_("unknown"))
        if record.parked(obj.updated_at.timestamp()):
            return str(_("disabled by the proxy") if record.state == key_health.INVALID else _("exhausted (parked)"))
        circuit = record.circuit(time.time())
        if circuit == key_health.OPEN:
            return str(_("open until %(time)s") % {"time": _when(record.open_until)})
        if circuit == key_health.HALF_OPEN:
            return str(_("half-open (probing)"))
        return str(_("closed (serving)")) + (f", {record.failures} ✗" if record.failures else "")

    @admin.display(description=_("rate-limited until"))
    def cooldown_until(self, obj: SupplierKey) -> str:
        record = self._record(obj)
        return _when(record.cool_until) if record is not None and record.cool_until > time.time() else "—"

    @admin.display(description=_("last error"))
    def last_error(self, obj: SupplierKey) -> str:
        """The last failure: when, the gateway's code and what the provider said (scrubbed by the proxy)."""
        record = self._record(obj)
        if record is None or not record.at:
            return "—"
        return f"{_when(record.at)} {record.code}: {record.error}"[:300]

    @admin.display(description=_("avg latency, last hour"))
    def recent_latency(self, obj: SupplierKey) -> str:
        value = getattr(obj, "recent_latency_ms", None)
        return "—" if value is None else f"{round(value)} ms"

    def save_model(self, request: HttpRequest, obj: SupplierKey, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if change and "status" in form.changed_data and obj.status == SupplierKeyStatus.ACTIVE:
            # Re-enabled by a person: the proxies forget why they benched it (breaker, cooldown, parking).
            try:
                client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
                try:
                    key_health.reset_health(client, obj.pk)
                finally:
                    client.close()
            except redis.RedisError:
                logger.warning("could not clear the health of supplier key %s; a disabled state older than this save is "
                               "ignored anyway", obj.pk)

    def get_fields(self, request: HttpRequest, obj: SupplierKey | None = None) -> list[str]:
        fields = ["supplier", "provider", "name", "secret", "weight", "priority", "status", "status_reason", "buy_coefficient",
                  "monthly_cap"]
        if obj is None:
            return fields
        return ["supplier", "provider", "name", "masked_secret", "secret_key_id", "secret", "weight", "priority",
                "status", "status_reason", "health", "cooldown_until", "last_error", "recent_latency", "buy_coefficient",
                "monthly_cap", "created_at", "updated_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: SupplierKey | None = None) -> list[str]:
        return [] if obj is None else ["masked_secret", "secret_key_id", "health", "cooldown_until", "last_error",
                                       "recent_latency", "created_at", "updated_at"]


# --- Local nodes --------------------------------------------------------------------------------

_NODE_COST_HELP = _("RUB, e.g. 120 or 0.35 (micro-ruble precision).")


class _NodeLoadCache:
    """The nodes' outstanding requests (``node_health.outstanding_by_node``), read from Redis at most
    once per ``_HEALTH_TTL`` seconds: a changelist shows many nodes, one read serves them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read_at = 0.0
        self._load: dict[int, int] = {}

    def read(self) -> dict[int, int]:
        with self._lock:
            if time.monotonic() - self._read_at > _HEALTH_TTL:
                self._load = node_health.outstanding_by_node()
                self._read_at = time.monotonic()
            return self._load


_node_load = _NodeLoadCache()


class LocalNodeForm(forms.ModelForm):
    secret = WriteOnlySecretField(
        label=_("API key"), max_length=4000, required=False,
        help_text=_("The node's API key, if it asks for one (vLLM --api-key). Stored encrypted; leave empty to keep "
                    "the current one."),
    )
    clear_secret = forms.BooleanField(label=_("remove the API key"), required=False)
    input_per_1m = MicroAmountField(label=_("input per 1M tokens, RUB"), required=False, help_text=_NODE_COST_HELP)
    output_per_1m = MicroAmountField(label=_("output per 1M tokens, RUB"), required=False, help_text=_NODE_COST_HELP)
    gpu_hour = MicroAmountField(label=_("GPU-hour, RUB"), required=False, help_text=_NODE_COST_HELP)

    class Meta:
        model = LocalNode
        fields = ["provider", "name", "base_url", "internal", "secret", "clear_secret", "weight", "supplier", "cost_mode",
                  "input_per_1m", "output_per_1m", "gpu_hour", "tokens_per_hour", "health_path", "is_active"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        for name in ("input_per_1m", "output_per_1m", "gpu_hour"):
            if cleaned.get(name) is None:
                cleaned[name] = 0
        if cleaned.get("clear_secret"):
            self.instance.set_secret("")
        elif cleaned.get("secret"):
            self.instance.set_secret(cleaned["secret"])
        return cleaned


@admin.register(LocalNode)
class LocalNodeAdmin(admin.ModelAdmin):
    form = LocalNodeForm
    list_display = ["name", "provider", "base_url", "supplier", "weight", "is_active", "health_state", "outstanding",
                    "health_latency", "health_error", "health_checked_at", "cost_rate", "recent_cost", "recent_latency"]
    list_filter = ["health", "is_active", "provider", "cost_mode"]
    search_fields = ["name", "provider__slug", "supplier__slug", "base_url"]
    list_select_related = ["provider", "supplier"]
    autocomplete_fields = ["provider", "supplier"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[LocalNode]:
        # The node's requests in the last hour, averaged in subqueries: no query per row.
        since = timezone.now() - timedelta(hours=1)
        recent = UsageRecord.objects.filter(node=OuterRef("pk"), started_at__gte=since, status=UsageStatus.OK).values("node")
        return super().get_queryset(request).annotate(
            recent_latency_ms=Subquery(recent.annotate(avg=Avg("latency_ms")).values("avg")),
            recent_buy_cost=Subquery(recent.annotate(avg=Avg("buy_cost")).values("avg")))

    @admin.display(description=_("health"), ordering="health")
    def health_state(self, obj: LocalNode) -> str:
        return str(obj.get_health_display())

    @admin.display(description=_("outstanding (≈)"))
    def outstanding(self, obj: LocalNode) -> str:
        return str(_node_load.read().get(obj.pk, 0))

    @admin.display(description=_("check latency"), ordering="health_latency_ms")
    def health_latency(self, obj: LocalNode) -> str:
        return "—" if obj.health_latency_ms is None else f"{obj.health_latency_ms} ms"

    @admin.display(description=_("cost per 1M tokens (in / out)"))
    def cost_rate(self, obj: LocalNode) -> str:
        """The per-token rate billing uses, per 1M tokens; for a GPU-hour cost, the hour shared by its throughput."""
        rate_in, rate_out = obj.rate_per_1m
        text = f"{format_rub(rate_in, 2)} / {format_rub(rate_out, 2)} ₽"
        if obj.cost_mode == NodeCostMode.GPU_HOUR:
            text += f" ({format_rub(obj.gpu_hour, 2)} ₽/h ÷ {obj.tokens_per_hour} tok/h)"
        return text

    @admin.display(description=_("avg cost per request, last hour"))
    def recent_cost(self, obj: LocalNode) -> str:
        value = getattr(obj, "recent_buy_cost", None)
        return "—" if value is None else f"{format_rub(round(value), 6)} ₽"

    @admin.display(description=_("avg latency, last hour"))
    def recent_latency(self, obj: LocalNode) -> str:
        value = getattr(obj, "recent_latency_ms", None)
        return "—" if value is None else f"{round(value)} ms"

    @admin.display(description=_("API key"))
    def masked_secret(self, obj: LocalNode) -> str:
        return f"…{obj.secret_last4}" if obj.secret_last4 else "—"

    def get_fields(self, request: HttpRequest, obj: LocalNode | None = None) -> list[str]:
        fields = ["provider", "name", "base_url", "internal", "secret", "clear_secret", "weight", "supplier", "cost_mode",
                  "input_per_1m", "output_per_1m", "gpu_hour", "tokens_per_hour", "health_path", "is_active"]
        if obj is None:
            return fields
        return [*fields[:4], "masked_secret", *fields[4:], "health_state", "outstanding", "health_latency", "health_error",
                "health_checked_at", "cost_rate", "recent_cost", "recent_latency", "created_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: LocalNode | None = None) -> list[str]:
        return [] if obj is None else ["masked_secret", "health_state", "outstanding", "health_latency", "health_error",
                                       "health_checked_at", "cost_rate", "recent_cost", "recent_latency", "created_at"]
