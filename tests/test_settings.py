"""Production settings: `check --deploy` is clean, and bad secrets stop the process without leaking them.

Each case runs `manage.py check --deploy --fail-level WARNING` in a fresh process with a
minimal, explicit environment (nothing inherited that could mask a missing variable).
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = secrets.token_urlsafe(48)[:64]
KEY_A = base64.b64encode(secrets.token_bytes(32)).decode()
KEY_B = base64.b64encode(secrets.token_bytes(32)).decode()
SHORT_KEY = base64.b64encode(secrets.token_bytes(16)).decode()


def _production_env(**overrides: str | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "DJANGO_SETTINGS_MODULE": "jetstream.settings",
        "PYTHONDONTWRITEBYTECODE": "1",
        "DEBUG": "false",
        "JETSTREAM_SECRET_KEY": SECRET_KEY,
        "JETSTREAM_ENCRYPTION_KEYS": f"k1:{KEY_A}",
        "ALLOWED_HOSTS": "gateway.example.com",
        # The servers this test run uses (given in the environment, or the embedded ones).
        "DATABASE_URL": settings.DATABASE_URL,
        "REDIS_URL": settings.REDIS_URL,
    }
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _check(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                          cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)


def _assert_refused(result: subprocess.CompletedProcess, variable: str, *, leaked: tuple[str, ...] = ()) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "ImproperlyConfigured" in output, output
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured:"), last_line
    assert variable in last_line, last_line
    for material in leaked:
        assert material not in output, f"the error output echoes secret material {material[:6]}…"


def test_it_passes_check_deploy_with_production_settings():
    result = _check(_production_env())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output, output
    assert "WARNING" not in output and "?: (" not in output, output
    for material in (SECRET_KEY, KEY_A):
        assert material not in output


def test_it_reads_secrets_from_files(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"k2:{KEY_B},k1:{KEY_A}\n")
    secret = tmp_path / "secret"
    secret.write_text(SECRET_KEY + "\n")
    env = _production_env(JETSTREAM_ENCRYPTION_KEYS=None, JETSTREAM_ENCRYPTION_KEYS_FILE=str(keys),
                          JETSTREAM_SECRET_KEY=None, JETSTREAM_SECRET_KEY_FILE=str(secret))
    result = _check(env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_refuses_an_unreadable_secret_file(tmp_path):
    env = _production_env(JETSTREAM_ENCRYPTION_KEYS=None, JETSTREAM_ENCRYPTION_KEYS_FILE=str(tmp_path / "missing"))
    _assert_refused(_check(env), "JETSTREAM_ENCRYPTION_KEYS_FILE")


@pytest.mark.parametrize(("value", "leaked"), [
    (None, ()),
    ("", ()),
    ("k1:not*base64*at*all", ("not*base64*at*all",)),
    (f"k1:{SHORT_KEY}", (SHORT_KEY,)),
    (f"k1:{KEY_A},k1:{KEY_B}", (KEY_A, KEY_B)),
    (KEY_A, (KEY_A,)),
    (f"bad id!:{KEY_A}", (KEY_A,)),
], ids=["missing", "empty", "not-base64", "16-byte-key", "duplicate-id", "no-id", "bad-id"])
def test_it_refuses_bad_encryption_keys_without_echoing_them(value, leaked):
    _assert_refused(_check(_production_env(JETSTREAM_ENCRYPTION_KEYS=value)), "JETSTREAM_ENCRYPTION_KEYS", leaked=leaked)


def test_it_refuses_a_missing_secret_key():
    _assert_refused(_check(_production_env(JETSTREAM_SECRET_KEY=None)), "JETSTREAM_SECRET_KEY", leaked=(KEY_A,))


def test_it_refuses_a_short_secret_key():
    short = "s3cr3t-but-short-XYZ"
    _assert_refused(_check(_production_env(JETSTREAM_SECRET_KEY=short)), "JETSTREAM_SECRET_KEY", leaked=(short,))


def test_it_refuses_production_without_allowed_hosts():
    _assert_refused(_check(_production_env(ALLOWED_HOSTS=None)), "ALLOWED_HOSTS")
