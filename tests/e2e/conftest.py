"""The browser harness: the real ASGI app (``jetstream.asgi``: cabinets, admin and the ``/v1`` proxy)
under uvicorn on a free loopback port, Debian's Chromium driven by Playwright (headless, through
``executable_path``: no browser is downloaded), and a fake OpenAI upstream.

Database: the server is a uvicorn thread of the test process, so its requests use the pytest test
database (``test_<name>``) and Redis (``REDIS_URL``); the tests use ``transactional_db`` so what they
create is committed and visible to the server's connections (and truncated after each test).

Fixtures: ``gateway`` (the running app: ``.url``, ``.base_url`` for ``/v1``), ``page`` (a fresh
browser context at 1280×800, Russian first), ``phone_page`` (390×844), ``fake_openai`` (the upstream),
and the helpers ``sign_in(page, gateway, user)`` and ``screenshot(page, name)``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import PASSWORD
from tests.fakes.openai_upstream import fake_openai, fake_openai_server  # noqa: F401 - fixtures
from tests.proxy.conftest import ServerThread, flush_gateway_keys, free_port

ARTIFACTS = Path(settings.BASE_DIR) / "tests" / "artifacts"
#: Debian's Chromium: the real binary (``/usr/bin/chromium`` is a shell wrapper).
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str:
    """The Chromium executable: ``JETSTREAM_CHROMIUM`` if set, else Debian's. Fails the run with what
    to install when there is none (``make system-deps`` installs it)."""
    candidates = [os.environ.get("JETSTREAM_CHROMIUM", "")] + list(CHROMIUM_CANDIDATES) + [shutil.which("chromium") or ""]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("No Chromium for the browser tests: install Debian's package (apt-get install chromium, or make system-deps)")


@pytest.fixture(scope="module")
def gateway(django_db_setup, django_db_blocker):
    """The real ASGI app on a free loopback port, one per test module (see the module docstring).

    The server's own database work (its lifespan's configuration poll, requests between two tests'
    set-ups) is outside any test, so pytest-django's database block is lifted while it runs; it is
    scoped to the module and not the session so the block is back for every test after it."""
    from jetstream.asgi import application

    with django_db_blocker.unblock():
        flush_gateway_keys()
        server = ServerThread(application, free_port())
        with server:
            server.url = f"http://127.0.0.1:{server.port}"  # type: ignore[attr-defined]
            server.base_url = f"{server.url}/v1"  # type: ignore[attr-defined]
            yield server
        flush_gateway_keys()
        _close_server_connections()


def _close_server_connections() -> None:
    """End the stopped server's idle database connections (its worker threads' own), so the test
    database can be dropped at the end of the run."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid()")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for one test module. Playwright's sync API keeps an event loop running in
    this thread while it lives, so Django's async-safety check is off for that time (the test's and
    the fixtures' ORM calls are ordinary blocking ones) and restored after."""
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                                  args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def e2e(transactional_db, gateway, settings):
    """What every browser test needs: committed data and the server."""
    # The browser signs in several times a minute from 127.0.0.1; allauth's per-address limit on
    # sign-ins is not what these tests check (the lockout is django-axes').
    settings.ACCOUNT_RATE_LIMITS = {"login_failed": False, "login": False}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return gateway


def _context(browser, **options):
    context = browser.new_context(locale="ru-RU", **options)
    context.set_default_timeout(15_000)
    return context


@pytest.fixture
def page(browser, e2e):
    """A fresh browser page (own cookies) on a laptop screen."""
    context = _context(browser, viewport={"width": 1280, "height": 800})
    yield context.new_page()
    context.close()


@pytest.fixture
def phone_page(browser, e2e):
    """A fresh browser page on a phone-sized screen."""
    context = _context(browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    yield context.new_page()
    context.close()


def screenshot(page, name: str) -> Path:
    """Save a full-page PNG as ``tests/artifacts/<name>.png`` (git-ignored) and return its path."""
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def totp_code(device) -> str:
    """The current 6-digit code of a django-otp ``TOTPDevice`` (django-otp's own TOTP), waiting for the
    next 30-second step when this one was already used (a code is accepted once)."""
    from django_otp.oath import TOTP

    device.refresh_from_db()
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    while totp.t() <= device.last_t:
        time.sleep(0.5)
        totp.time = time.time()
    return f"{totp.token():0{device.digits}d}"


def sign_in(page, gateway, user, *, password: str = PASSWORD, next_path: str = "/") -> None:
    """Sign ``user`` in through the real forms: email + password, then the TOTP step with a code
    from their authenticator (a confirmed ``TOTPDevice`` is created for a user who has none, as if
    they had enrolled before). Ends on the page the sign-in leads to."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = (TOTPDevice.objects.filter(user=user, confirmed=True).first()
              or TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True))
    page.goto(f"{gateway.url}/accounts/login/?next={next_path}")
    page.fill("input[name=login]", user.email)
    page.fill("input[name=password]", password)
    page.click("main form button[type=submit]")
    page.wait_for_url("**/mfa/**")
    page.fill("input[name=code]", totp_code(device))
    page.click("main form button[type=submit]")
    page.wait_for_load_state()
