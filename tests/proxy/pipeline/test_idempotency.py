"""Idempotency-Key: a replay costs nothing; a key whose request failed is free again."""

from __future__ import annotations

from apps.billing import services as ledger
from apps.billing.models import UsageRecord
from tests.proxy.helpers import chat


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
