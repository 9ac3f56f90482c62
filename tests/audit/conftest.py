"""Audit test helpers: a superuser connection of its own (an attacker with database access), and
readers of what the trail holds."""

from __future__ import annotations

import importlib
import json

import psycopg
import pytest
from django.db import connection

_0002 = importlib.import_module("apps.audit.migrations.0002_refuse_update_delete")


def attacker_connection() -> psycopg.Connection:
    """A new autocommit connection to the test database as its superuser, outside Django."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("prepare_threshold", None)
    return psycopg.connect(**params, autocommit=True)


def tamper(sql: str, params: tuple = ()) -> None:
    """Run ``sql`` with the append-only trigger dropped, then put the trigger back — as someone with
    superuser access to PostgreSQL would."""
    with attacker_connection() as conn:
        conn.execute("DROP TRIGGER audit_auditevent_append_only ON audit_auditevent")
        try:
            conn.execute(sql, params)
        finally:
            conn.execute(_0002.CREATE_TRIGGER)


def events(action: str | None = None):
    """The trail (oldest first), optionally one action's events."""
    from apps.audit.models import AuditEvent

    rows = AuditEvent.objects.order_by("seq", "id")
    return list(rows.filter(action=action) if action else rows)


def trail_text() -> str:
    """Everything the trail holds, as one string (to search for secrets)."""
    from apps.audit.export import event_dict

    return "\n".join(json.dumps(event_dict(e), ensure_ascii=False) for e in events())


@pytest.fixture
def audit_events():
    return events
