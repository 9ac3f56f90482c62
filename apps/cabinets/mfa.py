"""TOTP at sign-in (django-otp), mandatory for every cabinet user and for the Django admin.

- ``cabinets:mfa`` (``verify``): after the password, a user with no confirmed authenticator enrols —
  a QR code (segno, inline SVG) and the secret for manual entry; the first correct code confirms the
  device, creates ten recovery codes (django-otp's static device) and shows them once. A user with
  one types a 6-digit code, or a recovery code, which is then used up.
- ``cabinets:mfa_devices`` (``devices``): the user's authenticator and how many recovery codes are
  left; regenerating the codes or replacing the authenticator needs a recent re-authentication.

A TOTP code is accepted once: django-otp keeps the last accepted time step (``last_t``) and refuses
it and older ones; failures throttle the next try exponentially (``ThrottlingMixin``).
"""

from __future__ import annotations

import base64
import re
from typing import Any

import segno
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST
from django_otp import devices_for_user
from django_otp import login as otp_login
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.cabinets.access import mark_authenticated, recent_auth_required

#: Recovery codes made at enrolment and on regeneration.
RECOVERY_CODE_COUNT = 10
AUTHENTICATOR_NAME = "authenticator"
RECOVERY_NAME = "recovery"
_TOTP_CODE = re.compile(r"\d{6}")


def normalise_code(code: str) -> str:
    """A typed code without spaces and dashes, lower-cased (``"123 456"`` → ``"123456"``,
    ``"ABCD-EFGH"`` → ``"abcdefgh"``)."""
    return re.sub(r"[\s-]", "", code or "").lower()


def verify_code(user: Any, code: str) -> Device | None:
    """The confirmed device of ``user`` that accepts ``code`` — a 6-digit TOTP code (each accepted
    once) or a recovery code (deleted when used) — or None. Each device throttles its own failures."""
    code = normalise_code(code)
    if not code or len(code) > 16:
        return None
    kind = TOTPDevice if _TOTP_CODE.fullmatch(code) else StaticDevice
    with transaction.atomic():
        # for_verify locks the devices: two requests with one code must not both be accepted.
        for device in devices_for_user(user, confirmed=True, for_verify=True):
            if isinstance(device, kind) and device.verify_token(code):
                return device
    return None


def pending_authenticator(user: Any) -> TOTPDevice:
    """The user's unconfirmed authenticator being enrolled (created on first call; the same secret
    until it is confirmed, so reloading the page keeps the QR code)."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("pk").first()
    return device or TOTPDevice.objects.create(user=user, name=AUTHENTICATOR_NAME, confirmed=False)


def qr_svg(text: str) -> str:
    """``text`` as a QR code, an inline ``<svg>`` element (no XML declaration)."""
    return segno.make(text, error="m").svg_inline(scale=5, border=2, dark="#111827", light="#ffffff")


def new_recovery_codes(user: Any) -> list[str]:
    """Replace the user's recovery codes with ``RECOVERY_CODE_COUNT`` new ones and return them (the
    only time they are shown). Old codes stop working."""
    with transaction.atomic():
        device, _created = StaticDevice.objects.get_or_create(user=user, name=RECOVERY_NAME, defaults={"confirmed": True})
        device.token_set.all().delete()
        codes = [StaticToken.random_token() for _ in range(RECOVERY_CODE_COUNT)]
        StaticToken.objects.bulk_create([StaticToken(device=device, token=code) for code in codes])
        return codes


def formatted_codes(codes: list[str]) -> list[str]:
    """Recovery codes as shown: ``abcd-efgh``."""
    return [f"{c[:4]}-{c[4:]}" if len(c) == 8 else c for c in codes]


class CodeForm(forms.Form):
    """One code: 6 digits from the authenticator app, or a recovery code."""

    code = forms.CharField(label=_("Code"), max_length=32, strip=True,
                           widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric",
                                                         "autofocus": True, "spellcheck": "false"}))


def _next(request: HttpRequest) -> str:
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return candidate
    return "/"


@never_cache
@login_required
def verify(request: HttpRequest) -> HttpResponse:
    """The TOTP step after a password sign-in (enrolment with a QR code when the user has no device yet)."""
    user = request.user
    if user.is_verified():  # type: ignore[union-attr]
        return redirect(_next(request))
    if not TOTPDevice.objects.filter(user=user, confirmed=True).exists():
        return _enrol(request)
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        device = verify_code(user, form.cleaned_data["code"])
        if device is not None:
            otp_login(request, device)
            mark_authenticated(request)
            if isinstance(device, StaticDevice):
                left = device.token_set.count()
                messages.warning(request, gettext("You signed in with a recovery code; %(n)s left.") % {"n": left})
            return redirect(_next(request))
        form.add_error("code", _("This code is not valid. Codes change every 30 seconds and each works once."))
    return render(request, "cabinets/mfa.html", {"form": form, "next": _next(request), "mode": "verify"})


def _enrol(request: HttpRequest) -> HttpResponse:
    user = request.user
    device = pending_authenticator(user)
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        code = normalise_code(form.cleaned_data["code"])
        if _TOTP_CODE.fullmatch(code) and device.verify_token(code):
            device.confirmed = True
            device.save(update_fields=["confirmed"])
            otp_login(request, device)
            mark_authenticated(request)
            codes = new_recovery_codes(user)
            return render(request, "cabinets/mfa_recovery_codes.html", {"codes": formatted_codes(codes), "next": _next(request),
                                                                          "first_time": True})
        form.add_error("code", _("This code is not valid. Check the time on your phone and type the current code."))
    secret = base64.b32encode(device.bin_key).decode()
    return render(request, "cabinets/mfa.html", {
        "form": form, "next": _next(request), "mode": "enrol", "qr_svg": qr_svg(device.config_url),
        "secret_groups": [secret[i:i + 4] for i in range(0, len(secret), 4)],
    })


def _verified_only(request: HttpRequest) -> HttpResponse | None:
    if not request.user.is_verified():  # type: ignore[union-attr]
        return redirect_to_login(request.get_full_path(), "cabinets:mfa")
    return None


@never_cache
@login_required
def devices(request: HttpRequest) -> HttpResponse:
    """``cabinets:mfa_devices``: the user's authenticator (added, last used) and how many recovery
    codes are left, with the actions to regenerate the codes and to replace the authenticator."""
    if (response := _verified_only(request)) is not None:
        return response
    authenticators = TOTPDevice.objects.filter(user=request.user, confirmed=True).order_by("pk")
    recovery = StaticDevice.objects.filter(user=request.user, name=RECOVERY_NAME).first()
    return render(request, "cabinets/mfa_devices.html", {
        "authenticators": authenticators, "recovery_left": recovery.token_set.count() if recovery else 0})


@never_cache
@require_POST
@recent_auth_required
def regenerate_recovery_codes(request: HttpRequest) -> HttpResponse:
    """``cabinets:mfa_recovery`` (POST): new recovery codes, shown once; the old ones stop working."""
    codes = new_recovery_codes(request.user)
    return render(request, "cabinets/mfa_recovery_codes.html", {"codes": formatted_codes(codes), "next": "/", "first_time": False})


@require_POST
@recent_auth_required
def replace_authenticator(request: HttpRequest) -> HttpResponse:
    """``cabinets:mfa_replace`` (POST): forget the authenticator app and enrol a new one now (the
    session loses its TOTP check until the new device is confirmed). Recovery codes stay."""
    with transaction.atomic():
        TOTPDevice.objects.filter(user=request.user).delete()
    return redirect("cabinets:mfa")

