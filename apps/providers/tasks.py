"""Providers' background tasks: thin wrappers around services, safe to run twice."""

from __future__ import annotations

from celery import shared_task

from apps.providers import node_health


@shared_task(name="apps.providers.tasks.update_prices", ignore_result=True)
def update_prices() -> bool | None:
    """Apply the price document at ``JETSTREAM_PRICES_SOURCE`` (``apps.providers.catalogue.update_prices``):
    new versions only where a price changed; a refused document changes nothing and is recorded.
    Returns whether it was accepted, or None when no source is configured. Running twice adds nothing."""
    from apps.providers.catalogue import update_prices as apply_feed

    run = apply_feed()
    return None if run is None else run.ok


# --- Local nodes ---------------------------------------------------------------------------------

@shared_task(name="apps.providers.tasks.check_local_nodes", ignore_result=True)
def check_local_nodes() -> int:
    """Check every active local node's health URL and record its state, latency and last error
    (``node_health.check_nodes``); returns how many nodes are down. Beat runs this every
    ``JETSTREAM_NODE_HEALTH_SECONDS`` (CELERY_BEAT_SCHEDULE). Two overlapping runs only check twice."""
    return sum(1 for result in node_health.check_nodes() if not result.up)

