"""Superadmin page for the companies' data policies."""

from __future__ import annotations

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from apps.moderation.models import Policy
from apps.moderation.report_models import ModerationReport


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


@admin.register(ModerationReport)
class ModerationReportAdmin(admin.ModelAdmin):
    """Every logged, masked or blocked finding (read-only: the meter writer writes them)."""

    list_display = ["created_at", "company", "token", "category_name", "action", "direction", "content_type", "detector", "snippet",
                    "rerouted"]
    list_filter = ["action", "direction", "category", "content_type", "rerouted"]
    search_fields = ["request_id", "company__name", "token__name"]
    list_select_related = ["company", "token"]
    date_hierarchy = "created_at"
    exclude = ["sealed_mapping"]  # encrypted; never shown

    @admin.display(description=_("category"), ordering="category")
    def category_name(self, obj: ModerationReport) -> str:
        return obj.category_label

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
