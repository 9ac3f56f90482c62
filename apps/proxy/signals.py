"""Cache invalidation for the proxy's snapshots (no business logic here).

Any saved or deleted row the hot path snapshots bumps the config version on commit; every
proxy worker polls it (snapshot.POLL_SECONDS) and reloads.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_delete, post_save

from .snapshot import bump_config_version


def _bump_on_commit(**kwargs) -> None:
    transaction.on_commit(bump_config_version)


def connect() -> None:
    from apps.accounts.models import Company, Department
    from apps.billing.models import FxRate
    from apps.providers.models import EgressProxy, Model, Price, Provider, SupplierKey

    from .models import ApiToken

    for model in (ApiToken, Company, Department, Model, Price, Provider, SupplierKey, EgressProxy, FxRate):
        post_save.connect(_bump_on_commit, sender=model, dispatch_uid=f"js-bump-{model.__name__}")
        post_delete.connect(_bump_on_commit, sender=model, dispatch_uid=f"js-bump-del-{model.__name__}")
