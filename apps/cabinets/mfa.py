"""TOTP at sign-in (django-otp): enrolment at first sign-in, verification afterwards."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


@login_required
def verify(request: HttpRequest) -> HttpResponse:
    """The TOTP step after a password sign-in (enrolment with a QR code when the user has no device yet)."""
    return render(request, "cabinets/mfa.html")
