"""Cabinet test helpers: a test client signed in with a verified TOTP device (as after the two steps
of sign-in), for any persona."""

from __future__ import annotations

import pytest
from django.test import Client


def verified_client(user) -> Client:
    """A ``Client`` signed in as ``user`` whose session passed a TOTP check (django-otp stores the
    device's persistent id in the session under ``otp_device_id``)."""
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.filter(user=user, confirmed=True).first() or TOTPDevice.objects.create(user=user, name="test", confirmed=True)
    client = Client()
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


@pytest.fixture
def signed_in():
    """``signed_in(user)`` → a verified client for that user."""
    return verified_client
