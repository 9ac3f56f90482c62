"""In a real browser: sign-in with TOTP, the cabinet, the language switcher, sign-out, the lockout,
and the first sign-in's enrolment."""

from __future__ import annotations

import base64
import re

import pytest
from django_otp.oath import TOTP
from playwright.sync_api import expect

from tests.e2e.conftest import screenshot, sign_in

pytestmark = pytest.mark.e2e


def test_it_signs_a_manager_in_with_totp_switches_language_and_signs_out(page, e2e, personas):
    sign_in(page, e2e, personas.manager_a)
    expect(page).to_have_url(re.compile(r"/company/$"))
    expect(page.locator("main")).to_contain_text("Company A")
    expect(page.locator("html")).to_have_attribute("lang", "ru")
    expect(page.locator("body")).not_to_contain_text("Company B")
    screenshot(page, "signin-company-dashboard-ru")

    page.select_option("[data-testid=language-switcher] select", "en")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page).to_have_url(re.compile(r"/company/$"))
    page.click(".user-menu summary")
    expect(page.get_by_test_id("sign-out")).to_have_text("Sign out")
    screenshot(page, "signin-company-dashboard-en")

    page.get_by_test_id("sign-out").click()
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    expect(page.locator("input[name=login]")).to_be_visible()
    page.goto(f"{e2e.url}/company/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/company/"))


def test_it_locks_out_after_repeated_failures(page, e2e, personas, settings):
    page.goto(f"{e2e.url}/accounts/login/")
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        page.fill("input[name=login]", personas.manager_b.email)
        page.fill("input[name=password]", f"wrong-password-{attempt}")
        page.click("main form button[type=submit]")
        page.wait_for_load_state()
    expect(page.locator("h1")).to_have_text(re.compile("Вход заблокирован|Sign-in locked"))
    screenshot(page, "signin-lockout")

    page.goto(f"{e2e.url}/accounts/login/")
    page.fill("input[name=login]", personas.manager_b.email)
    page.fill("input[name=password]", "correct-horse-battery-staple")
    with page.expect_response(lambda r: r.url.endswith("/accounts/login/") and r.request.method == "POST") as answer:
        page.click("main form button[type=submit]")
    assert answer.value.status == 429  # the right password does not open a locked account
    expect(page).not_to_have_url(re.compile(r"/company/"))


def test_it_enrols_an_authenticator_at_first_sign_in(page, e2e, personas):
    page.goto(f"{e2e.url}/accounts/login/")
    page.fill("input[name=login]", personas.supplier_user.email)
    page.fill("input[name=password]", "correct-horse-battery-staple")
    page.click("main form button[type=submit]")
    page.wait_for_url("**/mfa/**")
    expect(page.locator(".qr svg")).to_be_visible()
    screenshot(page, "signin-enrol")
    page.click("main details summary")
    secret = page.get_by_test_id("totp-secret").inner_text().replace(" ", "")
    code = f"{TOTP(base64.b32decode(secret)).token():06d}"
    page.fill("input[name=code]", code)
    page.click("main form button[type=submit]")
    codes = page.get_by_test_id("recovery-codes").locator("li")
    expect(codes).to_have_count(10)
    page.get_by_role("link", name=re.compile("продолжить|continue")).click()
    expect(page).to_have_url(re.compile(r"/supplier/$"))
    expect(page.locator("main")).to_contain_text("North Keys")


def test_it_fits_a_phone_screen(phone_page, e2e, personas):
    page = phone_page
    page.goto(f"{e2e.url}/accounts/login/")
    screenshot(page, "signin-login-phone")
    sign_in(page, e2e, personas.manager_a)
    expect(page.locator("main")).to_contain_text("Company A")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    page.click("label.nav-toggle-label")
    expect(page.locator(".cabinet-nav")).to_be_visible()
    screenshot(page, "signin-company-dashboard-phone")
