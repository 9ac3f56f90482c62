from __future__ import annotations

from celery import shared_task


@shared_task
def reconcile_spend_counters() -> int:
    """Compare the proxy's Redis counters with PostgreSQL; log what differs (see reconcile.py)."""
    from .reconcile import reconcile

    return len(reconcile())
