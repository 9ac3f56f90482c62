"""The proxy's Celery tasks: thin, idempotent, each calls one function."""

from __future__ import annotations

from celery import shared_task

from . import egress_health
from .reconcile import reconcile
from .rollover import roll_over


@shared_task(name="apps.proxy.tasks.reconcile_spend_counters", ignore_result=True)
def reconcile_spend_counters() -> int:
    """Compare the proxy's Redis counters with PostgreSQL, repair confirmed drift and alert on it;
    return how many counters disagreed (beat: every 600 s; see reconcile.py). Safe to run twice or
    concurrently: a repair subtracts a drift two measurements agree on, and a second run finds none."""
    return len(reconcile())


@shared_task(name="apps.proxy.tasks.reset_limits", ignore_result=True)
def reset_limits() -> int:
    """"Limit resets" (beat, every minute): open the current calendar windows' counters from the
    ledger, block tokens whose limit is reached, unblock those whose window rolled over or whose
    limit was raised (see rollover.py). Safe to run twice. Returns how many tokens it changed."""
    report = roll_over()
    return len(report.opened) + len(report.blocked) + len(report.unblocked)


# --- Egress proxies -------------------------------------------------------------------------------

@shared_task(name="apps.proxy.tasks.check_egress_health", ignore_result=True)
def check_egress_health() -> dict[str, str]:
    """Probe every active egress proxy and record its health (``egress_health.check_egresses``);
    returns slug → "up" / "down". Beat runs this every ``JETSTREAM_EGRESS_CHECK_SECONDS``
    (CELERY_BEAT_SCHEDULE). Two overlapping runs only check twice."""
    return egress_health.check_egresses()
