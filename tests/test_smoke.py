from __future__ import annotations

from django.db import connection


def test_it_runs_on_real_postgresql(db):
    with connection.cursor() as cursor:
        cursor.execute("select version()")
        assert "PostgreSQL" in cursor.fetchone()[0]


def test_it_reaches_real_redis(redis_client):
    key = redis_client.test_prefix + "ping"
    redis_client.set(key, "1")
    assert redis_client.get(key) == b"1"
