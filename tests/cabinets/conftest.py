"""Cabinet test helpers: a test client signed in with a verified TOTP device (as after the two steps
of sign-in), or after the password step only, for any persona."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.conftest import attach_verified_device


def verified_client(user) -> Client:
    """A ``Client`` signed in as ``user`` whose session passed a TOTP check (django-otp stores the
    device's persistent id in the session under ``otp_device_id``)."""
    client = Client()
    client.force_login(user)
    attach_verified_device(client, user)
    return client


def password_only_client(user) -> Client:
    """A ``Client`` signed in as ``user`` after the password step alone (no TOTP check yet)."""
    client = Client()
    client.otp_verified = False
    client.force_login(user)
    return client


@pytest.fixture
def signed_in():
    """``signed_in(user)`` → a verified client for that user."""
    return verified_client


@pytest.fixture
def password_only():
    """``password_only(user)`` → a client signed in with the password but not yet the TOTP step."""
    return password_only_client
