"""Superadmin pages for the companies' data policies and the moderation endpoints."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from apps.moderation.findings import Category, Direction
from apps.moderation.forms import ModerationEndpointForm, PolicyForm, action_field_name
from apps.moderation.models import ModerationEndpoint, Policy
from apps.moderation.report_models import ModerationReport


@admin.register(Policy)
class PolicyAdmin(admin.ModelAdmin):
    form = PolicyForm
    list_display = ["company", "token", "mode", "use_ner", "content_image", "content_document", "llm_endpoint",
                    "on_failure", "updated_at"]
    list_filter = ["mode", "use_ner", "on_failure", "sensitive_routing"]
    search_fields = ["company__name", "company__slug", "token__name", "=token__key_prefix"]
    list_select_related = ["company", "token", "llm_endpoint"]
    autocomplete_fields = ["company", "token"]
    date_hierarchy = "updated_at"

    def get_fieldsets(self, request: HttpRequest, obj: Policy | None = None):  # type: ignore[override]
        return [
            (None, {"fields": ["company", "token", "mode"]}),
            *[(_("Actions on %(direction)s") % {"direction": label},
               {"fields": [action_field_name(direction, category) for category in Category]})
              for direction, label in ((Direction.PROMPT, _("prompts")), (Direction.RESPONSE, _("responses")))],
            (_("Detectors"), {"fields": ["use_ner", "use_injection_heuristics", "dictionary", "custom_patterns"]}),
            (_("Allow-list"), {"fields": ["allow_list"]}),
            (_("Content types"), {"fields": ["content_text", "content_image", "content_document",
                                                   "drop_blocked_images"]}),
            (_("LLM moderator and external API"), {"fields": ["llm_endpoint", "llm_prompt", "llm_timeout_ms",
                                                               "llm_on_responses", "external_endpoint",
                                                               "external_timeout_ms"]}),
            (_("Failures, time and routing"), {"fields": ["on_failure", "scan_budget_ms", "sensitive_routing",
                                                           "keep_mapping"]}),
        ]


@admin.register(ModerationEndpoint)
class ModerationEndpointAdmin(admin.ModelAdmin):
    form = ModerationEndpointForm
    list_display = ["name", "kind", "base_url", "model", "masked_secret", "is_active", "updated_at"]
    list_filter = ["kind", "is_active"]
    search_fields = ["name", "base_url", "model"]

    @admin.display(description=_("API key"))
    def masked_secret(self, obj: ModerationEndpoint) -> str:
        return f"…{obj.secret_last4}" if obj.secret_last4 else "—"


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
