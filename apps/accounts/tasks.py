"""Accounts' periodic work (Celery beat, jetstream/settings.py)."""

from __future__ import annotations

from celery import shared_task

from apps.accounts import services


@shared_task(name="apps.accounts.tasks.expire_invitations", ignore_result=True)
def expire_invitations() -> int:
    """Mark lapsed invitations expired; returns how many. Safe to run twice."""
    return services.expire_invitations()
