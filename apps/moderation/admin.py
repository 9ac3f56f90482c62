"""Superadmin page for the companies' data policies."""

from __future__ import annotations

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from apps.moderation.models import Policy


@admin.register(Policy)
class PolicyAdmin(admin.ModelAdmin):
    list_display = ["company", "mode", "detect_email", "detect_phone", "detect_person_name", "detect_passport",
                    "detect_snils", "detect_inn", "detect_bank_card", "detect_secrets", "updated_at"]
    list_filter = ["mode", "detect_person_name", "detect_secrets"]
    search_fields = ["company__name", "company__slug"]
    list_select_related = ["company"]
    autocomplete_fields = ["company"]
    date_hierarchy = "updated_at"
    fieldsets = [
        (None, {"fields": ["company", "mode"]}),
        (_("Detectors"), {"fields": ["detect_email", "detect_phone", "detect_person_name", "detect_passport",
                                     "detect_snils", "detect_inn", "detect_bank_card", "detect_secrets"]}),
        (_("Blocked words"), {"fields": ["blocked_words"]}),
    ]
