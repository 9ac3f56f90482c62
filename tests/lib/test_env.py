"""lib/env.py: typed environment helpers."""

from __future__ import annotations

import base64
import secrets

import pytest
from django.core.exceptions import ImproperlyConfigured

from lib.env import envbool, envint, envlist, envstr, local_url, parse_database_url, parse_encryption_keys

VAR = "JETSTREAM_TEST_VALUE"


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    monkeypatch.delenv(f"{VAR}_FILE", raising=False)
    return monkeypatch


def _b64(n: int = 32) -> str:
    return base64.b64encode(secrets.token_bytes(n)).decode()


def test_it_returns_defaults_for_unset_variables(env):
    assert envstr(VAR) is None and envstr(VAR, "x") == "x"
    assert envbool(VAR, True) is True and envbool(VAR, False) is False
    assert envint(VAR, 7) == 7
    default = ["a"]
    listed = envlist(VAR, default)
    assert listed == ["a"] and listed is not default


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("TRUE", True), (" yes ", True), ("On", True),
                                               ("0", False), ("false", False), ("no", False), ("off", False), ("", False)])
def test_it_parses_booleans(env, raw, expected):
    env.setenv(VAR, raw)
    assert envbool(VAR, not expected) is expected


def test_it_refuses_a_malformed_boolean_naming_the_variable(env):
    env.setenv(VAR, "maybe")
    with pytest.raises(ImproperlyConfigured, match=VAR):
        envbool(VAR, False)


def test_it_parses_integers_within_bounds(env):
    env.setenv(VAR, " 42 ")
    assert envint(VAR, 0, minimum=1, maximum=100) == 42
    env.setenv(VAR, "  ")
    assert envint(VAR, 5) == 5
    for raw, message in (("4.2", "integer"), ("ten", "integer"), ("0", ">= 1"), ("101", "<= 100")):
        env.setenv(VAR, raw)
        with pytest.raises(ImproperlyConfigured, match=f"{VAR}.*{message}"):
            envint(VAR, 0, minimum=1, maximum=100)


def test_it_splits_lists(env):
    env.setenv(VAR, " a.example.com, b.example.com,, ")
    assert envlist(VAR, []) == ["a.example.com", "b.example.com"]
    env.setenv(VAR, "")
    assert envlist(VAR, ["default"]) == []


def test_it_reads_the_file_variant(env, tmp_path):
    path = tmp_path / "value"
    path.write_text("from-file\n")
    env.setenv(f"{VAR}_FILE", str(path))
    assert envstr(VAR) == "from-file"
    path.write_text("yes\n")
    assert envbool(VAR, False) is True
    path.write_text("12\n")
    assert envint(VAR, 0) == 12
    env.setenv(VAR, "13")  # the variable itself wins over the file
    assert envint(VAR, 0) == 13


def test_it_refuses_an_unreadable_file_naming_the_variable(env, tmp_path):
    env.setenv(f"{VAR}_FILE", str(tmp_path / "nope"))
    with pytest.raises(ImproperlyConfigured, match=f"{VAR}_FILE"):
        envstr(VAR)


def test_it_parses_database_urls():
    config = parse_database_url("postgres://app:p%40ss%3Aword@db.internal:6543/jet%2Dstream?sslmode=require")
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["USER"], config["PASSWORD"], config["HOST"], config["PORT"], config["NAME"]) == (
        "app", "p@ss:word", "db.internal", "6543", "jet-stream")
    assert config["OPTIONS"] == {"sslmode": "require"}

    socket = parse_database_url("postgresql://postgres@/jetstream?host=/tmp/pg-socket")
    assert socket["HOST"] == "/tmp/pg-socket" and socket["PORT"] == "" and socket["OPTIONS"] == {}
    assert parse_database_url("pgsql://localhost/x")["HOST"] == "localhost"


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://root@localhost/jet", "postgres://"),
    ("sqlite:///db.sqlite3", "postgres://"),
    ("postgres://localhost", "names no database"),
    ("postgres://localhost:notaport/jet", "malformed port"),
])
def test_it_refuses_bad_database_urls(url, message):
    with pytest.raises(ImproperlyConfigured, match=f"REPLICA_URL.*{message}"):
        parse_database_url(url, name="REPLICA_URL")


def test_it_does_not_echo_a_database_password():
    with pytest.raises(ImproperlyConfigured) as caught:
        parse_database_url("postgres://app:VERY-SECRET@localhost:99999/jet")
    assert "VERY-SECRET" not in str(caught.value)


def test_it_parses_encryption_keys_in_order():
    a, b = _b64(), _b64()
    keys = parse_encryption_keys(f" new-2:{b} , old_1:{a} ,")
    assert list(keys) == ["new-2", "old_1"]
    assert keys["old_1"] == base64.b64decode(a) and len(keys["new-2"]) == 32


@pytest.mark.parametrize(("value", "message"), [
    ("", "holds no keys"),
    (" , ", "holds no keys"),
    ("{key}", "must look like 'id:base64key'"),
    (":{key}", "must look like 'id:base64key'"),
    ("k1:", "must look like 'id:base64key'"),
    ("bad id:{key}", "key id must be"),
    ("ключ:{key}", "key id must be"),
    ("{long}:{key}", "key id must be"),
    ("k1:{key},k1:{key2}", "appears twice"),
    ("k1:not*base64", "not valid base64"),
    ("k1:{short}", "must decode to 32 bytes"),
    ("k1:{long_key}", "must decode to 32 bytes"),
])
def test_it_refuses_bad_encryption_keys_without_echoing_them(value, message):
    material = {"key": _b64(), "key2": _b64(), "short": _b64(16), "long_key": _b64(48), "long": "k" * 33}
    value = value.format(**material)
    with pytest.raises(ImproperlyConfigured, match=message) as caught:
        parse_encryption_keys(value)
    text = str(caught.value)
    assert "JETSTREAM_ENCRYPTION_KEYS" in text
    for name in ("key", "key2", "short", "long_key"):
        assert material[name] not in text
    assert "not*base64" not in text


@pytest.mark.parametrize(("host", "port", "expected"), [
    ("127.0.0.1", 8000, "http://127.0.0.1:8000"), ("0.0.0.0", 8080, "http://127.0.0.1:8080"),
    ("::", 9000, "http://127.0.0.1:9000"), ("", 9000, "http://127.0.0.1:9000"),
    ("::1", 9000, "http://[::1]:9000"), ("gateway.local", 80, "http://gateway.local:80"),
])
def test_it_builds_the_local_url_of_a_bind_address(host, port, expected):
    assert local_url(host, port) == expected
