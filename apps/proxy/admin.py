"""Superadmin page for API tokens.

The secret exists in clear exactly once: generated on add and shown in the answer to that very
POST (``response_add`` renders it), so no store — not the session, where messages live, nor a
cookie — ever holds it. Pages show only its display prefix; the sha256 is never rendered. Limits are
typed in rubles and stored in micro-rubles. Blocking, unblocking and revoking go through
apps.proxy.services (block/revoke need a reason), never through the edit form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from apps.proxy import services
from apps.proxy.exceptions import TokenStateError
from apps.proxy.models import ApiToken
from lib.admin import MappingField, MicroAmountField, rub_column

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

    from lib.admin import FieldGroups

# Where save_model hands a new secret to response_add: on the request object, gone with it.
_SECRET_ATTR = "_jetstream_new_token_secret"
_LIMIT_HELP = _("In rubles, e.g. 5000 or 12.50; empty = no limit.")


class ApiTokenForm(forms.ModelForm):
    limit_total = MicroAmountField(label=_("total limit, RUB"), required=False, help_text=_LIMIT_HELP)
    limit_weekly = MicroAmountField(label=_("weekly limit, RUB"), required=False, help_text=_LIMIT_HELP)
    limit_monthly = MicroAmountField(label=_("monthly limit, RUB"), required=False, help_text=_LIMIT_HELP)
    fallbacks = MappingField(label=_("fallback chains"), required=False, help_text=ApiToken._meta.get_field("fallbacks").help_text)

    class Meta:
        model = ApiToken
        fields = ["company", "department", "owner", "name", "environment", "limit_total", "limit_weekly", "limit_monthly",
                  "rpm", "tpm", "models_allow", "models_deny", "ip_allow", "max_distinct_ips", "expires_at", "fallbacks"]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data  # what ModelForm.clean returns
        company = cleaned.get("company") or (self.instance.company if self.instance.company_id else None)
        if company is not None:
            try:
                services.check_owner(company=company, owner=cleaned.get("owner"))
            except ValidationError as exc:
                self.add_error(None, exc)
        return cleaned


class TokenActionForm(ActionForm):
    reason = forms.CharField(label=_("Reason"), max_length=300, required=False,
                             help_text=_("Required for blocking and revoking; the token's owner sees it."))


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    action_form = TokenActionForm
    actions = ["block_tokens", "unblock_tokens", "revoke_tokens"]
    list_display = ["name", "secret_prefix", "company", "department", "environment", "status", "limit_total_rub",
                    "limit_monthly_rub", "expires_at", "last_used_at", "created_at"]
    list_filter = ["status", "environment"]
    search_fields = ["name", "=key_prefix", "company__name", "company__slug", "owner__email"]
    list_select_related = ["company", "department__company"]
    autocomplete_fields = ["company", "department", "owner"]
    date_hierarchy = "created_at"
    _editable = ["company", "department", "owner", "name", "environment", "limit_total", "limit_weekly", "limit_monthly",
                 "rpm", "tpm", "models_allow", "models_deny", "ip_allow", "max_distinct_ips", "expires_at", "fallbacks"]
    _shown = ["secret_prefix", "status", "status_reason", "last_used_at", "created_at", "updated_at"]

    limit_total_rub = rub_column("limit_total", _("total limit, RUB"))
    limit_monthly_rub = rub_column("limit_monthly", _("monthly limit, RUB"))

    @admin.display(description=_("secret"), ordering="key_prefix")
    def secret_prefix(self, obj: ApiToken) -> str:
        return f"{obj.key_prefix}…" if obj.key_prefix else "—"

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> FieldGroups:
        if obj is None:
            return [*self._editable]
        return [*self._editable[:5], *self._shown, *self._editable[5:]]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        # Status changes only through the actions, which go through the proxy's services; a token
        # never moves to another company (its spend history and counters belong to this one).
        return [] if obj is None else ["company", *self._shown]

    def save_model(self, request: HttpRequest, obj: ApiToken, form: forms.ModelForm, change: bool) -> None:
        values = {name: form.cleaned_data[name] for name in services.TOKEN_SETTINGS if name in form.cleaned_data}
        if change:
            services.update_token(token=obj, name=form.cleaned_data["name"], **values)
            return
        token, secret = services.issue_token(company=obj.company, name=obj.name, **values)
        # The admin goes on with `obj` (its log entry, the redirect): make it the saved token.
        obj.pk, obj.key_hash, obj.key_prefix, obj._state = token.pk, token.key_hash, token.key_prefix, token._state
        if secret is not None:
            # The only time the secret exists in clear: kept on this request for response_add to show.
            setattr(request, _SECRET_ATTR, secret)

    def response_add(self, request: HttpRequest, obj: ApiToken, post_url_continue: str | None = None) -> HttpResponse:
        """The page that shows a new token's secret, once, as the answer to the POST that created it.

        Not a redirect with a flashed message: a message waits in the session table (or a cookie)
        until the next page renders it. The admin's views send ``Cache-Control: no-store``."""
        secret: str | None = getattr(request, _SECRET_ATTR, None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        opts = self.opts
        context = {
            **self.admin_site.each_context(request),
            "opts": opts, "title": _("secret"), "token": obj,
            "secret_html": format_html('<code id="token-secret">{}</code>', secret),
            "change_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]),
            "add_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_add"),
            "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
        }
        return TemplateResponse(request, "admin/proxy/apitoken/secret_shown.html", context)

    def _reason(self, request: HttpRequest, *, required: bool = True) -> str | None:
        reason = (request.POST.get("reason") or "").strip()[:300]
        if required and not reason:
            self.message_user(request, _("Give a reason to block or revoke tokens."), messages.ERROR)
            return None
        return reason

    def _apply(self, request: HttpRequest, queryset: QuerySet[ApiToken], service, reason: str,
               done: StrOrPromise) -> None:
        changed = refused = 0
        for token in queryset:
            try:
                outcome = service(token=token, reason=reason)
            except TokenStateError:
                refused += 1
                continue
            changed += outcome.changed
        self.message_user(request, done % {"n": changed})
        if refused:
            self.message_user(request, ngettext("%(n)d revoked token was left as it is (revocation is final).",
                                                "%(n)d revoked tokens were left as they are (revocation is final).",
                                                refused) % {"n": refused}, messages.WARNING)

    @admin.action(description=_("Block selected tokens (with the reason given)"), permissions=["change"])
    def block_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        reason = self._reason(request)
        if reason is not None:
            self._apply(request, queryset, services.block_token, reason, _("Tokens blocked: %(n)d."))

    @admin.action(description=_("Unblock selected tokens"), permissions=["change"])
    def unblock_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        reason = self._reason(request, required=False) or ""
        self._apply(request, queryset, services.unblock_token, reason, _("Tokens unblocked: %(n)d."))

    @admin.action(description=_("Revoke selected tokens for good (with the reason given)"), permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        reason = self._reason(request)
        if reason is not None:
            self._apply(request, queryset, services.revoke_token, reason, _("Tokens revoked: %(n)d."))

    def has_delete_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        # Usage records point at tokens; a token ends by being revoked, not deleted.
        return False
