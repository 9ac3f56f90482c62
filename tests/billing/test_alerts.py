"""Spend alerts: 80/90/100 % of token limits and department budgets, a low wallet; email and a
signed webhook, each once per threshold per calendar period (company time zone), retried with
backoff when the receiver fails, never a secret in the logs."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail

from apps.billing.alerts import SIGNATURE_HEADER, verify
from apps.notifications import alerts
from apps.notifications.models import AlertDelivery, AlertSettings, DeliveryStatus
from tests.billing.conftest import RUB

UTC = dt.UTC
NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class Receiver:
    """A webhook receiver on loopback: records (headers, raw body); answers ``status``."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict, bytes]] = []
        self.status = 200
        self.delay = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                time.sleep(receiver.delay)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/jetstream?token=url-secret-123"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings):
    settings.JETSTREAM = {**settings.JETSTREAM, "ALERT_WEBHOOK_ALLOW_PRIVATE": True, "ALERT_MAX_ATTEMPTS": 3,
                          "LOW_WALLET_THRESHOLD": 0}
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def setup(books, receiver):
    from apps.accounts.models import Department, Membership, User
    from apps.billing import services
    from apps.proxy.models import ApiToken

    company = books.company
    services.top_up(company=company, amount=1000 * RUB, idempotency_id="alerts-setup")
    company.time_zone = "Asia/Vladivostok"  # UTC+10: its months start 10 hours before UTC's
    company.save()
    owner = User.objects.create_user("owner@acme.test")
    Membership.objects.create(user=owner, company=company, role="owner")
    conf = AlertSettings(company=company, webhook_url=receiver.url)
    secret = conf.rotate_webhook_secret()
    conf.save()
    department = Department.objects.create(company=company, slug="rnd", name="R&D", monthly_budget=200 * RUB)
    token = ApiToken(company=company, department=department, name="ci", limit_monthly=100 * RUB)
    token.set_secret("js-acme-alerts-0123456789abcdef0123456789abcdef")
    token.save()
    return company, token, department, secret


def spend(token, amount: int, at: dt.datetime, n=[0]) -> None:  # noqa: B006 - a counter on purpose
    from apps.billing.models import UsageRecord

    n[0] += 1
    UsageRecord.objects.create(request_id=f"alert-{n[0]}", token=token, company=token.company, department=token.department,
                               status="ok", http_status=200, started_at=at, finished_at=at, sell_cost=amount)


def run(now):
    alerts.scan(now)
    return alerts.deliver(now)


def test_80_percent_of_a_monthly_limit_is_sent_once_by_email_and_signed_webhook(setup, receiver):
    company, token, _, secret = setup
    spend(token, 79 * RUB, NOW)
    assert run(NOW) == 0 and not mail.outbox
    spend(token, 1 * RUB, NOW)  # 80 RUB of 100: exactly 80 %
    assert run(NOW) == 2
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["owner@acme.test"]
    assert mail.outbox[0].subject == "[Jetstream] Достигнуто 80 % месячного лимита токена «ci» (80 из 100 руб., 2026-11)"
    (headers, body), = receiver.calls
    assert verify(secret, body, headers[SIGNATURE_HEADER])
    assert not verify(secret, body + b" ", headers[SIGNATURE_HEADER]) and not verify("other", body, headers[SIGNATURE_HEADER])
    payload = json.loads(body)
    assert payload | {"at": None, "delivery_id": None} == {
        "type": "spend_alert", "kind": "token_monthly", "company_id": company.pk, "subject_id": token.pk, "subject_name": "ci",
        "level": 80, "period": "2026-11", "spent_rub": "80", "limit_rub": "100", "at": None, "delivery_id": None}
    assert headers["X-Jetstream-Delivery"] == str(payload["delivery_id"])
    for _ in range(3):  # every later run (beat, every minute) finds it already sent
        assert run(NOW + dt.timedelta(minutes=1)) == 0
    assert len(mail.outbox) == 1 and len(receiver.calls) == 1


def test_a_jump_past_several_levels_sends_only_the_highest(setup, receiver):
    _, token, _, _ = setup
    spend(token, 85 * RUB, NOW)
    run(NOW)
    spend(token, 20 * RUB, NOW)  # 105 %: 90 and 100 new at once
    assert run(NOW) == 2
    levels = {(d.kind, d.level, d.channel): d.status for d in AlertDelivery.objects.filter(kind="token_monthly")}
    assert levels == {("token_monthly", 80, "email"): "sent", ("token_monthly", 80, "webhook"): "sent",
                      ("token_monthly", 90, "email"): "superseded", ("token_monthly", 90, "webhook"): "superseded",
                      ("token_monthly", 100, "email"): "sent", ("token_monthly", 100, "webhook"): "sent"}
    assert [json.loads(b)["level"] for _, b in receiver.calls] == [80, 100]


def test_periods_are_calendar_months_in_the_company_time_zone(setup):
    _, token, _, _ = setup
    # 30 Nov 15:00 UTC is 1 December 01:00 in Vladivostok: December's spend, not November's.
    december = dt.datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
    spend(token, 90 * RUB, dt.datetime(2026, 11, 30, 13, 0, tzinfo=UTC))  # 23:00 on 30 Nov there
    run(dt.datetime(2026, 11, 30, 13, 30, tzinfo=UTC))
    assert set(AlertDelivery.objects.filter(kind="token_monthly").values_list("level", "period")) == {(80, "2026-11"), (90, "2026-11")}
    AlertDelivery.objects.all().delete()
    assert run(december) == 0  # a new month in Vladivostok: nothing spent yet
    spend(token, 80 * RUB, december)
    assert run(december) == 2
    assert set(AlertDelivery.objects.filter(kind="token_monthly").values_list("level", "period")) == {(80, "2026-12")}


def test_department_budget_and_the_token_limit_are_separate_alerts(setup):
    _, token, department, _ = setup
    spend(token, 90 * RUB, NOW)  # 90 % of the token's 100, 45 % of the department's 200
    run(NOW)
    assert not AlertDelivery.objects.filter(kind="department").exists()
    token.limit_monthly = None
    token.save()
    spend(token, 90 * RUB, NOW)  # department: 180 of 200 = 90 %
    run(NOW)
    sent = set(AlertDelivery.objects.filter(kind="department", status="sent").values_list("subject_id", "level", "period"))
    assert sent == {(department.pk, 90, "2026-11")}
    assert mail.outbox[-1].subject == "[Jetstream] Достигнуто 90 % месячного бюджета отдела «R&D» (180 из 200 руб., 2026-11)"


def test_low_wallet_uses_the_company_threshold_else_the_platform_default(setup, books, settings):
    from apps.billing import services

    company, _, _, _ = setup
    services.top_up(company=company, amount=600 * RUB, idempotency_id="alerts-top-up")  # 1600 available
    settings.JETSTREAM = {**settings.JETSTREAM, "LOW_WALLET_THRESHOLD": 1500 * RUB}
    assert run(NOW) == 0  # 1600 available > 1500
    settings.JETSTREAM = {**settings.JETSTREAM, "LOW_WALLET_THRESHOLD": 1600 * RUB}
    assert run(NOW) == 2
    assert mail.outbox[0].subject == ("[Jetstream] Кошелёк на исходе: потрачено 100 % средств месяца сверх порога "
                                      "(доступно 1600 руб., порог 1600 руб., 2026-11)")
    AlertSettings.objects.filter(company=company).update(low_wallet_threshold=1700 * RUB)
    assert run(NOW) == 0  # once per period, whatever the threshold
    assert run(dt.datetime(2026, 12, 5, tzinfo=UTC)) == 2  # next month: again


def test_a_low_wallet_warns_at_80_and_90_percent_of_the_months_money_above_the_threshold(setup, receiver, settings):
    # 1000 RUB in the wallet, a 200 RUB threshold: 800 RUB to spend this month above it. The spend
    # is usage written through billing (the ledger's debits and the usage records move together).
    from apps.billing.usage import UsageEvent
    from apps.billing.usage_records import record_usage_batch

    company, token, _, _ = setup
    token.limit_monthly = None
    token.save()
    settings.JETSTREAM = {**settings.JETSTREAM, "LOW_WALLET_THRESHOLD": 200 * RUB}
    at = NOW.timestamp()

    def charge(n: int, amount: int) -> None:
        record_usage_batch(events=[UsageEvent(request_id=f"wallet-{n}", endpoint="chat", status="ok", http_status=200, started_at=at,
                                       finished_at=at, token_id=token.pk, company_id=company.pk, sell_cost=amount)])

    charge(1, 639 * RUB)  # 639 of 800: 79.9 %
    assert run(NOW) == 0
    charge(2, 1 * RUB)  # 640 of 800: 80 % (360 RUB left, 160 above the threshold)
    assert run(NOW) == 2
    assert mail.outbox[-1].subject == ("[Jetstream] Кошелёк на исходе: потрачено 80 % средств месяца сверх порога "
                                       "(доступно 360 руб., порог 200 руб., 2026-11)")
    payload = json.loads(receiver.calls[-1][1])
    assert (payload["kind"], payload["level"], payload["spent_rub"], payload["limit_rub"], payload["available_rub"],
            payload["threshold_rub"]) == ("low_wallet", 80, "640", "800", "360", "200")
    charge(3, 80 * RUB)  # 720 of 800: 90 %
    assert run(NOW) == 2 and json.loads(receiver.calls[-1][1])["level"] == 90
    assert run(NOW + dt.timedelta(minutes=1)) == 0  # once per level and month
    charge(4, 80 * RUB)  # 200 RUB left: at the threshold, 100 %
    assert run(NOW) == 2 and json.loads(receiver.calls[-1][1])["level"] == 100
    sent = sorted(AlertDelivery.objects.filter(kind="low_wallet", channel="email").values_list("level", "status"))
    assert sent == [(80, "sent"), (90, "sent"), (100, "sent")]


@pytest.mark.parametrize(("spent", "available", "threshold", "levels"), [
    (0, 1000, 200, []), (639, 361, 200, []), (640, 360, 200, [80]), (720, 280, 200, [80, 90]),
    (800, 200, 200, [80, 90, 100]), (0, 150, 200, [80, 90, 100]), (0, 0, 0, [80, 90, 100]), (500, -10, 0, [80, 90, 100]),
])
def test_wallet_levels_measure_the_months_spend_against_the_money_above_the_threshold(spent, available, threshold, levels):
    assert alerts.wallet_levels(spent * RUB, available * RUB, threshold * RUB) == levels


def test_a_failing_webhook_is_retried_with_backoff_then_given_up_and_never_logs_secrets(setup, receiver, caplog):
    company, token, _, secret = setup
    receiver.status = 500
    spend(token, 80 * RUB, NOW)
    with caplog.at_level(logging.DEBUG):
        assert run(NOW) == 1  # the email went
        hook = AlertDelivery.objects.get(channel="webhook")
        assert (hook.status, hook.attempts, hook.last_error) == ("pending", 1, "webhook: HTTP 500")
        assert hook.next_attempt_at == NOW + dt.timedelta(minutes=1)
        assert run(NOW + dt.timedelta(seconds=30)) == 0 and len(receiver.calls) == 1  # not due yet
        assert run(NOW + dt.timedelta(minutes=1)) == 0 and len(receiver.calls) == 2
        hook.refresh_from_db()
        assert hook.next_attempt_at == NOW + dt.timedelta(minutes=1) + dt.timedelta(minutes=2)
        assert run(NOW + dt.timedelta(minutes=3)) == 0 and len(receiver.calls) == 3
    hook.refresh_from_db()
    assert (hook.status, hook.attempts, hook.next_attempt_at) == (DeliveryStatus.FAILED, 3, None)
    assert run(NOW + dt.timedelta(hours=2)) == 0 and len(receiver.calls) == 3
    logged = caplog.text + "".join(str(d.__dict__) for d in AlertDelivery.objects.all())
    assert secret not in logged and "url-secret-123" not in logged and "127.0.0.1" not in logged
    assert "not delivered, attempt 3: webhook: HTTP 500" in caplog.text


def test_a_recovering_receiver_gets_the_alert_on_retry(setup, receiver):
    _, token, _, secret = setup
    receiver.status = 503
    spend(token, 80 * RUB, NOW)
    run(NOW)
    receiver.status = 204
    assert run(NOW + dt.timedelta(minutes=1)) == 1
    assert [verify(secret, b, h[SIGNATURE_HEADER]) for h, b in receiver.calls] == [True, True]
    assert receiver.calls[0][0]["X-Jetstream-Delivery"] == receiver.calls[1][0]["X-Jetstream-Delivery"]
    assert AlertDelivery.objects.get(channel="webhook").status == "sent"


def test_alerts_switched_off_record_nothing(setup):
    company, token, _, _ = setup
    AlertSettings.objects.filter(company=company).update(enabled=False)
    spend(token, 100 * RUB, NOW)
    assert run(NOW) == 0 and not AlertDelivery.objects.exists() and not mail.outbox


def test_private_webhook_addresses_are_refused_by_default(setup, receiver, settings):
    settings.JETSTREAM = {**settings.JETSTREAM, "ALERT_WEBHOOK_ALLOW_PRIVATE": False}
    _, token, _, _ = setup
    spend(token, 80 * RUB, NOW)
    run(NOW)
    assert not receiver.calls
    assert AlertDelivery.objects.get(channel="webhook").last_error == "webhook URL refused: UnsafeURLError"


def test_the_task_runs_scan_and_delivery(setup):
    from apps.notifications.tasks import send_spend_alerts

    _, token, _, _ = setup
    from django.utils import timezone

    spend(token, 95 * RUB, timezone.now())
    assert send_spend_alerts() == 2  # 80 superseded by 90: one email, one webhook
    assert send_spend_alerts() == 0


def test_the_admin_never_shows_the_webhook_secret_and_shows_a_new_one_once(setup, superadmin_client):
    company, _, _, secret = setup
    conf = AlertSettings.objects.get(company=company)
    page = superadmin_client.get(f"/admin/notifications/alertsettings/{conf.pk}/change/").content.decode()
    listing = superadmin_client.get("/admin/notifications/alertsettings/").content.decode()
    for html in (page, listing):
        assert secret not in html and conf.webhook_secret_encrypted not in html
    response = superadmin_client.post("/admin/notifications/alertsettings/", {"action": "new_webhook_secret", "_selected_action": [conf.pk]})
    conf.refresh_from_db()
    assert "no-store" in response["Cache-Control"]
    assert conf.webhook_secret() in response.content.decode() and conf.webhook_secret() != secret


def test_two_workers_at_once_record_and_send_each_alert_once(transactional_db, setup, receiver):
    from django.db import connection

    _, token, _, _ = setup
    spend(token, 90 * RUB, NOW)
    receiver.delay = 0.5  # the first worker is still sending when the second looks
    barrier = threading.Barrier(2)
    sent: list[int] = []

    def worker():
        try:
            barrier.wait()
            alerts.scan(NOW)
            sent.append(alerts.deliver(NOW))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(sent) in ([0, 2], [1, 1])  # two alerts (email, webhook at 90 %), each sent by one worker
    assert len(receiver.calls) == 1 and len(mail.outbox) == 1
    assert sorted(AlertDelivery.objects.values_list("level", "channel", "status")) == [
        (80, "email", "superseded"), (80, "webhook", "superseded"), (90, "email", "sent"), (90, "webhook", "sent")]


def test_an_unreadable_webhook_secret_fails_that_alert_only(setup, receiver):
    company, token, _, _ = setup
    AlertSettings.objects.filter(company=company).update(webhook_secret_encrypted="v1:nokey:AAAA")
    spend(token, 80 * RUB, NOW)
    assert run(NOW) == 1  # the email
    hook = AlertDelivery.objects.get(channel="webhook")
    assert (hook.status, hook.last_error) == ("pending", "SecretDecryptionError")
    assert AlertDelivery.objects.get(channel="email").status == "sent" and not receiver.calls


def test_an_alert_a_dead_worker_claimed_is_sent_after_the_lease(setup, receiver, monkeypatch):
    _, token, _, _ = setup
    spend(token, 80 * RUB, NOW)
    alerts.scan(NOW)
    with monkeypatch.context() as patch:
        patch.setattr(alerts, "_attempt", lambda row, now: False)  # claimed, then the worker died
        alerts.deliver(NOW)
    assert alerts.deliver(NOW + dt.timedelta(minutes=5)) == 0 and not receiver.calls
    assert alerts.deliver(NOW + alerts.CLAIM_LEASE) == 2 and len(receiver.calls) == 1
