"""The proxy's Celery tasks: thin, idempotent, each calls one function."""

from __future__ import annotations

from celery import shared_task

from .reconcile import reconcile


@shared_task(name="apps.proxy.tasks.reconcile_spend_counters", ignore_result=True)
def reconcile_spend_counters() -> int:
    """Compare the proxy's Redis counters with PostgreSQL, repair confirmed drift and alert on it;
    return how many counters disagreed (beat: every 600 s; see reconcile.py). Safe to run twice or
    concurrently: a repair subtracts a drift two measurements agree on, and a second run finds none."""
    return len(reconcile())
