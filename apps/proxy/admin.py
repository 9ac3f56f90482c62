"""Superadmin page for API tokens.

The secret exists in clear exactly once: generated on add and handed to the superadmin in a
one-time message. Pages show only its display prefix; the sha256 is never rendered. Limits are
typed in rubles and stored in micro-rubles. Blocking and revoking go through the proxy's
services (with a reason), never through the edit form.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from apps.billing.admin import MicroAmountField
from apps.proxy.models import ApiToken, TokenStatus
from lib.money import format_rub

_LIMIT_HELP = _("In rubles, e.g. 5000 or 12.50; empty = no limit.")


class ApiTokenForm(forms.ModelForm):
    limit_total = MicroAmountField(label=_("total limit, RUB"), required=False, help_text=_LIMIT_HELP)
    limit_weekly = MicroAmountField(label=_("weekly limit, RUB"), required=False, help_text=_LIMIT_HELP)
    limit_monthly = MicroAmountField(label=_("monthly limit, RUB"), required=False, help_text=_LIMIT_HELP)

    class Meta:
        model = ApiToken
        fields = ["company", "department", "owner", "name", "environment", "limit_total", "limit_weekly", "limit_monthly",
                  "rpm", "tpm", "models_allow", "models_deny", "ip_allow", "max_distinct_ips", "expires_at"]


class TokenActionForm(ActionForm):
    reason = forms.CharField(label=_("Reason"), max_length=300, required=False,
                             help_text=_("Required for blocking and revoking; the token's owner sees it."))


def _set_status(queryset: QuerySet[ApiToken], *, status: str, reason: str) -> int:
    """Block or revoke in one UPDATE; a revoked token stays revoked (revocation is final)."""
    return queryset.exclude(status=TokenStatus.REVOKED).update(status=status, status_reason=reason, updated_at=timezone.now())


def _limit_column(field: str, description: str):
    def column(self, obj: ApiToken) -> str:
        value = getattr(obj, field)
        return "—" if value is None else f"{format_rub(value)} ₽"

    column.short_description = description  # type: ignore[attr-defined]
    column.admin_order_field = field  # type: ignore[attr-defined]
    return column


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    action_form = TokenActionForm
    actions = ["block_tokens", "revoke_tokens"]
    list_display = ["name", "secret_prefix", "company", "department", "environment", "status", "limit_total_rub",
                    "limit_monthly_rub", "expires_at", "last_used_at", "created_at"]
    list_filter = ["status", "environment"]
    search_fields = ["name", "=key_prefix", "company__name", "company__slug", "owner__email"]
    list_select_related = ["company", "department__company"]
    autocomplete_fields = ["company", "department", "owner"]
    date_hierarchy = "created_at"
    _editable = ["company", "department", "owner", "name", "environment", "limit_total", "limit_weekly", "limit_monthly",
                 "rpm", "tpm", "models_allow", "models_deny", "ip_allow", "max_distinct_ips", "expires_at"]
    _shown = ["secret_prefix", "status", "status_reason", "last_used_at", "created_at", "updated_at"]

    limit_total_rub = _limit_column("limit_total", _("total limit, RUB"))
    limit_monthly_rub = _limit_column("limit_monthly", _("monthly limit, RUB"))

    @admin.display(description=_("secret"), ordering="key_prefix")
    def secret_prefix(self, obj: ApiToken) -> str:
        return f"{obj.key_prefix}…" if obj.key_prefix else "—"

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        return self._editable if obj is None else self._editable[:5] + self._shown + self._editable[5:]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        # Status changes only through the actions, which go through the proxy's services.
        return [] if obj is None else self._shown

    def save_model(self, request: HttpRequest, obj: ApiToken, form: forms.ModelForm, change: bool) -> None:
        secret = None if change else obj.set_secret()
        super().save_model(request, obj, form, change)
        if secret is not None:
            # The only time the secret exists in clear: shown once, stored nowhere.
            messages.success(request, _("The token's secret, shown only now — copy it: %(secret)s") % {"secret": secret})

    def _reason(self, request: HttpRequest) -> str | None:
        reason = (request.POST.get("reason") or "").strip()
        if not reason:
            self.message_user(request, _("Give a reason to block or revoke tokens."), messages.ERROR)
            return None
        return reason[:300]

    @admin.action(description=_("Block selected tokens (with the reason given)"), permissions=["change"])
    def block_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        reason = self._reason(request)
        if reason is None:
            return
        count = _set_status(queryset, status=TokenStatus.BLOCKED, reason=reason)
        self.message_user(request, ngettext("%(n)d token blocked.", "%(n)d tokens blocked.", count) % {"n": count})

    @admin.action(description=_("Revoke selected tokens for good (with the reason given)"), permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        reason = self._reason(request)
        if reason is None:
            return
        count = _set_status(queryset, status=TokenStatus.REVOKED, reason=reason)
        self.message_user(request, ngettext("%(n)d token revoked.", "%(n)d tokens revoked.", count) % {"n": count})

    def has_delete_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        # Usage records point at tokens; a token ends by being revoked, not deleted.
        return False
