"""Cache invalidation for the moderation policies (no business logic here): a saved or deleted policy or
moderation endpoint drops this process's cache at once and every process's on commit."""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_delete, post_save

from .models import ModerationEndpoint, Policy
from .policies import bump_policy_version, invalidate_local


def _invalidate(**kwargs) -> None:
    invalidate_local()
    transaction.on_commit(bump_policy_version)


def connect() -> None:
    """Connect the receivers (called from ModerationConfig.ready, once the models are loaded)."""
    for model in (Policy, ModerationEndpoint):
        post_save.connect(_invalidate, sender=model, dispatch_uid=f"js-moderation-{model.__name__}")
        post_delete.connect(_invalidate, sender=model, dispatch_uid=f"js-moderation-del-{model.__name__}")
