"""Typed environment helpers for settings (healthchecks' envbool/envint style).

Every helper reads ``NAME`` or, when that is unset, the contents of the file named by
``NAME_FILE`` (Docker/Kubernetes secrets). A present but malformed value raises
``ImproperlyConfigured`` naming the variable: bad configuration must stop the process, not
silently fall back to a default.
"""

from __future__ import annotations

import base64
import binascii
import os
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is not None:
        return value
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc.strerror}") from exc
    return None


def envstr(name: str, default: str | None = None) -> str | None:
    """``NAME`` (or the contents of ``NAME_FILE``) as text, or ``default`` when neither is set."""
    value = _raw(name)
    return default if value is None else value


def envbool(name: str, default: bool) -> bool:
    """true/false, 1/0, yes/no, on/off (any case; empty is false), or ``default`` when unset.
    Raises ``ImproperlyConfigured`` for any other value."""
    value = _raw(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be one of true/false/1/0/yes/no/on/off, got {value!r}")


def envint(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer, or ``default`` when unset or blank. Raises ``ImproperlyConfigured`` for a
    non-integer or a value outside [``minimum``, ``maximum``] (each bound optional)."""
    value = _raw(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name} must be <= {maximum}, got {number}")
    return number


def envlist(name: str, default: list[str]) -> list[str]:
    """A comma-separated list (items stripped, empty ones dropped), or a copy of ``default`` when unset."""
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_database_url(url: str, *, name: str = "DATABASE_URL") -> dict:
    """``postgres://user:pass@host:port/db?sslmode=...`` → a Django DATABASES entry.

    A socket directory may be given as ``?host=/path`` (what pgserver hands out).
    """
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ImproperlyConfigured(f"{name} must be a postgres:// URL (PostgreSQL is the only database), got scheme {parts.scheme!r}")
    options = dict(parse_qsl(parts.query))
    host = options.pop("host", None) or (unquote(parts.hostname) if parts.hostname else "")
    db_name = unquote(parts.path.lstrip("/"))
    if not db_name:
        raise ImproperlyConfigured(f"{name} names no database")
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name} has a malformed port") from None
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": db_name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(port or ""),
        "OPTIONS": options,
    }


def parse_encryption_keys(value: str, *, name: str = "JETSTREAM_ENCRYPTION_KEYS") -> dict[str, bytes]:
    """``id:base64,id:base64`` → ordered {key id: 32-byte key}; the first one encrypts."""
    keys: dict[str, bytes] = {}
    for position, item in enumerate(value.split(","), start=1):
        item = item.strip()
        if not item:
            continue
        key_id, sep, encoded = item.partition(":")
        key_id = key_id.strip()
        if not sep or not key_id or not encoded.strip():
            raise ImproperlyConfigured(f"{name}: entry {position} must look like 'id:base64key'")
        if not key_id.isascii() or not key_id.replace("-", "").replace("_", "").isalnum() or len(key_id) > 32:
            raise ImproperlyConfigured(f"{name}: entry {position} key id must be 1-32 letters, digits, '-' or '_'")
        if key_id in keys:
            raise ImproperlyConfigured(f"{name}: key id {key_id!r} appears twice")
        try:
            raw = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ImproperlyConfigured(f"{name}: key {key_id!r} is not valid base64") from None
        if len(raw) != 32:
            raise ImproperlyConfigured(f"{name}: key {key_id!r} must decode to 32 bytes (AES-256), got {len(raw)}")
        keys[key_id] = raw
    if not keys:
        raise ImproperlyConfigured(f"{name} holds no keys")
    return keys


def local_url(host: str, port: int) -> str:
    """The http:// URL a browser on this machine uses for a server bound to ``host``:``port``.

    A wildcard bind (``0.0.0.0``, ``::``, empty) is reached through loopback; an IPv6
    address is bracketed: ``local_url("0.0.0.0", 8080)`` → ``"http://127.0.0.1:8080"``.
    """
    host = host.strip()
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"
