"""Cache invalidation for the proxy's snapshots (no business logic here).

Any saved or deleted row the hot path snapshots bumps the config version on commit; every
proxy worker polls it (snapshot.POLL_SECONDS) and reloads.
"""

from __future__ import annotations

import logging

import redis
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from apps.accounts.models import Company, CompanyModelCoefficient, Department
from apps.billing.models import AccountKind, FxRate, Transfer
from apps.moderation.models import Policy
from apps.providers.models import EgressProxy, LocalNode, Model, Price, Provider, ProviderEgress, SupplierKey

from .metering import sync_company_funds
from .models import ApiToken
from .snapshot import bump_config_version

logger = logging.getLogger(__name__)


def _bump_on_commit(**kwargs) -> None:
    transaction.on_commit(bump_config_version)


def _sync_wallet_on_commit(sender, instance, created: bool, **kwargs) -> None:
    """A transfer made through the ledger services that touches a company wallet (a top-up, a
    correction) reaches every proxy's balance at once instead of on the writer's next sync."""
    companies = {account.company_id for account in (instance.debit_account, instance.credit_account)
                 if account.kind == AccountKind.COMPANY_WALLET}
    if companies:
        transaction.on_commit(lambda: _safe_sync(sorted(companies)))


def _safe_sync(company_ids: list[int]) -> None:
    try:
        sync_company_funds(company_ids)
    except redis.RedisError:
        logger.warning("could not push wallet change to Redis; the meter writer syncs within 5 s")


def connect() -> None:
    """Connect the receivers (called from ProxyConfig.ready, once the models are loaded)."""
    post_save.connect(_sync_wallet_on_commit, sender=Transfer, dispatch_uid="js-wallet-sync")
    for model in (ApiToken, Company, CompanyModelCoefficient, Department, Model, Price, Provider, SupplierKey, EgressProxy,
                  ProviderEgress, FxRate, LocalNode, Policy):
        post_save.connect(_bump_on_commit, sender=model, dispatch_uid=f"js-bump-{model.__name__}")
        post_delete.connect(_bump_on_commit, sender=model, dispatch_uid=f"js-bump-del-{model.__name__}")
