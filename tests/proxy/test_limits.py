"""Limits under concurrency: reservations are atomic in Redis, so nothing overspends."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.utils import timezone

from apps.billing import services as ledger
from apps.billing.models import UsageRecord
from tests.proxy.conftest import RUB

PROMPT = [{"role": "user", "content": "Count the coins in the vault"}]


def chat(gateway, *, model="demo-chat", max_tokens=100, secret=None, headers=None, messages=PROMPT, timeout=30):
    return httpx.post(gateway.base_url + "/chat/completions", timeout=timeout,
                      json={"model": model, "messages": messages, "max_tokens": max_tokens},
                      headers={"Authorization": f"Bearer {secret or gateway.world.secret}", **(headers or {})})


def exact_mock(gateway):
    """Make the mock always write to max_tokens, so the actual cost equals the reservation."""
    provider = gateway.world.mock_model.provider
    provider.options = {"words": 2000}
    provider.save()
    gateway.wait_config()


def reservation_for(gateway, max_tokens=100) -> int:
    from decimal import Decimal

    from lib import tokenizer
    from lib.money import cost_micro

    prompt = tokenizer.count_chat_prompt(PROMPT)
    return cost_micro(tokens_by_price=[(prompt, 10 * RUB), (max_tokens, 20 * RUB)], fx_micro=RUB, coefficient=Decimal("1.25"))


def test_fifty_parallel_requests_against_a_balance_for_ten_never_overspend(gateway):
    exact_mock(gateway)
    cost = reservation_for(gateway)
    wallet = ledger.company_wallet(gateway.world.company)
    # Leave the wallet with exactly ten requests' worth (plus change that buys nothing more).
    ledger.transfer(idempotency_id="spend-down", debit=wallet, credit=ledger.platform_account("platform_revenue"),
                    amount=ledger.balance(wallet).available - 10 * cost - cost // 2)
    gateway.drain()  # the writer merges the ledger change into Redis

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(lambda _: chat(gateway), range(50)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 10 and codes.count(402) == 40, codes
    refused = [r.json()["error"] for r in responses if r.status_code == 402]
    assert {e["code"] for e in refused} == {"insufficient_balance"}

    gateway.drain(expect=50)
    assert sum(UsageRecord.objects.values_list("sell_cost", flat=True)) == 10 * cost
    assert ledger.balance(wallet).available == cost // 2
    assert ledger.verify_ledger() == []


def test_spend_limits_refuse_with_429_naming_the_limit(gateway):
    exact_mock(gateway)
    cost = reservation_for(gateway)
    token = gateway.world.token
    token.limit_total = 3 * cost
    token.save()
    gateway.wait_config()
    assert [chat(gateway).status_code for _ in range(3)] == [200, 200, 200]
    refused = chat(gateway)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "limit_total"
    token.limit_total, token.limit_monthly = None, 4 * cost
    token.save()
    gateway.wait_config()
    assert chat(gateway).status_code == 200
    refused = chat(gateway)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "limit_monthly"


def test_a_department_budget_caps_all_its_tokens(gateway):
    from apps.accounts.models import Department

    exact_mock(gateway)
    cost = reservation_for(gateway)
    department = Department.objects.create(company=gateway.world.company, slug="ml", name="ML", monthly_budget=2 * cost)
    token = gateway.world.token
    token.department = department
    token.save()
    gateway.wait_config()
    assert [chat(gateway).status_code for _ in range(3)] == [200, 200, 429]
    assert chat(gateway).json()["error"]["code"] == "limit_department"


def test_rpm_is_enforced_with_retry_after_and_rejections_do_not_count(gateway):
    token = gateway.world.token
    token.rpm = 3
    token.save()
    gateway.wait_config()
    ok = [chat(gateway) for _ in range(3)]
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert ok[0].headers["x-ratelimit-limit-requests"] == "3" and ok[2].headers["x-ratelimit-remaining-requests"] == "0"
    for _ in range(3):
        refused = chat(gateway)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_rpm"
        assert int(refused.headers["retry-after"]) >= 1 and refused.headers["x-ratelimit-remaining-requests"] == "0"
    gateway.drain(expect=6)
    import redis
    from django.conf import settings

    from apps.proxy import redis_scripts

    client = redis.Redis.from_url(settings.REDIS_URL)
    current = redis_scripts.rate_keys(token.id, __import__("time").time())[0]
    assert int(client.get(current) or 0) + int(client.get(redis_scripts.rate_keys(token.id, __import__("time").time() - 60)[0]) or 0) == 3


def test_tpm_is_enforced(gateway):
    token = gateway.world.token
    token.tpm = 250
    token.save()
    gateway.wait_config()
    assert chat(gateway, max_tokens=100).status_code == 200
    refused = chat(gateway, max_tokens=200)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_tpm"


def test_the_model_allow_and_deny_lists_are_enforced(gateway):
    token = gateway.world.token
    token.models_allow = ["gpt-4o-mini"]
    token.save()
    gateway.wait_config()
    response = chat(gateway)
    assert response.status_code == 403 and response.json()["error"]["code"] == "model_not_allowed"
    token.models_allow, token.models_deny = [], ["demo-chat"]
    token.save()
    gateway.wait_config()
    assert chat(gateway).json()["error"]["code"] == "model_not_allowed"


def test_blocked_revoked_and_expired_tokens_are_refused(gateway):
    token = gateway.world.token
    token.status, token.status_reason = "blocked", "suspicious traffic"
    token.save()
    gateway.wait_config()
    blocked = chat(gateway)
    assert blocked.status_code == 403 and blocked.json()["error"]["code"] == "token_blocked"
    assert "suspicious traffic" in blocked.json()["error"]["message"]
    token.status = "revoked"
    token.save()
    gateway.wait_config()
    assert chat(gateway).json()["error"]["code"] == "token_revoked"
    token.status, token.expires_at = "active", timezone.now() - dt.timedelta(seconds=1)
    token.save()
    gateway.wait_config()
    assert chat(gateway).json()["error"]["code"] == "token_expired"


def test_the_ip_allow_list_is_enforced(gateway):
    token = gateway.world.token
    token.ip_allow = ["10.0.0.0/8"]
    token.save()
    gateway.wait_config()
    refused = chat(gateway)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "ip_not_allowed"
    token.ip_allow = ["10.0.0.0/8", "127.0.0.1/32"]
    token.save()
    gateway.wait_config()
    assert chat(gateway).status_code == 200


@pytest.fixture
def gateway_behind_proxy(world, settings):
    from apps.proxy.pipeline.app import ProxyApp
    from jetstream.asgi import build_application
    from tests.proxy.conftest import Gateway, ServerThread, free_port

    settings.JETSTREAM = {**settings.JETSTREAM, "TRUSTED_PROXY_HEADER": "X-Forwarded-For"}
    with ServerThread(build_application(ProxyApp()), free_port()) as server:
        yield Gateway(world, server)


def test_the_distinct_ip_cap_uses_the_trusted_proxy_header(gateway_behind_proxy):
    gateway = gateway_behind_proxy
    token = gateway.world.token
    token.max_distinct_ips, token.ip_allow = 2, ["203.0.113.0/24"]
    token.save()
    gateway.wait_config()

    def from_ip(ip):
        return chat(gateway, headers={"X-Forwarded-For": f"198.51.100.7, {ip}"})

    assert from_ip("203.0.113.1").status_code == 200
    assert from_ip("203.0.113.2").status_code == 200
    assert from_ip("203.0.113.1").status_code == 200  # a known address is always fine
    refused = from_ip("203.0.113.3")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "too_many_client_ips"
    assert from_ip("198.51.100.9").json()["error"]["code"] == "ip_not_allowed"
    gateway.drain(expect=5)
    assert set(UsageRecord.objects.values_list("client_ip", flat=True)) == {"203.0.113.1", "203.0.113.2", "203.0.113.3", "198.51.100.9"}


def test_an_idempotency_key_replays_without_a_second_charge(gateway):
    headers = {"Idempotency-Key": "order-42"}
    first = chat(gateway, headers=headers)
    second = chat(gateway, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true" and second.headers["x-jetstream-cost"] == "0.000000"
    conflict = chat(gateway, headers=headers, max_tokens=7)
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_key_reused"
    gateway.drain(expect=3)
    assert sorted(UsageRecord.objects.values_list("sell_cost", flat=True))[:2] == [0, 0]
    assert UsageRecord.objects.filter(sell_cost__gt=0).count() == 1


def test_a_top_up_reaches_the_gateway_at_once(gateway):
    exact_mock(gateway)
    cost = reservation_for(gateway)
    wallet = ledger.company_wallet(gateway.world.company)
    ledger.transfer(idempotency_id="drain-all", debit=wallet, credit=ledger.platform_account("platform_revenue"),
                    amount=ledger.balance(wallet).available)
    assert chat(gateway).status_code == 402
    ledger.top_up(company=gateway.world.company, amount=cost, idempotency_id="top-up-now")
    # No writer runs here: the ledger change itself pushed the new balance to Redis.
    assert chat(gateway).status_code == 200
    assert chat(gateway).status_code == 402


def test_an_idempotency_key_refused_for_money_can_be_retried(gateway):
    headers = {"Idempotency-Key": "retry-me"}
    wallet = ledger.company_wallet(gateway.world.company)
    ledger.transfer(idempotency_id="drain", debit=wallet, credit=ledger.platform_account("platform_revenue"),
                    amount=ledger.balance(wallet).available)
    assert chat(gateway, headers=headers).status_code == 402
    ledger.top_up(company=gateway.world.company, amount=1_000_000, idempotency_id="refill")
    retried = chat(gateway, headers=headers)
    assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers
    assert chat(gateway, headers=headers).headers["idempotent-replayed"] == "true"
