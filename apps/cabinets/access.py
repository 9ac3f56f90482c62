"""Who may see what in the cabinets.

Each cabinet view is wrapped in one of ``company_view``, ``supplier_view`` or ``operator_view``.
The wrapper:

- sends a visitor who is not signed in to the sign-in page (``LOGIN_URL`` with ``?next=``);
- sends a signed-in user whose session has not passed a TOTP check to ``cabinets:mfa`` (enrolment
  at first sign-in, verification afterwards; django-otp's ``request.user.is_verified()``);
- answers **404** when the user has no membership of that kind (an outsider learns nothing about
  what exists), and **403** when the membership's role may not use the view (a viewer on a manager's
  action);
- sets ``request.company`` + ``request.membership`` (company cabinet) or ``request.supplier`` +
  ``request.supplier_membership`` (supplier cabinet) before calling the view.

Objects addressed by URL are fetched through ``company_object`` / ``supplier_object``, which filter by
the tenant first and answer 404 for anything else. A user with memberships of several companies (or
suppliers) works in one at a time: the one chosen with ``select_company`` (kept in the session), else
the oldest membership.

Sensitive actions (creating a token, changing payout details, approving a withdrawal) also carry
``recent_auth_required``: the user must have proved who they are — a password or a TOTP/recovery
code — within ``JETSTREAM_REAUTH_MINUTES``, else they are sent to ``cabinets:reauth`` and back.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import urlencode

from apps.accounts.models import CompanyRole, Membership, SupplierMembership, SupplierRole

M = TypeVar("M", bound=Model)
View = Callable[..., HttpResponse]

COMPANY_SESSION_KEY = "cabinet_company_id"
SUPPLIER_SESSION_KEY = "cabinet_supplier_id"
#: Session key: when (Unix time, seconds) the user last typed their password or a TOTP/recovery code.
AUTHENTICATED_AT_SESSION_KEY = "cabinet_authenticated_at"

#: Roles that may change things in a company (tokens, departments, members, top-ups).
COMPANY_MANAGERS = (CompanyRole.OWNER, CompanyRole.MANAGER)
#: Roles that may change things in a supplier (keys, payout details, withdrawals).
SUPPLIER_MANAGERS = (SupplierRole.OWNER,)


def _gate(request: HttpRequest) -> HttpResponse | None:
    """A redirect for a visitor who is not signed in or whose session has no TOTP check; None when
    the request may go on."""
    user = request.user
    if not user.is_authenticated:
        return redirect_to_login(request.get_full_path(), settings.LOGIN_URL)
    if not getattr(user, "is_verified", lambda: False)():
        return redirect_to_login(request.get_full_path(), "cabinets:mfa")
    return None


def company_membership(request: HttpRequest) -> Membership:
    """The signed-in user's membership of the company they work in now (the session's choice if the
    user still belongs to it, else the oldest). Raises ``Http404`` when the user belongs to none or
    the company is deactivated."""
    memberships = Membership.objects.select_related("company").filter(user=request.user, company__is_active=True)
    chosen = request.session.get(COMPANY_SESSION_KEY)
    membership = (memberships.filter(company_id=chosen).first() if chosen else None) or memberships.order_by("created_at", "pk").first()
    if membership is None:
        raise Http404
    return membership


def supplier_membership(request: HttpRequest) -> SupplierMembership:
    """The signed-in user's membership of the supplier they work for now; ``Http404`` if none."""
    memberships = SupplierMembership.objects.select_related("supplier").filter(user=request.user, supplier__is_active=True)
    chosen = request.session.get(SUPPLIER_SESSION_KEY)
    membership = (memberships.filter(supplier_id=chosen).first() if chosen else None) or memberships.order_by("created_at", "pk").first()
    if membership is None:
        raise Http404
    return membership


def select_company(request: HttpRequest, company_id: int) -> Membership:
    """Make ``company_id`` the company the user works in; ``Http404`` if they are not a member."""
    membership = get_object_or_404(Membership.objects.select_related("company"), user=request.user, company_id=company_id,
                                   company__is_active=True)
    request.session[COMPANY_SESSION_KEY] = membership.company_id
    return membership


def _member_view(find: Callable[[HttpRequest], Any], roles: tuple[str, ...], member_attr: str,
                 tenant_attr: str) -> Callable[[View], View]:
    """The access rule shared by the company and supplier cabinets: the gate, then ``find`` (the
    membership, ``Http404`` without one), then ``roles`` (403), then the membership and its tenant set
    on the request as ``member_attr`` and ``tenant_attr``."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if (response := _gate(request)) is not None:
                return response
            membership = find(request)
            if roles and membership.role not in roles:
                raise PermissionDenied
            setattr(request, member_attr, membership)
            setattr(request, tenant_attr, getattr(membership, tenant_attr))
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def company_view(*roles: str) -> Callable[[View], View]:
    """Decorate a company-cabinet view. ``roles`` (``CompanyRole`` values) limit who may use it (403
    for the others); none = every member. Sets ``request.company`` and ``request.membership``."""
    return _member_view(company_membership, roles, "membership", "company")


def supplier_view(*roles: str) -> Callable[[View], View]:
    """Decorate a supplier-cabinet view. ``roles`` (``SupplierRole`` values) limit who may use it
    (403 for the others). Sets ``request.supplier`` and ``request.supplier_membership``."""
    return _member_view(supplier_membership, roles, "supplier_membership", "supplier")


def operator_view(view: View) -> View:
    """Decorate an operator-cabinet view: superusers only (404 for everyone else, so the cabinet's
    existence is not advertised)."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if (response := _gate(request)) is not None:
            return response
        if not request.user.is_superuser:
            raise Http404
        return view(request, *args, **kwargs)

    return wrapper


def company_object(request: HttpRequest, queryset: QuerySet[M], *, field: str = "company", **lookup: Any) -> M:
    """The object of ``queryset`` matching ``lookup`` that belongs to ``request.company`` (through
    ``field``, e.g. ``"token__company"``); ``Http404`` for anything else."""
    return get_object_or_404(queryset.filter(**{field: request.company}), **lookup)  # type: ignore[attr-defined]


def supplier_object(request: HttpRequest, queryset: QuerySet[M], *, field: str = "supplier", **lookup: Any) -> M:
    """The object of ``queryset`` matching ``lookup`` that belongs to ``request.supplier``; ``Http404``
    for anything else."""
    return get_object_or_404(queryset.filter(**{field: request.supplier}), **lookup)  # type: ignore[attr-defined]


def home(request: HttpRequest) -> HttpResponse:
    """``/``: sign-in for a visitor; otherwise the user's cabinet — operator, then company, then
    supplier — or a page saying they have none yet."""
    if not request.user.is_authenticated:
        return redirect_to_login("/", settings.LOGIN_URL)
    if request.user.is_superuser:
        return redirect("cabinets:operator:dashboard")
    if Membership.objects.filter(user=request.user, company__is_active=True).exists():
        return redirect("cabinets:company:dashboard")
    if SupplierMembership.objects.filter(user=request.user, supplier__is_active=True).exists():
        return redirect("cabinets:supplier:dashboard")
    return render(request, "cabinets/no_cabinet.html", status=200)


def mark_authenticated(request: HttpRequest) -> None:
    """Record in the session that the user has just proved who they are (a password at sign-in or
    re-authentication, a TOTP or recovery code): ``recent_auth_required`` counts from this moment."""
    request.session[AUTHENTICATED_AT_SESSION_KEY] = int(time.time())


def reauth_age_seconds(request: HttpRequest) -> float | None:
    """Seconds since the user last proved who they are in this session; None if never."""
    stamp = request.session.get(AUTHENTICATED_AT_SESSION_KEY)
    return None if stamp is None else max(0.0, time.time() - float(stamp))


def has_recent_auth(request: HttpRequest, minutes: int | None = None) -> bool:
    """Whether the user proved who they are within ``minutes`` (default ``JETSTREAM_REAUTH_MINUTES``)."""
    limit = settings.JETSTREAM_REAUTH_MINUTES if minutes is None else minutes
    age = reauth_age_seconds(request)
    return age is not None and age <= limit * 60


def recent_auth_required(view: View | None = None, *, minutes: int | None = None) -> Any:
    """Decorate a view of a sensitive action (creating a token, changing payout details, approving a
    withdrawal): unless the user typed their password or a TOTP/recovery code within ``minutes``
    (default ``settings.JETSTREAM_REAUTH_MINUTES``), answer with a redirect to ``cabinets:reauth``
    with ``?next=`` this page (an HTMX request gets ``HX-Redirect`` to it instead, so the whole page
    goes there). After the check the user comes back to the page, as a GET: a POST is not replayed,
    they submit the form again.

    Put it *inside* the access decorator, so an outsider gets the 404 before any prompt::

        @company_view(*COMPANY_MANAGERS)
        @recent_auth_required
        def create_token(request): ...

    Usable bare or with an argument: ``@recent_auth_required(minutes=5)``.
    """

    def decorate(inner: View) -> View:
        @functools.wraps(inner)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if (response := _gate(request)) is not None:
                return response
            if has_recent_auth(request, minutes):
                return inner(request, *args, **kwargs)
            back = request.get_full_path() if request.method in ("GET", "HEAD") else (request.headers.get("HX-Current-URL")
                                                                                      or request.META.get("HTTP_REFERER") or "/")
            target = reverse("cabinets:reauth") + "?" + urlencode({"next": back})
            if getattr(request, "htmx", False):
                return HttpResponse(status=204, headers={"HX-Redirect": target})
            return redirect(target)

        wrapper.recent_auth_required = True  # type: ignore[attr-defined]
        return wrapper

    return decorate(view) if view is not None else decorate
