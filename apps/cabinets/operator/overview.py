"""What the operator cabinet reads, composed from the apps' services (no writes here): companies
and suppliers with their balances, the platform's month so far. Amounts are micro-rubles."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.utils import timezone

from apps.accounts.models import Company, Supplier
from apps.billing.reports import Margin, platform_margin, spend_by
from apps.billing.suppliers import SupplierBalance, month_start, supplier_balances
from apps.billing.wallets import wallet_sums


@dataclass(frozen=True)
class CompanyRow:
    """A company with its wallet ``balance`` (posted credits − posted debits; None: no wallet yet),
    ``credit_limit_left`` (credit limit − held amounts) and ``month_spend`` (sell cost this month)."""

    company: Company
    balance: int | None
    credit_limit_left: int | None
    month_spend: int


@dataclass(frozen=True)
class SupplierRow:
    """A supplier with its ``SupplierBalance`` (zeros when it has earned nothing)."""

    supplier: Supplier
    balance: SupplierBalance


def company_rows(*, now: dt.datetime | None = None) -> list[CompanyRow]:
    """Every company by name, with its wallet and this month's spend. Three queries."""
    now = now or timezone.now()
    sums = wallet_sums(None)
    spend = {row.key: row.sell_cost for row in spend_by("company", month_start(now), now)}
    rows = []
    for company in Company.objects.order_by("name"):
        wallet = sums.get(company.pk)
        rows.append(CompanyRow(company, None if wallet is None else wallet.posted_credits - wallet.posted_debits,
                               None if wallet is None else wallet.limit_less_holds, spend.get(str(company.pk), 0)))
    return rows


def supplier_rows(*, now: dt.datetime | None = None) -> list[SupplierRow]:
    """Every supplier by name with its balance. Two queries."""
    balances = supplier_balances(None, now=now)
    zero = SupplierBalance(0, 0, 0, 0, 0)
    return [SupplierRow(supplier, balances.get(supplier.pk, zero)) for supplier in Supplier.objects.order_by("name")]


def month_margin(*, now: dt.datetime | None = None) -> Margin:
    """The platform's turnover and margin this calendar month (TIME_ZONE) so far."""
    now = now or timezone.now()
    return platform_margin(month_start(now), now)
