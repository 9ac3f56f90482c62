"""The Django admin behind the same sign-in as the cabinets: password (allauth, with the lockout),
then TOTP (``cabinets:mfa``). Only staff whose session passed the TOTP step see it."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django_otp.admin import OTPAdminSite


class JetstreamAdminSite(OTPAdminSite):
    """django-otp's ``OTPAdminSite`` (``has_permission`` also needs ``request.user.is_verified()``)
    whose login page is the cabinets' sign-in: a visitor goes to ``account_login``, a signed-in user
    without the TOTP step to ``cabinets:mfa``, each with ``?next=`` back here. A verified user who is
    not staff gets the admin's own "not authorised" login page."""

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """Send the visitor through the real sign-in steps instead of the admin's own form."""
        target = request.GET.get("next") or request.get_full_path()
        if not request.user.is_authenticated:
            return redirect_to_login(target, settings.LOGIN_URL)
        if not request.user.is_verified():  # type: ignore[union-attr]
            return redirect_to_login(target, "cabinets:mfa")
        return super().login(request, extra_context)
