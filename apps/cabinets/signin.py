"""Sign-in around django-allauth: the account adapter (no sign-up; the sign-in moment recorded for
re-authentication), django-axes' view of an allauth sign-in, the session's absolute lifetime, the
re-authentication page and the invitation links.

The steps a person goes through: ``account_login`` (email + password; axes locks out an email +
address after ``AXES_FAILURE_LIMIT`` failures) → ``cabinets:mfa`` (TOTP enrolment or check,
apps/cabinets/mfa.py) → ``/`` (their cabinet).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from apps.accounts import services as accounts
from apps.accounts.exceptions import InvitationError, InvitationInvalid
from apps.cabinets.access import mark_authenticated
from apps.cabinets.mfa import verify_code

#: Session key: when (Unix time) this session signed in; ``SessionLifetimeMiddleware`` ends it after
#: ``JETSTREAM_SESSION_MAX_HOURS`` however active it is.
SIGNED_IN_AT_SESSION_KEY = "cabinet_signed_in_at"


class AccountAdapter(DefaultAccountAdapter):
    """allauth's adapter for Jetstream: nobody signs up (accounts come by invitation or from the
    operator), and a password sign-in starts the re-authentication clock and the session's lifetime."""

    def is_open_for_signup(self, request: HttpRequest) -> bool:
        """Always False: the sign-up page says registration is closed."""
        return False

    def login(self, request: HttpRequest, user: Any) -> None:
        """Sign ``user`` in (allauth) and stamp the session."""
        super().login(request, user)
        mark_authenticated(request)
        request.session[SIGNED_IN_AT_SESSION_KEY] = int(time.time())


def axes_username(request: HttpRequest, credentials: dict[str, Any] | None) -> str:
    """The name django-axes counts failures under: the email of an allauth sign-in (its credentials
    carry ``email``; the form posts it as ``login``), lower-cased, so ``A@x`` and ``a@x`` share a count."""
    value = (credentials or {}).get("email") or (credentials or {}).get("username") or request.POST.get("login", "")
    return str(value).strip().lower()


class SessionLifetimeMiddleware:
    """Ends a session ``JETSTREAM_SESSION_MAX_HOURS`` after its sign-in, however active (the idle
    limit is ``SESSION_COOKIE_AGE``, extended by each request). The visitor is signed out and goes on
    as anonymous — a cabinet page then sends them to sign-in."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            signed_in = request.session.get(SIGNED_IN_AT_SESSION_KEY)
            if signed_in is not None and time.time() - float(signed_in) > settings.JETSTREAM_SESSION_MAX_HOURS * 3600:
                logout(request)
        return self.get_response(request)


class TotpRequiredMiddleware:
    """Keeps a session that passed only the password step away from the account pages (change the
    password, manage emails, …): they send it to ``cabinets:mfa`` first. Signing in and out, the
    password reset by email and the TOTP step itself stay open. (The cabinets and the admin check
    the TOTP step themselves.)"""

    OPEN_URL_NAMES = frozenset({
        "account_login", "account_logout", "account_reset_password", "account_reset_password_done",
        "account_reset_password_from_key", "account_reset_password_from_key_done", "account_signup", "account_inactive",
        "account_confirm_email",
    })

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view: Any, args: Any, kwargs: Any) -> HttpResponse | None:
        """Redirect an unverified session's request for an ``/accounts/`` page other than the open ones."""
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated or user.is_verified():
            return None
        match = request.resolver_match
        if match is None or not request.path.startswith("/accounts/") or match.url_name in self.OPEN_URL_NAMES:
            return None
        return redirect_to_login(request.get_full_path(), "cabinets:mfa")


def safe_next(request: HttpRequest, default: str = "/") -> str:
    """The ``next`` parameter (POST, else GET) if it points into this site, else ``default``."""
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return candidate
    return default


# --- re-authentication ---------------------------------------------------------------------

class ReauthForm(forms.Form):
    """The password, or a TOTP / recovery code — either proves the person is still there."""

    secret = forms.CharField(label=_("Password or a code from your authenticator app"), strip=True, max_length=256,
                             widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "autofocus": True}))

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_secret(self) -> str:
        secret = self.cleaned_data["secret"]
        if self.user.check_password(secret) or verify_code(self.user, secret) is not None:
            return secret
        raise ValidationError(_("That is neither your password nor a valid code."))


@login_required
def reauth(request: HttpRequest) -> HttpResponse:
    """``cabinets:reauth``: confirm the password or a TOTP/recovery code before a sensitive action,
    then back to ``next``."""
    form = ReauthForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        mark_authenticated(request)
        return redirect(safe_next(request))
    return render(request, "cabinets/reauth.html", {"form": form, "next": safe_next(request)})


# --- invitations ---------------------------------------------------------------------------

class NewMemberForm(forms.Form):
    """An invited person with no account: their name and a password (twice)."""

    full_name = forms.CharField(label=_("Full name"), max_length=200, required=False)
    password1 = forms.CharField(label=_("Password"), widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    password2 = forms.CharField(label=_("Password (again)"), widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("password1") and data.get("password1") != data.get("password2"):
            raise ValidationError(_("The two passwords differ."))
        return data


def _invitation_invalid(request: HttpRequest) -> HttpResponse:
    return render(request, "account/invitation_invalid.html", status=404)


def accept_invitation(request: HttpRequest, key: str) -> HttpResponse:
    """``/accounts/invitation/<key>/`` (``invitation_accept``), the link in an invitation email.

    - an invalid, used, revoked or expired key: a 404 page that says so;
    - no account for the invited email: a form to set a password, then the TOTP enrolment;
    - an account, visitor not signed in: sign-in, and back here;
    - signed in as the invited email: a button to accept (POST);
    - signed in as someone else: a page saying the invitation is for another address.
    """
    try:
        invitation = accounts.open_invitation(key)
    except InvitationInvalid:
        return _invitation_invalid(request)
    user = request.user
    has_account = get_user_model().objects.filter(email__iexact=invitation.email).exists()
    if not has_account:
        return _accept_as_new_user(request, key, invitation)
    if not user.is_authenticated:
        messages.info(request, gettext("Sign in as %(email)s to accept the invitation.") % {"email": invitation.email})
        return redirect(reverse(settings.LOGIN_URL) + "?next=" + request.path)
    if not user.is_verified():  # type: ignore[union-attr]
        return redirect_to_login(request.get_full_path(), "cabinets:mfa")
    context = {"invitation": invitation, "wrong_user": user.email.lower() != invitation.email}  # type: ignore[union-attr]
    if request.method == "POST" and not context["wrong_user"]:
        try:
            accounts.accept_invitation(key=key, user=user)
        except InvitationInvalid:
            return _invitation_invalid(request)
        except InvitationError as error:
            messages.error(request, str(error))
            return redirect("/")
        messages.success(request, gettext("Welcome to %(org)s.") % {"org": invitation.organisation})
        return redirect("/")
    return render(request, "account/invitation_accept.html", context)


def _accept_as_new_user(request: HttpRequest, key: str, invitation: Any) -> HttpResponse:
    form = NewMemberForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user, _membership = accounts.accept_invitation_as_new_user(
                key=key, password=form.cleaned_data["password1"], full_name=form.cleaned_data["full_name"])
        except ValidationError as error:
            form.add_error("password1", error)
        except InvitationInvalid:
            return _invitation_invalid(request)
        except InvitationError as error:
            form.add_error(None, str(error))
        else:
            AccountAdapter(request).login(request, user)
            return redirect("cabinets:mfa")
    return render(request, "account/invitation_new_user.html", {"invitation": invitation, "form": form})
