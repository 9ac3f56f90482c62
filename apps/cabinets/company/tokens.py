"""The company cabinet's API tokens: list, create (the secret shown once, with snippets), settings
and limits, block / unblock / revoke, a new secret, and per-token usage with what is left of each
limit.

Every change goes through ``apps.proxy.services``; the proxy's snapshot sees it on commit (the
signals in ``apps/proxy/signals.py`` bump the config version), so a block here is refused by
``/v1`` within the proxy's poll interval. A secret exists in clear only in the answer to the POST
that made it — never in a redirect, a message or the session — and that answer is not cached.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext as _
from django.utils.translation import pgettext
from django.views.decorators.http import require_POST

from apps.cabinets.access import COMPANY_MANAGERS, company_object, company_view, recent_auth_required
from apps.cabinets.company.forms import TokenFilterForm, TokenForm, TokenReasonForm, apply_errors, token_initial
from apps.cabinets.company.helpers import example_model, gateway_base_url, in_company_time_zone
from apps.cabinets.rendering import render_page
from apps.proxy import services
from apps.proxy.exceptions import TokenStateError
from apps.proxy.models import ApiToken, TokenStatus

PAGE_SIZE = 50


def _token(request: HttpRequest, token_id: int) -> ApiToken:
    """The company's token ``token_id`` (404 for any other)."""
    return company_object(request, services.with_last_request(ApiToken.objects.select_related("company", "department", "owner")),
                          pk=token_id)


def _can_manage(request: HttpRequest) -> bool:
    return request.membership.role in COMPANY_MANAGERS  # type: ignore[attr-defined]


@company_view()
@in_company_time_zone
def token_list(request: HttpRequest) -> HttpResponse:
    """Every token of the company with its status, department, environment, limits and what is left
    of them, and when it was last used; filters and pages swap the table alone (HTMX)."""
    filters = TokenFilterForm(request.GET or None, company=request.company)  # type: ignore[attr-defined]
    tokens = services.company_tokens(company=request.company, **filters.filters())  # type: ignore[attr-defined]
    page = Paginator(tokens, PAGE_SIZE).get_page(request.GET.get("page"))
    spend = services.token_spend(list(page.object_list))
    query = request.GET.copy()
    query.pop("page", None)
    context = {"filters": filters, "page": page, "rows": [(token, spend[token.pk]) for token in page],
               "query": query.urlencode(), "can_manage": _can_manage(request), "now": timezone.now()}
    return render_page(request, "cabinets/company/tokens.html", context, partial="cabinets/company/tokens_table.html")


def _secret_page(request: HttpRequest, token: ApiToken, secret: str, *, created: bool) -> HttpResponse:
    """The one answer that shows ``secret``, with ready snippets; never cached, never stored."""
    base_url = gateway_base_url(request)
    context = {"token": token, "secret": secret, "created": created, "base_url": base_url,
               "origin": base_url.removesuffix("/v1"), "model": example_model(token)}
    response = render(request, "cabinets/company/token_secret.html", context)
    add_never_cache_headers(response)
    return response


@company_view(*COMPANY_MANAGERS)
@recent_auth_required
@in_company_time_zone
def token_create(request: HttpRequest) -> HttpResponse:
    """Issue a token (owner: the person creating it); the answer shows its secret once."""
    company = request.company  # type: ignore[attr-defined]
    form = TokenForm(request.POST or None, company=company)
    if request.method == "POST" and form.is_valid():
        try:
            token, secret = services.issue_token(company=company, name=form.cleaned_data["name"], owner=request.user,
                                                 **form.token_settings())
        except ValidationError as exc:
            apply_errors(form, exc)
        else:
            assert secret is not None
            return _secret_page(request, token, secret, created=True)
    return render_page(request, "cabinets/company/token_form.html", {"form": form, "token": None})


@company_view()
@in_company_time_zone
def token_detail(request: HttpRequest, token_id: int) -> HttpResponse:
    """One token: its settings, each limit with what is spent and left (live from the gateway's
    counters), and its usage over the last 30 days by day and by model."""
    token = _token(request, token_id)
    spend = services.token_spend([token])[token.pk]
    rows = [(pgettext("spend limit", "Total"), spend.total), (_("This week"), spend.weekly), (_("This month"), spend.monthly)]
    if spend.department is not None:
        rows.append((_("Department budget this month (%(name)s)") % {"name": token.department.name}, spend.department))  # type: ignore[union-attr]
    context = {"token": token, "spend": spend, "spend_rows": rows, "usage": services.token_usage(token=token),
               "can_manage": _can_manage(request), "block_form": TokenReasonForm(required=True, prefix=None),
               "revoke_form": TokenReasonForm(), "now": timezone.now()}
    return render_page(request, "cabinets/company/token_detail.html", context)


@company_view(*COMPANY_MANAGERS)
@in_company_time_zone
def token_edit(request: HttpRequest, token_id: int) -> HttpResponse:
    """Change a token's name, department, environment, limits and rules (not its secret or status)."""
    token = _token(request, token_id)
    if token.status == TokenStatus.REVOKED:
        messages.error(request, _("A revoked token cannot be changed."))
        return redirect("cabinets:company:token_detail", token_id=token.pk)
    form = TokenForm(request.POST or None, company=token.company, initial=token_initial(token), token=token)
    if request.method == "POST" and form.is_valid():
        try:
            outcome = services.update_token(token=token, name=form.cleaned_data["name"], **form.token_settings())
        except ValidationError as exc:
            apply_errors(form, exc)
        else:
            if outcome.changed:
                messages.success(request, _("The token's settings are saved; the gateway applies them at once."))
            return redirect("cabinets:company:token_detail", token_id=token.pk)
    return render_page(request, "cabinets/company/token_form.html", {"form": form, "token": token})


def _after_action(request: HttpRequest, token: ApiToken, *, error: str = "") -> HttpResponse:
    """HTMX (an inline action in the list): the token's row again; otherwise back to its page."""
    if getattr(request, "htmx", False):
        token = _token(request, token.pk)
        context = {"token": token, "spend": services.token_spend([token])[token.pk], "can_manage": True, "row_error": error,
                   "now": timezone.now()}
        return render(request, "cabinets/company/token_row.html", context)
    if error:
        messages.error(request, error)
    return redirect("cabinets:company:token_detail", token_id=token.pk)


def _reason(request: HttpRequest, *, required: bool) -> tuple[str, str]:
    """(reason, error): from the form, or from htmx's ``hx-prompt`` answer (``HX-Prompt``)."""
    data = request.POST.copy()
    if not data.get("reason") and request.headers.get("HX-Prompt"):
        data["reason"] = request.headers["HX-Prompt"]
    form = TokenReasonForm(data, required=required)
    if not form.is_valid():
        return "", " ".join(form.errors.get("reason", []))
    return form.cleaned_data["reason"], ""


def _change_status(request: HttpRequest, token_id: int, service, *, reason_required: bool, done: str) -> HttpResponse:
    token = _token(request, token_id)
    reason, error = _reason(request, required=reason_required)
    if error:
        return _after_action(request, token, error=error)
    try:
        outcome = service(token=token, reason=reason)
    except TokenStateError as exc:
        return _after_action(request, token, error=str(exc))
    if outcome.changed and not getattr(request, "htmx", False):  # the swapped row says it; a message would wait for the next page
        messages.success(request, done)
    return _after_action(request, token)


@company_view(*COMPANY_MANAGERS)
@require_POST
def token_block(request: HttpRequest, token_id: int) -> HttpResponse:
    """Block a token with a reason (its requests get 403 with that reason until it is unblocked)."""
    return _change_status(request, token_id, services.block_token, reason_required=True, done=_("The token is blocked."))


@company_view(*COMPANY_MANAGERS)
@require_POST
def token_unblock(request: HttpRequest, token_id: int) -> HttpResponse:
    """Let a blocked token work again."""
    return _change_status(request, token_id, services.unblock_token, reason_required=False, done=_("The token is unblocked."))


@company_view(*COMPANY_MANAGERS)
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    """Revoke a token for good (its requests get 401; it cannot be unblocked)."""
    return _change_status(request, token_id, _revoke, reason_required=False, done=_("The token is revoked for good."))


def _revoke(*, token: ApiToken, reason: str):
    return services.revoke_token(token=token, reason=reason or _("Revoked in the company cabinet."))


@company_view(*COMPANY_MANAGERS)
@recent_auth_required
@require_POST
@in_company_time_zone
def token_rotate(request: HttpRequest, token_id: int) -> HttpResponse:
    """Give a token a new secret (the old one stops working at once); the answer shows it once."""
    token = _token(request, token_id)
    try:
        token, secret = services.rotate_token_secret(token=token)
    except TokenStateError as exc:
        messages.error(request, str(exc))
        return redirect("cabinets:company:token_detail", token_id=token.pk)
    assert secret is not None
    return _secret_page(request, token, secret, created=False)
