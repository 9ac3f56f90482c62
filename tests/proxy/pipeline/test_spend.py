"""Spend: estimates, limits under concurrency (atomic reservations, nothing overspends), exact charges."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from apps.billing import services as ledger
from apps.billing.models import UsageRecord
from tests.proxy.helpers import GOOD, chat, exact_mock, expected_cost, post, reservation_for


def test_it_refuses_a_prompt_beyond_the_context_window(gateway):
    model = gateway.world.model
    model.context_window = 50
    model.max_output_tokens = 40
    model.save()
    gateway.wait_config()
    response = post(gateway, {**GOOD, "messages": [{"role": "user", "content": "word " * 100}]})
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


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
    # The forty refused: 429 while the ten in flight still hold money (they might be cheaper than
    # reserved), 402 once they settled at their full cost (refusals.py: fits later / never fits).
    assert codes.count(200) == 10 and codes.count(402) + codes.count(429) == 40, codes
    refused = [r.json()["error"] for r in responses if r.status_code != 200]
    assert {e["code"] for e in refused} == {"insufficient_balance"}

    gateway.drain(expect=50)
    assert sum(UsageRecord.objects.values_list("sell_cost", flat=True)) == 10 * cost
    assert ledger.balance(wallet).available == cost // 2
    assert ledger.verify_ledger() == []


def test_spend_limits_refuse_with_402_naming_the_limit(gateway):
    exact_mock(gateway)
    cost = reservation_for(gateway)
    token = gateway.world.token
    token.limit_total = 3 * cost
    token.save()
    gateway.wait_config()
    assert [chat(gateway).status_code for _ in range(3)] == [200, 200, 200]
    refused = chat(gateway)  # nothing in flight: it can never fit (tests/proxy/test_refusals.py has the table)
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "limit_total"
    token.limit_total, token.limit_monthly = None, 4 * cost
    token.save()
    gateway.wait_config()
    assert chat(gateway).status_code == 200
    refused = chat(gateway)
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "limit_monthly"


def test_a_department_budget_caps_all_its_tokens(gateway):
    from apps.accounts.models import Department

    exact_mock(gateway)
    cost = reservation_for(gateway)
    department = Department.objects.create(company=gateway.world.company, slug="ml", name="ML", monthly_budget=2 * cost)
    token = gateway.world.token
    token.department = department
    token.save()
    gateway.wait_config()
    assert [chat(gateway).status_code for _ in range(3)] == [200, 200, 402]
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


def test_it_counts_tokens_itself_when_upstream_reports_no_usage(gateway, fake_openai):
    fake_openai.behavior(omit_usage=True)
    completion = gateway.client().chat.completions.create(**GOOD)
    assert completion.usage is None
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.usage_counted_locally and record.input_tokens > 0 and record.output_tokens > 0 and record.sell_cost > 0


def test_it_bills_cached_input_tokens_at_the_cached_price(gateway, fake_openai):
    from apps.providers.models import Price

    Price.objects.create(model=gateway.world.model, currency="USD", input_per_1m=150_000, output_per_1m=600_000,
                         cached_input_per_1m=75_000)
    gateway.wait_config()
    fake_openai.behavior(cached_tokens=6)
    completion = gateway.client().chat.completions.create(**GOOD)
    gateway.drain(expect=1)

    assert UsageRecord.objects.get().sell_cost == expected_cost(completion.usage.prompt_tokens, completion.usage.completion_tokens,
                                                                cached=6, price_cached=75_000)
    assert UsageRecord.objects.get().cached_tokens == 6


def test_a_charge_never_exceeds_the_reservation_even_if_upstream_overshoots(gateway, fake_openai):
    # The upstream ignores max_tokens (reports 500 output tokens for max_tokens=5): the company pays
    # at most what was reserved for 5 output tokens; the supplier is still owed the real cost.
    overshoot = {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "long " * 500}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 8, "completion_tokens": 500, "total_tokens": 508}}
    fake_openai.behavior(response_body=overshoot)
    completion = gateway.client().chat.completions.create(**GOOD, max_tokens=5)
    assert completion.usage.completion_tokens == 500
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    from lib import tokenizer

    reserved = expected_cost(tokenizer.count_chat_prompt(GOOD["messages"]), 5)
    assert record.sell_cost == reserved
    assert record.buy_cost == expected_cost(completion.usage.prompt_tokens, completion.usage.completion_tokens, coefficient="1.10")
