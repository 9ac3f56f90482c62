"""Shared personas: superadmin, manager of company A, manager of company B, supplier, outsider.

Everything runs against real PostgreSQL and Redis (DATABASE_URL / REDIS_URL, or the embedded
servers under .data/).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

PASSWORD = "correct-horse-battery-staple"


@dataclass
class Personas:
    superadmin: object
    company_a: object
    company_b: object
    manager_a: object
    manager_b: object
    supplier: object
    supplier_user: object
    outsider: object


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # PBKDF2 at production strength dominates the suite's run time; tests need no real hashing cost.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def fresh_ledger_account_ids():
    """Billing's per-process cache of ledger account ids must not outlive a rolled-back test database."""
    from apps.billing.usage import ledger_accounts

    ledger_accounts.clear()
    yield
    ledger_accounts.clear()


@pytest.fixture
def personas(db, django_user_model) -> Personas:
    from apps.accounts.models import Company, CompanyRole, Membership, Supplier, SupplierMembership, SupplierRole

    superadmin = django_user_model.objects.create_superuser("root@example.com", PASSWORD)
    company_a = Company.objects.create(slug="company-a", name="Company A")
    company_b = Company.objects.create(slug="company-b", name="Company B")
    manager_a = django_user_model.objects.create_user("manager-a@example.com", PASSWORD)
    manager_b = django_user_model.objects.create_user("manager-b@example.com", PASSWORD)
    Membership.objects.create(user=manager_a, company=company_a, role=CompanyRole.MANAGER)
    Membership.objects.create(user=manager_b, company=company_b, role=CompanyRole.MANAGER)
    supplier = Supplier.objects.create(slug="north-keys", name="North Keys LLC")
    supplier_user = django_user_model.objects.create_user("supplier@example.com", PASSWORD)
    SupplierMembership.objects.create(user=supplier_user, supplier=supplier, role=SupplierRole.OWNER)
    outsider = django_user_model.objects.create_user("outsider@example.com", PASSWORD)
    return Personas(superadmin, company_a, company_b, manager_a, manager_b, supplier, supplier_user, outsider)


@pytest.fixture
def redis_client():
    """A real Redis connection on a private key prefix, cleaned after the test."""
    import uuid

    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    prefix = f"test:{uuid.uuid4().hex}:"
    client.test_prefix = prefix  # type: ignore[attr-defined]
    yield client
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()
