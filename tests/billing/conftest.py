"""Ledger fixtures: one company with its wallet, one supplier with its payable, the platform accounts."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.fakes.feed_server import fake_feed, fake_feed_server  # noqa: F401 - fixtures (price and FX feeds)

RUB = 1_000_000  # micro-rubles


@dataclass
class Books:
    company: object
    supplier: object
    wallet: object
    payable: object
    revenue: object
    upstream_cost: object
    cash: object


@pytest.fixture
def books(db) -> Books:
    from apps.accounts.models import Company, Supplier
    from apps.billing import services
    from apps.billing.models import AccountKind

    company = Company.objects.create(slug="acme", name="Acme")
    supplier = Supplier.objects.create(slug="keys-r-us", name="Keys R Us")
    return Books(
        company=company,
        supplier=supplier,
        wallet=services.company_wallet(company),
        payable=services.supplier_payable(supplier),
        revenue=services.platform_account(AccountKind.PLATFORM_REVENUE),
        upstream_cost=services.platform_account(AccountKind.UPSTREAM_COST),
        cash=services.platform_account(AccountKind.PLATFORM_CASH),
    )
