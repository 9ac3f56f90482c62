"""Sign-in: password then TOTP, recovery codes, the lockout, re-authentication, the admin's TOTP,
session lifetime, invitations (services and the accept flow) and the cabinet_format filters."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone, translation
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.accounts import services
from apps.accounts.exceptions import AlreadyMember, InvitationEmailMismatch, InvitationInvalid, InvitationNotAllowed
from apps.accounts.models import InvitationStatus, Membership, SupplierMembership
from apps.cabinets.access import AUTHENTICATED_AT_SESSION_KEY
from apps.cabinets.signin import SIGNED_IN_AT_SESSION_KEY
from apps.cabinets.templatetags.cabinet_format import number, percent, rub
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_allauth_address_limit(settings):
    settings.ACCOUNT_RATE_LIMITS = {"login_failed": False, "login": False}


def _code(device, *, step_offset: int = 0) -> str:
    device.refresh_from_db()
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + step_offset * device.step
    return f"{totp.token():06d}"


def _password_step(user) -> Client:
    client = Client()
    response = client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})
    assert response.status_code == 302, response.content[:500]
    return client


def test_it_enrols_totp_at_first_sign_in_and_shows_recovery_codes_once(personas, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0  # the wrong code below would otherwise delay the right one by a second
    client = _password_step(personas.manager_a)
    assert client.get(reverse("cabinets:company:dashboard"))["Location"].startswith(reverse("cabinets:mfa"))
    page = client.get(reverse("cabinets:mfa"))
    assert b"<svg" in page.content and b"totp-secret" in page.content
    device = TOTPDevice.objects.get(user=personas.manager_a, confirmed=False)
    assert client.post(reverse("cabinets:mfa"), {"code": "000000"}).status_code == 200  # wrong: the form again
    shown = client.post(reverse("cabinets:mfa"), {"code": _code(device)})
    assert shown.status_code == 200 and shown.content.count(b"<li><code>") == 10
    assert client.get(reverse("cabinets:company:dashboard")).status_code == 200
    assert b"<code>" not in client.get(reverse("cabinets:mfa_devices")).content  # the codes are not shown again


def test_it_refuses_a_used_code_and_accepts_a_recovery_code_once(personas):
    device = TOTPDevice.objects.create(user=personas.manager_a, name="authenticator", confirmed=True)
    first = _password_step(personas.manager_a)
    code = _code(device)
    assert first.post(reverse("cabinets:mfa"), {"code": code})["Location"] == "/"
    second = _password_step(personas.manager_a)
    assert second.post(reverse("cabinets:mfa"), {"code": code}).status_code == 200  # reused: refused
    assert second.get(reverse("cabinets:company:dashboard")).status_code == 302

    from apps.cabinets.mfa import new_recovery_codes

    recovery = new_recovery_codes(personas.manager_a)[0]
    third = _password_step(personas.manager_a)
    assert third.post(reverse("cabinets:mfa"), {"code": recovery.upper()}).status_code == 302
    assert third.get(reverse("cabinets:company:dashboard")).status_code == 200
    fourth = _password_step(personas.manager_a)
    assert fourth.post(reverse("cabinets:mfa"), {"code": recovery}).status_code == 200


def test_it_locks_an_email_out_after_repeated_failures(personas, settings):
    client = Client()
    for attempt in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post(reverse("account_login"), {"login": personas.manager_a.email, "password": f"bad{attempt}"}).status_code == 200
    locked = client.post(reverse("account_login"), {"login": personas.manager_a.email.upper(), "password": "bad"})
    assert locked.status_code == 429
    again = client.post(reverse("account_login"), {"login": personas.manager_a.email, "password": PASSWORD})
    assert again.status_code == 429 and "_auth_user_id" not in client.session
    assert _password_step(personas.manager_b)  # another email is not locked


def test_it_puts_the_admin_behind_totp(personas, password_only):
    anonymous = Client().get("/admin/")
    assert anonymous.status_code == 302
    followed = Client().get(anonymous["Location"])
    assert followed["Location"].startswith(reverse("account_login"))
    half = password_only(personas.superadmin)
    login = half.get(half.get("/admin/")["Location"])
    assert login["Location"].startswith(reverse("cabinets:mfa"))
    full = Client()
    full.force_login(personas.superadmin)
    assert full.get("/admin/").status_code == 200


def test_it_asks_for_a_fresh_check_before_a_sensitive_action(personas, signed_in):
    client = signed_in(personas.manager_a)
    response = client.post(reverse("cabinets:mfa_recovery"), HTTP_REFERER="/cabinet-page/")
    assert response.status_code == 302 and response["Location"].startswith(reverse("cabinets:reauth"))
    assert client.post(reverse("cabinets:reauth"), {"secret": "not-it", "next": "/company/"}).status_code == 200
    assert client.post(reverse("cabinets:reauth"), {"secret": PASSWORD, "next": "/company/"})["Location"] == "/company/"
    assert client.post(reverse("cabinets:mfa_recovery")).content.count(b"<li><code>") == 10
    session = client.session
    session[AUTHENTICATED_AT_SESSION_KEY] = int(time.time()) - 11 * 60
    session.save()
    assert client.post(reverse("cabinets:mfa_recovery")).status_code == 302
    hx = client.post(reverse("cabinets:mfa_recovery"), HTTP_HX_REQUEST="true")
    assert hx.status_code == 204 and hx["HX-Redirect"].startswith(reverse("cabinets:reauth"))


def test_it_ends_a_session_after_its_maximum_age(personas, settings):
    client = _password_step(personas.manager_a)
    session = client.session
    session[SIGNED_IN_AT_SESSION_KEY] = int(time.time()) - settings.JETSTREAM_SESSION_MAX_HOURS * 3600 - 1
    session.save()
    assert client.get(reverse("cabinets:mfa"))["Location"].startswith(reverse("account_login"))
    assert settings.SESSION_COOKIE_AGE == 30 * 60 and settings.SESSION_SAVE_EVERY_REQUEST


def test_it_has_no_sign_up():
    assert b"id_password2" not in Client().get(reverse("account_signup")).content


# --- invitations ---------------------------------------------------------------------------

def test_it_invites_a_new_person_who_sets_a_password_and_enrols(personas, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        issued = services.invite(email="New.Person@Example.com", role="viewer", invited_by=personas.manager_a,
                                 company=personas.company_a)
    assert issued.invitation.email == "new.person@example.com" and issued.invitation.key_hash != issued.key
    assert len(mail.outbox) == 1 and issued.accept_url in mail.outbox[0].body and "Company A" in mail.outbox[0].subject
    client = Client()
    form = client.get(reverse("invitation_accept", args=[issued.key]))
    assert form.status_code == 200 and b"password1" in form.content
    weak = client.post(reverse("invitation_accept", args=[issued.key]), {"password1": "123", "password2": "123"})
    assert weak.status_code == 200 and not Membership.objects.filter(user__email="new.person@example.com").exists()
    done = client.post(reverse("invitation_accept", args=[issued.key]),
                       {"full_name": "New Person", "password1": "a-long-new-passphrase", "password2": "a-long-new-passphrase"})
    assert done["Location"] == reverse("cabinets:mfa")
    assert Membership.objects.get(user__email="new.person@example.com").role == "viewer"
    assert Client().get(reverse("invitation_accept", args=[issued.key])).status_code == 404  # used up


def test_it_lets_an_existing_user_accept_after_signing_in(personas, signed_in):
    issued = services.invite(email=personas.supplier_user.email, role="manager", invited_by=personas.manager_a,
                             company=personas.company_a)
    assert Client().get(reverse("invitation_accept", args=[issued.key]))["Location"].startswith(reverse("account_login"))
    other = signed_in(personas.outsider).post(reverse("invitation_accept", args=[issued.key]))
    assert other.status_code == 200 and not Membership.objects.filter(user=personas.outsider).exists()
    with pytest.raises(InvitationEmailMismatch):
        services.accept_invitation(key=issued.key, user=personas.outsider)
    accepted = signed_in(personas.supplier_user).post(reverse("invitation_accept", args=[issued.key]))
    assert accepted["Location"] == "/"
    assert Membership.objects.get(user=personas.supplier_user, company=personas.company_a).role == "manager"


def test_it_checks_who_may_invite_and_with_what_role(personas):
    with pytest.raises(InvitationNotAllowed):
        services.invite(email="x@example.com", role="owner", invited_by=personas.manager_a, company=personas.company_a)
    with pytest.raises(InvitationNotAllowed):
        services.invite(email="x@example.com", role="viewer", invited_by=personas.manager_b, company=personas.company_a)
    with pytest.raises(InvitationNotAllowed):
        services.invite(email="x@example.com", role="manager", invited_by=personas.supplier_user, supplier=personas.supplier)
    with pytest.raises(AlreadyMember):
        services.invite(email=personas.manager_a.email, role="viewer", invited_by=personas.manager_a, company=personas.company_a)
    issued = services.invite(email="x@example.com", role="member", invited_by=personas.supplier_user, supplier=personas.supplier)
    user, membership = services.accept_invitation_as_new_user(key=issued.key, password="a-long-new-passphrase")
    assert isinstance(membership, SupplierMembership) and membership.supplier == personas.supplier


def test_it_revokes_reissues_and_expires_invitations(personas):
    first = services.invite(email="y@example.com", role="viewer", invited_by=personas.manager_a, company=personas.company_a)
    second = services.invite(email="y@example.com", role="viewer", invited_by=personas.manager_a, company=personas.company_a)
    first.invitation.refresh_from_db()
    assert first.invitation.status == InvitationStatus.REVOKED
    with pytest.raises(InvitationInvalid):
        services.open_invitation(first.key)
    assert list(services.pending_invitations(company=personas.company_a)) == [second.invitation]
    services.revoke_invitation(invitation=second.invitation)
    with pytest.raises(InvitationInvalid):
        services.accept_invitation_as_new_user(key=second.key, password="a-long-new-passphrase")
    third = services.invite(email="z@example.com", role="viewer", invited_by=personas.manager_a, company=personas.company_a)
    assert services.expire_invitations(now=timezone.now() + dt.timedelta(hours=73)) == 1
    third.invitation.refresh_from_db()
    assert third.invitation.status == InvitationStatus.EXPIRED


# --- cabinet_format ------------------------------------------------------------------------

def test_it_formats_money_and_numbers_for_the_locale():
    with translation.override("ru"):
        assert rub(1_234_560_000) == "1\u00a0234,56\u00a0₽"
        assert rub(-1_234_567) == "\u22121,23\u00a0₽"
        assert rub(1_500_000, 0) == "2\u00a0₽"
        assert number(12_345_678) == "12\u00a0345\u00a0678"
        assert percent(0.125) == "12,5\u00a0%"
        assert rub(None) == "—"
    with translation.override("en"):
        assert rub(1_234_560_000) == "₽1,234.56"
        assert number("1234.567", 2) == "1,234.57"
        assert percent(0.5, 0) == "50%"


def test_it_keeps_the_account_pages_behind_the_totp_step(personas, password_only, signed_in):
    half = password_only(personas.manager_a)
    response = half.get(reverse("account_change_password"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("cabinets:mfa"))
    assert half.get(reverse("cabinets:mfa_devices"))["Location"].startswith(reverse("cabinets:mfa"))
    assert half.get(reverse("account_reset_password")).status_code == 200
    assert signed_in(personas.manager_a).get(reverse("account_change_password")).status_code == 200


def test_it_says_how_long_a_lockout_lasts_in_minutes():
    from apps.cabinets.templatetags.cabinet_format import minutes

    with translation.override("ru"):
        assert minutes(dt.timedelta(minutes=15)) == "15 минут"
        assert minutes(dt.timedelta(seconds=61)) == "2 минуты"
    with translation.override("en"):
        assert minutes(dt.timedelta(minutes=1)) == "1 minute"
