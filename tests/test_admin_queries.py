"""Changelists cost the same number of queries however many rows they show (no N+1)."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

_seq = itertools.count()


def _more_rows(personas, catalog) -> None:
    """One more row of each listed model, each with its own related objects."""
    from apps.accounts.models import Company, Membership, Supplier
    from apps.billing.models import Account, AccountKind, Transfer, UsageRecord
    from apps.providers.models import Model, Price, SupplierKey
    from apps.proxy.models import ApiToken

    n = next(_seq)
    company = Company.objects.create(slug=f"extra-{n}", name=f"Extra {n}")
    department = company.departments.create(slug="d", name="D")
    supplier = Supplier.objects.create(slug=f"sup-{n}", name=f"Supplier {n}")
    Membership.objects.create(user=personas.outsider if n % 2 else personas.manager_b, company=company)
    model = Model.objects.create(name=f"m-{n}", provider=catalog.provider, upstream_model="u")
    Price.objects.create(model=model, input_per_1m=1, output_per_1m=1, cached_input_per_1m=1)
    key = SupplierKey(supplier=supplier, provider=catalog.provider, name=f"k-{n}")
    key.set_secret("sk-extra-secret-value")
    key.save()
    token = ApiToken(company=company, department=department, name="t")
    token.set_secret()
    token.save()
    wallet = Account.objects.create(kind=AccountKind.COMPANY_WALLET, company=company)
    budget = Account.objects.create(kind=AccountKind.DEPARTMENT_BUDGET, department=department)
    Account.objects.create(kind=AccountKind.SUPPLIER_PAYABLE, supplier=supplier)
    Transfer.objects.create(idempotency_id=f"extra-{n}", debit_account=wallet, credit_account=budget, amount=1,
                            status="posted")
    now = timezone.now()
    UsageRecord.objects.create(request_id=f"extra-{n}", token=token, company=company, department=department,
                               model=model, provider=catalog.provider, supplier_key=key, status="ok", http_status=200,
                               started_at=now - dt.timedelta(seconds=1), finished_at=now)


@pytest.mark.parametrize("url_name", [
    "billing_usagerecord_changelist", "billing_transfer_changelist", "billing_account_changelist",
    "proxy_apitoken_changelist", "providers_supplierkey_changelist", "providers_price_changelist",
    "providers_model_changelist", "accounts_membership_changelist", "accounts_department_changelist",
    "accounts_company_changelist", "moderation_policy_changelist",
])
def test_it_lists_without_n_plus_one(superadmin_client, personas, catalog, url_name):
    url = reverse(f"admin:{url_name}")
    _more_rows(personas, catalog)
    superadmin_client.get(url)  # warm the session and content types
    with CaptureQueriesContext(connection) as few:
        assert superadmin_client.get(url).status_code == 200
    for _ in range(3):
        _more_rows(personas, catalog)
    with CaptureQueriesContext(connection) as many:
        assert superadmin_client.get(url).status_code == 200
    assert len(many) == len(few), "\n".join(q["sql"] for q in many.captured_queries)
