"""A real Celery worker (``celery -A jetstream worker``, a subprocess) on the real Redis broker runs
the periodic tasks end to end against the test database; and every beat entry names a task the
worker knows."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone

from tests.billing.test_alerts import Receiver

ROOT = Path(__file__).resolve().parent.parent


def _database_url() -> str:
    """The test database's URL, for a TCP host or a socket directory (the embedded PostgreSQL's)."""
    s = connection.settings_dict
    user = quote(s["USER"] or "", safe="") + (f":{quote(s['PASSWORD'], safe='')}" if s.get("PASSWORD") else "")
    port = f":{s['PORT']}" if s.get("PORT") else ""
    if (s.get("HOST") or "").startswith("/"):
        return f"postgres://{user}@{port}/{quote(s['NAME'], safe='')}?host={quote(s['HOST'], safe='')}"
    return f"postgres://{user}@{s['HOST']}{port}/{quote(s['NAME'], safe='')}"


@pytest.fixture
def worker(transactional_db):
    """A worker consuming a queue of its own (so no other worker takes these messages), on the
    test database, allowed to call a loopback webhook. Stopped (and its queue deleted) after."""
    queue = f"test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "DATABASE_URL": _database_url(), "REDIS_URL": settings.REDIS_URL, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
           "DJANGO_SETTINGS_MODULE": "jetstream.settings", "JETSTREAM_ALERT_WEBHOOK_ALLOW_PRIVATE": "true"}
    process = subprocess.Popen([sys.executable, "-m", "celery", "-A", "jetstream", "worker", "--pool=solo", "-Q", queue,
                                "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield queue, process
    finally:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        print(output)  # shown when a test fails
        client = redis.Redis.from_url(settings.REDIS_URL)
        client.delete(queue)
        client.close()


def wait_for(check, *, timeout: float = 45.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker did not {what} within {timeout} s")
        time.sleep(0.2)


def test_a_real_worker_runs_the_periodic_tasks(worker, settings):
    from apps.accounts.models import Company
    from apps.billing import services
    from apps.billing.models import Transfer, TransferStatus
    from apps.billing.tasks import void_expired_holds
    from apps.notifications.models import AlertDelivery, AlertSettings
    from apps.notifications.tasks import send_spend_alerts
    from apps.proxy import redis_scripts
    from apps.proxy.tasks import reconcile_spend_counters

    queue, process = worker
    company = Company.objects.create(slug="acme", name="Acme")
    services.top_up(company=company, amount=5_000_000, idempotency_id="worker-top-up")
    # 1. A ledger hold about to lapse: the worker's void_expired_holds releases it.
    wallet = services.company_wallet(company)
    held = services.hold(idempotency_id="worker-hold", debit=wallet, credit=services.platform_account("platform_cash"), amount=1_000_000,
                         expires_at=timezone.now() + dt.timedelta(milliseconds=300))
    # 2. A company counter in Redis that drifted from the ledger: reconciliation repairs it.
    client = redis.Redis.from_url(settings.REDIS_URL)
    key = redis_scripts.company_key(company.pk)
    client.hset(key, mapping={"cr": 5_000_000, "db": 0, "lim": 0, "out": 777})
    # 3. A low wallet with a webhook: the alert task signs and sends it.
    receiver = Receiver()
    conf = AlertSettings(company=company, webhook_url=receiver.url, low_wallet_threshold=10_000_000)
    secret = conf.rotate_webhook_secret()
    conf.save()
    try:
        time.sleep(0.4)
        void_expired_holds.apply_async(queue=queue)
        reconcile_spend_counters.apply_async(queue=queue)
        send_spend_alerts.apply_async(queue=queue)
        wait_for(lambda: Transfer.objects.get(pk=held.pk).status == TransferStatus.EXPIRED, what="expire the hold")
        wait_for(lambda: client.hget(key, "out") == b"0", what="repair the counter")
        wait_for(lambda: len(receiver.calls) == 1, what="send the webhook")
        assert process.poll() is None  # still running: the tasks did not crash it
    finally:
        client.delete(key)
        client.close()
        receiver.close()
    from apps.billing.alerts import SIGNATURE_HEADER, verify

    headers, body = receiver.calls[0]
    assert verify(secret, body, headers[SIGNATURE_HEADER])
    # At its threshold the wallet is at all three levels at once: the highest is sent, the others superseded.
    assert dict(AlertDelivery.objects.filter(channel="webhook").values_list("level", "status")) == \
        {80: "superseded", 90: "superseded", 100: "sent"}


def test_every_beat_entry_names_a_registered_task():
    from jetstream.celery import app

    app.loader.import_default_modules()
    names = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"apps.billing.tasks.void_expired_holds", "apps.proxy.tasks.reconcile_spend_counters",
            "apps.notifications.tasks.send_spend_alerts"} <= names
    assert names <= set(app.tasks)
