"""What of a model instance may enter the trail: JSON-safe values, never a secret.

``denied`` is the field deny-list (``DENY_WORDS``, ``DENY_NAMES``): a key whose name matches it is dropped from ``before`` / ``after``
at any depth (a secret's *change* is still recorded — as its own action, e.g.
``token.secret_rotated`` — but never its value, hash, ciphertext or last characters). Payout
details (bank accounts, card references) are personal data and stay out too.
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from django.db import models

#: Words that make a field secret wherever they stand in its name (``secret_encrypted``, ``key_hash``).
DENY_WORDS = frozenset({"secret", "password", "passwd", "hash", "encrypted", "ciphertext", "last4", "otp", "seed",
                        "credential", "credentials", "pdf", "card", "bik", "session", "signature"})
#: Whole names denied outright: TOTP's ``key``, ``api_key``, the token's display ``key_prefix``, bank details.
DENY_NAMES = frozenset({"key", "api_key", "key_prefix", "payout_details", "account_number", "correspondent_account", "token"})

#: Longest string kept in a snapshot (longer ones are cut, marked with "…").
MAX_TEXT = 500


def denied(name: str) -> bool:
    """True when a field or key called ``name`` must never enter the trail."""
    lowered = name.lower()
    parts = lowered.replace("-", "_").split("_")
    return lowered in DENY_NAMES or lowered.endswith("_key") or any(part in DENY_WORDS for part in parts)


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON (str, int, float, bool, None, lists, dicts with str keys): Decimals
    and UUIDs as strings (a Decimal normalised: "1.25", never "1.2500"), datetimes as ISO 8601 (aware
    ones in UTC), model instances as their primary key; denied keys
    dropped at any depth; NUL characters removed (PostgreSQL's jsonb refuses them); long text cut."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, str):
        text = value.replace("\x00", "")
        return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"
    if isinstance(value, decimal.Decimal):
        # One spelling per number, whatever the scale it was typed or stored with ("1.25" = "1.2500").
        return format(value.normalize(), "f") if value.is_finite() else str(value)
    if isinstance(value, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat() if value.tzinfo is not None else value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, models.Model):
        return value.pk
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items() if not denied(str(k))}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    return json_safe(str(value))


def tracked_fields(model: type[models.Model], *, only: Iterable[str] | None = None, ignore: Iterable[str] = ()) -> tuple[str, ...]:
    """The attribute names (``company_id`` for a foreign key) of ``model``'s concrete fields that a
    snapshot holds: ``only`` those if given, never a denied one nor one of ``ignore``."""
    wanted = set(only) if only is not None else None
    skipped = set(ignore)
    names = []
    for field in model._meta.concrete_fields:
        name = field.attname
        if denied(name) or denied(field.name) or name in skipped or field.name in skipped:
            continue
        if wanted is None or name in wanted or field.name in wanted:
            names.append(name)
    return tuple(names)


def snapshot(instance: models.Model, fields: Iterable[str]) -> dict[str, Any]:
    """``{attname: JSON-safe value}`` of ``instance`` for ``fields`` (attribute names)."""
    return {name: json_safe(getattr(instance, name)) for name in fields if not denied(name)}
