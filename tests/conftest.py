"""Shared personas: superadmin, manager of company A, manager of company B, supplier, outsider.

Everything runs against real PostgreSQL and Redis (DATABASE_URL / REDIS_URL, or the embedded
servers under .data/).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from django.utils import timezone

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
def force_login_passes_totp(monkeypatch):
    """``Client.force_login`` signs a user in as after both sign-in steps, password and TOTP (the
    admin and the cabinets need both): a confirmed TOTP device is attached to the session. A test
    of the TOTP step itself sets ``client.otp_verified = False`` first (see tests/cabinets/conftest.py)."""
    from django.test import Client

    original = Client.force_login

    def force_login(self, user, backend=None):
        original(self, user, backend)
        if getattr(self, "otp_verified", True):
            attach_verified_device(self, user)

    monkeypatch.setattr(Client, "force_login", force_login)


def attach_verified_device(client, user) -> None:
    """Mark ``client``'s session as having passed the TOTP step with a confirmed device of ``user``
    (created if none): django-otp keeps the device's persistent id under ``otp_device_id``."""
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.filter(user=user, confirmed=True).first() or TOTPDevice.objects.create(user=user, name="test", confirmed=True)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()


@pytest.fixture(autouse=True)
def fresh_ledger_account_ids():
    """Billing's per-process cache of ledger account ids must not outlive a rolled-back test database."""
    from apps.billing.usage_records import ledger_accounts

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


# --- admin: one of every model, with secrets that must never reach a page ----------------------

SUPPLIER_SECRET = "sk-live-SECRETVALUE-9876"
PROXY_PASSWORD = "PROXYPASS-4242"
PROXY_URL = f"socks5://egress-user:{PROXY_PASSWORD}@proxy.example.net:1080"


@dataclass
class Catalog:
    egress: object
    provider: object
    model: object
    price: object
    supplier_key: object
    token: object
    token_secret: str
    department: object
    wallet: object
    cash: object
    transfer: object
    fx_rate: object
    usage: object
    policy: object

    def secrets(self) -> list[str]:
        """Every string that must never appear in an admin page."""
        return [
            SUPPLIER_SECRET, "SECRETVALUE", PROXY_PASSWORD, PROXY_URL, self.token_secret, self.token.key_hash,
            self.supplier_key.secret_encrypted, self.egress.url_encrypted,
        ]


@pytest.fixture
def catalog(personas) -> Catalog:
    from apps.billing.models import Account, AccountKind, FxRate, Transfer, TransferKind, TransferStatus, UsageRecord, UsageStatus
    from apps.moderation.models import Policy, PolicyMode
    from apps.providers.models import EgressProxy, Model, Price, Provider, ProviderEgress, ProviderKind, SupplierKey
    from apps.proxy.models import ApiToken

    egress = EgressProxy(slug="nl-1", country="NL")
    egress.set_url(PROXY_URL)
    egress.save()
    provider = Provider.objects.create(slug="mock", name="Mock", kind=ProviderKind.MOCK)
    ProviderEgress.objects.create(provider=provider, egress=egress)
    model = Model.objects.create(name="mock-gpt", provider=provider, upstream_model="mock-gpt-1")
    price = Price.objects.create(model=model, currency="USD", input_per_1m=150_000, output_per_1m=600_000,
                                 cached_input_per_1m=75_000, valid_from=timezone.now() - dt.timedelta(days=1))
    key = SupplierKey(supplier=personas.supplier, provider=provider, name="primary")
    key.set_secret(SUPPLIER_SECRET)
    key.save()
    department = personas.company_a.departments.create(slug="research", name="Research", monthly_budget=5_000_000_000)
    token = ApiToken(company=personas.company_a, department=department, owner=personas.manager_a, name="ci",
                     limit_total=1_000_000_000)
    token_secret = token.set_secret()
    token.save()
    wallet = Account.objects.create(kind=AccountKind.COMPANY_WALLET, company=personas.company_a, debits_must_not_exceed_credits=True)
    cash = Account.objects.create(kind=AccountKind.PLATFORM_CASH)
    transfer = Transfer.objects.create(idempotency_id="topup-1", debit_account=cash, credit_account=wallet,
                                       amount=1_500_250_000, status=TransferStatus.POSTED, kind=TransferKind.TOP_UP)
    fx_rate = FxRate.objects.create(currency="USD", rub_per_unit=92_500_000, valid_from=timezone.now() - dt.timedelta(days=1))
    now = timezone.now()
    usage = UsageRecord.objects.create(
        request_id="req-0001", token=token, company=personas.company_a, department=department, endpoint="chat",
        model_name="mock-gpt", model=model, provider=provider, supplier_key=key, price=price, fx_rub_per_unit=92_500_000,
        input_tokens=1200, output_tokens=300, sell_cost=1_234_567, buy_cost=1_000_000, status=UsageStatus.OK,
        http_status=200, latency_ms=420, client_ip="198.51.100.7", started_at=now - dt.timedelta(seconds=1), finished_at=now)
    policy = Policy.objects.create(company=personas.company_a, mode=PolicyMode.ENFORCE)
    return Catalog(egress, provider, model, price, key, token, token_secret, department, wallet, cash, transfer, fx_rate,
                   usage, policy)


@pytest.fixture
def superadmin_client(client, personas):
    client.force_login(personas.superadmin)
    return client


def admin_urls(model, pk: int) -> dict[str, str]:
    """The admin's changelist, add, change and delete URLs for ``model`` (and row ``pk``)."""
    from django.urls import reverse

    prefix = f"admin:{model._meta.app_label}_{model._meta.model_name}"
    return {
        "changelist": reverse(f"{prefix}_changelist"),
        "add": reverse(f"{prefix}_add"),
        "change": reverse(f"{prefix}_change", args=[pk]),
        "delete": reverse(f"{prefix}_delete", args=[pk]),
    }
