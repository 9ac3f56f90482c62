"""The documented start works: `bin/serve` (what the Procfile's `web` runs), started as a person would.

Production settings (DEBUG off) serve the admin's static files from STATIC_ROOT through
WhiteNoise's manifest; bin/serve collects them and checks migrations before it serves. Behind a
TLS-terminating proxy the documented way is USE_X_FORWARDED_PROTO=true with the proxy setting
`X-Forwarded-Proto`; without that header the site redirects to https (SECURE_SSL_REDIRECT).
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
from django.conf import settings

from tests.proxy.conftest import free_port
from tests.proxy.test_durability import child_database_url, child_env

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "bin" / "serve"
HOST = "gateway.example.com"
BEHIND_TLS_PROXY = {"Host": HOST, "X-Forwarded-Proto": "https"}


@contextmanager
def served(env: dict[str, str], *, timeout: float = 120) -> Iterator[str]:
    """`bin/serve` with ``env`` on a free loopback port; yields its base URL (``http://127.0.0.1:PORT``).
    The process gets its own session, so whatever it execs is stopped with it. Raises
    ``RuntimeError`` with the end of its stderr if it exits or is not serving within ``timeout`` seconds."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([str(SERVE)], cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**env, "JETSTREAM_HOST": "127.0.0.1", "JETSTREAM_PORT": str(port)})
    try:
        _wait_until_serving(process, url, timeout)
        yield url
    finally:
        _stop(process)


def _wait_until_serving(process: subprocess.Popen, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/v1/models", timeout=1)
            return
        except httpx.HTTPError:
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read().decode()[-3000:]) from None
            time.sleep(0.1)
    raise RuntimeError("bin/serve did not start")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    process.stderr.close()


def production_env(database_url: str, static_root: Path, **overrides: str) -> dict[str, str]:
    """What an operator sets in production, and nothing inherited that could mask a missing variable."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "DEBUG": "false",
        "JETSTREAM_SECRET_KEY": secrets.token_urlsafe(48),
        "JETSTREAM_ENCRYPTION_KEYS": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "ALLOWED_HOSTS": HOST,
        "USE_X_FORWARDED_PROTO": "true",
        "STATIC_ROOT": str(static_root),
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.REDIS_URL,
        **overrides,
    }


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess:
    """bin/serve for a start that must fail before it serves."""
    return subprocess.run([str(SERVE)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_it_serves_the_admin_its_static_files_and_the_proxy_with_production_settings(db, tmp_path, server):
    static_root = tmp_path / "static"
    with served(production_env(child_database_url(), static_root, JETSTREAM_SERVER=server)) as url:
        # The admin signs in through the cabinets' sign-in page (password, then TOTP).
        admin_login = httpx.get(f"{url}/admin/login/", headers=BEHIND_TLS_PROXY, timeout=30)
        assert admin_login.status_code == 302 and admin_login.headers["location"].startswith("/accounts/login/?next=")
        login = httpx.get(f"{url}/accounts/login/", headers=BEHIND_TLS_PROXY, timeout=30)
        assert login.status_code == 200, login.text[-2000:]
        for pattern, content_type in ((r'href="(/static/cabinets/cabinets\.[0-9a-f]{12}\.css)"', "text/css"),
                                      (r'src="(/static/vendor/chartjs/chart\.umd\.min\.[0-9a-f]{12}\.js)"', "text/javascript")):
            linked = re.search(pattern, login.text)
            assert linked, f"the sign-in page does not link the hashed file {pattern}"
            asset = httpx.get(f"{url}{linked.group(1)}", headers=BEHIND_TLS_PROXY, timeout=30)
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(content_type)
            assert asset.content == (static_root / linked.group(1).removeprefix("/static/")).read_bytes()
        assert any((static_root / "admin" / "css").glob("base.*.css"))  # the admin's own files are collected and hashed too
        models = httpx.get(f"{url}/v1/models", timeout=30)
        assert models.status_code == 401 and models.json()["error"]["type"] == "authentication_error"
        plain_http = httpx.get(f"{url}/admin/login/", headers={"Host": HOST}, timeout=30)
        assert plain_http.status_code == 301 and plain_http.headers["location"] == f"https://{HOST}/admin/login/"
    assert (static_root / "staticfiles.json").exists()


def test_it_starts_in_development_without_collecting_static_files(db, tmp_path):
    static_root = tmp_path / "static"
    with served(child_env(STATIC_ROOT=static_root)) as url:
        assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401
        # DEBUG serves app static files from their finders: nothing to collect.
        assert httpx.get(f"{url}/static/admin/css/base.css", timeout=30).status_code == 200
    assert not static_root.exists()


@pytest.fixture
def empty_database(db) -> Iterator[str]:
    """A database with no tables (as before the first `migrate`), dropped afterwards; yields its URL."""
    name = f"{settings.DATABASES['default']['NAME']}_empty_{os.getpid()}"
    admin_url = child_database_url()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_it_refuses_to_start_in_production_on_an_unmigrated_database(empty_database, tmp_path):
    result = run_serve(production_env(empty_database, tmp_path / "static", JETSTREAM_PORT=str(free_port())))
    assert result.returncode == 1
    assert "unapplied migrations" in result.stderr and "manage.py migrate" in result.stderr
    assert not (tmp_path / "static").exists()


@pytest.mark.parametrize(("variable", "value"), [
    ("JETSTREAM_TRUSTED_PROXIES", "10.0.0.0/8,not-a-network"),
    ("JETSTREAM_TRUSTED_PROXY_HEADER", "X-Forwarded-For: 1.2.3.4"),
])
def test_it_refuses_a_bad_proxy_setting_with_a_message_naming_it(db, tmp_path, variable, value):
    result = run_serve(child_env(**{variable: value}, JETSTREAM_PORT=free_port()))
    assert result.returncode != 0
    assert f"ImproperlyConfigured: {variable} must" in result.stderr
