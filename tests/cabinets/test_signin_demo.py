"""make run's demo people: jetstream_demo prints the manager's, supplier's and operator's email,
password and TOTP secret once, and each signs in with them through the real forms."""

from __future__ import annotations

import base64
import re

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import translation
from django_otp.oath import TOTP

from tests.config.conftest import run_command

pytestmark = pytest.mark.django_db

PERSON = re.compile(r"  (?P<label>[^\n:]+): (?P<email>\S+@\S+)\n    password:    (?P<password>\S+)  \(.*\)\n"
                    r"    TOTP secret: (?P<secret>[A-Z2-7]+)  \(.*\)\n")


def _sign_in(email: str, password: str, secret: str) -> Client:
    client = Client()
    assert client.post(reverse("account_login"), {"login": email, "password": password}).status_code == 302
    code = f"{TOTP(base64.b32decode(secret)).token():06d}"
    assert client.post(reverse("cabinets:mfa"), {"code": code}).status_code == 302
    return client


def test_it_prints_the_demo_people_once_and_they_sign_in(settings):
    settings.ACCOUNT_RATE_LIMITS = {"login_failed": False, "login": False}
    with translation.override("en"):
        out, _err = run_command("jetstream_demo")
    people = {m["email"]: m for m in PERSON.finditer(out)}
    assert set(people) == {"manager@jetstream.local", "supplier@jetstream.local"}, out
    operator_password = re.search(r"password: (\S+)  \(", out).group(1)
    operator_secret = re.search(r"admin@jetstream.local\n    TOTP secret: ([A-Z2-7]+)", out).group(1)
    assert "█" in out  # a QR code for the authenticator app, in the terminal

    manager = people["manager@jetstream.local"]
    assert _sign_in(manager["email"], manager["password"], manager["secret"]).get("/")["Location"] == reverse("cabinets:company:dashboard")
    supplier = people["supplier@jetstream.local"]
    assert _sign_in(supplier["email"], supplier["password"], supplier["secret"]).get("/")["Location"] == reverse("cabinets:supplier:dashboard")
    operator = _sign_in("admin@jetstream.local", operator_password, operator_secret)
    assert operator.get("/admin/").status_code == 200

    with translation.override("en"):
        again, _err = run_command("jetstream_demo")
        reset, _err = run_command("jetstream_demo", "--reset-people")
    assert manager["password"] not in again and manager["secret"] not in again
    assert "--reset-people" in again
    fresh = {m["email"]: m for m in PERSON.finditer(reset)}
    assert fresh["manager@jetstream.local"]["password"] != manager["password"]
