"""The proxy's Celery tasks: thin, idempotent, each calls one function."""

from __future__ import annotations

from celery import shared_task

from .reconcile import reconcile


@shared_task
def reconcile_spend_counters() -> int:
    """Compare the proxy's Redis counters with PostgreSQL; log what differs (see reconcile.py)."""
    return len(reconcile())
