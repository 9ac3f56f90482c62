"""A local node's usage: its attempts keep the node's id, its record names the node, and its buy
cost accrues to the node's supplier or, for the platform's own node, to the platform hardware account."""

from __future__ import annotations

import time

from apps.billing.usage import UsageEvent, _fits


def event(**fields) -> UsageEvent:
    return UsageEvent(request_id=fields.pop("request_id", "req_n1"), endpoint="chat", status="ok", http_status=200,
                      started_at=time.time(), finished_at=time.time(), **fields)


def test_a_node_attempt_keeps_its_node_and_an_odd_one_is_made_writable():
    attempts = [{"key": None, "node": 4, "status": 502, "code": "upstream_unreachable", "ms": 3},
                {"key": None, "node": 5, "status": 200, "code": "", "ms": 40}]
    assert _fits(event(attempts=attempts))
    assert UsageEvent.decode(event(attempts=attempts).encode()).attempts == attempts
    odd = [{"key": None, "node": "4", "status": 200, "code": "", "ms": 1}, {"key": None, "node": 0, "status": 1, "code": "", "ms": 1}]
    assert UsageEvent.decode(event(attempts=odd).encode()).attempts == [
        {"key": None, "status": 200, "code": "", "ms": 1}, {"key": None, "status": 1, "code": "", "ms": 1}]


def test_buy_costs_accrue_to_the_nodes_supplier_or_to_platform_hardware(db, catalog):
    from apps.billing import services as ledger
    from apps.billing.models import Account, AccountKind, Transfer, UsageRecord
    from apps.billing.usage_records import record_usage_batch
    from apps.providers.models import LocalNode, Provider

    provider = Provider.objects.create(slug="local", kind="openai_compatible", base_url="http://127.0.0.1:9/v1", internal=True)
    supplier = catalog.supplier_key.supplier
    owned = LocalNode.objects.create(provider=provider, name="owned", base_url="http://127.0.0.1:9/v1", internal=True, supplier=supplier)
    own = LocalNode.objects.create(provider=provider, name="own", base_url="http://127.0.0.1:9/v1", internal=True)
    outcome = record_usage_batch(events=[
        event(request_id="req_a", node_id=owned.pk, supplier_id=supplier.pk, provider_id=provider.pk, buy_cost=1_234),
        event(request_id="req_b", node_id=own.pk, provider_id=provider.pk, buy_cost=567),
        event(request_id="req_c", provider_id=provider.pk, buy_cost=89),  # neither key nor node (the mock): nothing accrues
    ])
    assert outcome.written == ("req_a", "req_b", "req_c") and not outcome.charges_refused
    assert UsageRecord.objects.get(request_id="req_a").node == owned
    payable = ledger.supplier_payable(supplier)
    hardware = Account.objects.get(kind=AccountKind.PLATFORM_HARDWARE)
    assert Transfer.objects.get(idempotency_id="usage:req_a:buy").credit_account_id == payable.pk
    assert (Transfer.objects.get(idempotency_id="usage:req_b:buy").credit_account_id, hardware.posted_credits) == (hardware.pk, 567)
    assert not Transfer.objects.filter(idempotency_id="usage:req_c:buy").exists()
    record_usage_batch(events=[event(request_id="req_b", node_id=own.pk, provider_id=provider.pk, buy_cost=567)])
    hardware.refresh_from_db()
    assert hardware.posted_credits == 567  # idempotent by request id
