"""Shared set-up for the supplier and operator cabinet tests: a provider and models, keys of the
persona supplier and of a second supplier, accruals posted at chosen times, payout details."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from apps.billing.usage_records import ledger_accounts

RUB = 1_000_000
BANK = {"recipient": "ООО «Северные ключи»", "inn": "7707083893", "kpp": "773601001", "bank_name": "ПАО Сбербанк",
        "bik": "044525225", "account_number": "40702810938000000001", "correspondent_account": "30101810400000000225"}
SECRET = "sk-live-ABCDEFGH-1234"


@dataclass
class SupplierWorld:
    personas: object
    provider: object
    model: object
    key: object
    other_supplier: object
    other_key: object
    other_user: object
    accruals: list = field(default_factory=list)

    def accrue(self, amount: int, *, key=None, age: dt.timedelta = dt.timedelta(days=30), status: str = "ok") -> object:
        """A served request through ``key`` (default the persona supplier's) and its buy-cost accrual
        posted ``age`` ago (the ledger stamps now(); the row is written directly to have a past)."""
        from apps.billing import services
        from apps.billing.models import AccountKind, Transfer, UsageRecord

        key = key or self.key
        at = timezone.now() - age
        request_id = f"req_{len(self.accruals)}_{key.pk}"
        UsageRecord.objects.create(request_id=request_id, supplier_key=key, model=self.model, model_name=self.model.name,
                                   provider=key.provider, buy_cost=amount, status=status, http_status=200 if status == "ok" else 502,
                                   started_at=at, finished_at=at)
        if amount == 0:  # a failed request accrues nothing
            return None
        payable = services.supplier_payable(key.supplier)
        cost = services.platform_account(AccountKind.UPSTREAM_COST)
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO billing_transfer (idempotency_id, debit_account_id, credit_account_id, amount, status, kind,"
                " description, metadata, created_at) VALUES (%s, %s, %s, %s, 'posted', 'usage_cost', '', %s::jsonb, %s)"
                " RETURNING id",
                [f"usage:{request_id}:buy", cost.pk, payable.pk, amount, f'{{"request_id": "{request_id}"}}', at])
            pk = cursor.fetchone()[0]
        self.accruals.append(pk)
        return Transfer.objects.get(pk=pk)


def build_world(personas, django_user_model) -> SupplierWorld:
    from apps.accounts.models import Supplier, SupplierMembership, SupplierRole
    from apps.billing.models import SupplierPayoutDetails
    from apps.providers.models import Model, Provider, SupplierKey

    ledger_accounts.clear()
    provider = Provider.objects.create(slug="openai-main", name="OpenAI", kind="openai", base_url="https://api.openai.com/v1")
    model = Model.objects.create(name="gpt-4o-mini", provider=provider, upstream_model="gpt-4o-mini")
    key = SupplierKey(supplier=personas.supplier, provider=provider, name="north-1", buy_coefficient=Decimal("1.0"))
    key.set_secret(SECRET)
    key.save()
    other = Supplier.objects.create(slug="south-keys", name="South Keys LLC")
    other_key = SupplierKey(supplier=other, provider=provider, name="south-1")
    other_key.set_secret("sk-live-SOUTHKEY-9999")
    other_key.save()
    other_user = django_user_model.objects.create_user("south@example.com", "x-password-x")
    SupplierMembership.objects.create(user=other_user, supplier=other, role=SupplierRole.OWNER)
    SupplierPayoutDetails.objects.create(supplier=personas.supplier, **BANK)
    SupplierPayoutDetails.objects.create(supplier=other, recipient="ИП Южный", card_reference="card-ref-0042")
    return SupplierWorld(personas, provider, model, key, other, other_key, other_user)


def just_signed_in(client):
    """``client`` as right after sign-in: its session records a fresh password check, so actions
    behind ``recent_auth_required`` go through."""
    import time

    from apps.cabinets.access import AUTHENTICATED_AT_SESSION_KEY

    session = client.session
    session[AUTHENTICATED_AT_SESSION_KEY] = int(time.time())
    session.save()
    return client


def long_signed_in(client):
    """``client`` whose last password or TOTP check is older than the re-authentication window."""
    import time

    from django.conf import settings

    from apps.cabinets.access import AUTHENTICATED_AT_SESSION_KEY

    session = client.session
    session[AUTHENTICATED_AT_SESSION_KEY] = int(time.time()) - settings.JETSTREAM_REAUTH_MINUTES * 60 - 60
    session.save()
    return client
