"""The policy form: one select per category × direction (stored in ``Policy.actions``), the regexes
validated (a pattern that does not compile is a form error), the token kept within the company."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.text import capfirst, format_lazy
from django.utils.translation import gettext_lazy as _

from apps.moderation.findings import CATEGORY_LABELS, Action, Category, Direction
from apps.moderation.models import ModerationEndpoint, Policy

ACTION_LABELS = {
    Action.ALLOW: _("allow"),
    Action.LOG: _("log only"),
    Action.MASK: _("mask"),
    Action.BLOCK: _("block"),
}
DIRECTION_LABELS = {Direction.PROMPT: _("prompts"), Direction.RESPONSE: _("responses")}


def action_field_name(direction: Direction, category: Category) -> str:
    """``action_prompt_person``: the form field of one cell of the actions grid."""
    return f"action_{direction.value}_{category.value}"


def _action_fields() -> dict[str, forms.Field]:
    choices = [(a.value, ACTION_LABELS[a]) for a in Action]
    return {action_field_name(direction, category): forms.ChoiceField(
                label=format_lazy("{} — {}", capfirst(CATEGORY_LABELS[category]), DIRECTION_LABELS[direction]),
                choices=choices)
            for direction in Direction for category in Category}


class _PolicyFormBase(forms.ModelForm):
    class Meta:
        model = Policy
        fields = ["company", "token", "mode", "use_ner", "use_injection_heuristics", "dictionary", "custom_patterns",
                  "allow_list", "content_text", "content_image", "content_document", "drop_blocked_images",
                  "llm_endpoint", "llm_prompt",
                  "llm_timeout_ms", "llm_on_responses", "external_endpoint", "external_timeout_ms", "on_failure",
                  "scan_budget_ms", "sensitive_routing", "keep_mapping"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for direction in Direction:
            for category in Category:
                self.initial.setdefault(action_field_name(direction, category),
                                        self.instance.action(category, direction).value)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        company, token = cleaned.get("company"), cleaned.get("token")
        if company is not None and token is not None and token.company_id != company.pk:
            self.add_error("token", _("The token belongs to another company."))
        self.instance.actions = {
            direction.value: {category.value: cleaned.get(action_field_name(direction, category), Action.ALLOW.value)
                              for category in Category}
            for direction in Direction}
        return cleaned


# ``Policy`` with its ``actions`` JSON edited as a grid of selects (category × direction); the selects are
# declared fields so the admin's fieldsets may name them.
PolicyForm = type("PolicyForm", (_PolicyFormBase,), {"__module__": __name__, **_action_fields()})


class ModerationEndpointForm(forms.ModelForm):
    """A moderation endpoint with its API key written, never shown back."""

    secret = forms.CharField(
        label=capfirst(_("API key")), max_length=4000, required=False, strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=_("Stored encrypted and never shown again; leave empty to keep the current one."))
    clear_secret = forms.BooleanField(label=_("remove the API key"), required=False)

    class Meta:
        model = ModerationEndpoint
        fields = ["name", "kind", "base_url", "internal", "model", "secret", "clear_secret", "is_active"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("clear_secret"):
            self.instance.set_secret("")
        elif cleaned.get("secret"):
            self.instance.set_secret(cleaned["secret"])
        return cleaned
