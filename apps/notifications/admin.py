"""Superadmin pages: a company's alert settings (the webhook secret is shown once, when made) and
the deliveries (view-only history)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db import models
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from lib.admin import ViewOnlyAdminMixin

from .models import AlertDelivery, AlertSettings


@admin.register(AlertSettings)
class AlertSettingsAdmin(admin.ModelAdmin):
    list_display = ["company", "enabled", "emails", "webhook_url", "has_secret", "low_wallet_threshold"]
    list_select_related = ["company"]
    search_fields = ["company__name", "company__slug"]
    fields = ["company", "enabled", "emails", "webhook_url", "low_wallet_threshold"]
    actions = ["new_webhook_secret"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    @admin.display(boolean=True, description=_("webhook secret set"))
    def has_secret(self, obj: AlertSettings) -> bool:
        return bool(obj.webhook_secret_encrypted)

    @admin.action(description=_("Make a new webhook signing secret (shown once)"))
    def new_webhook_secret(self, request: HttpRequest, queryset) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(request, _("Choose exactly one company."), messages.WARNING)
            return None
        conf = queryset.get()
        secret = conf.rotate_webhook_secret()
        conf.save(update_fields=["webhook_secret_encrypted"])
        response = HttpResponse(format_html(
            "<p>{}</p><pre>{}</pre><p>{}</p>", _("The new webhook signing secret of %(c)s:") % {"c": conf.company}, secret,
            _("Copy it now: it is not shown again. Verify X-Jetstream-Signature with it.")))
        response["Cache-Control"] = "no-store"
        return response


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(ViewOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["created_at", "company", "kind", "subject_id", "level", "period", "channel", "status", "attempts",
                    "last_error", "sent_at"]
    list_filter = ["status", "kind", "channel"]
    list_select_related = ["company"]
    search_fields = ["company__name", "period"]
    date_hierarchy = "created_at"
