"""Providers' background tasks: thin wrappers around services, safe to run twice."""

from __future__ import annotations

from celery import shared_task

from apps.providers import egress_health


@shared_task(name="apps.providers.tasks.check_egress_health", ignore_result=True)
def check_egress_health() -> dict[str, str]:
    """Probe every active egress proxy and record its health (``egress_health.check_egresses``);
    returns slug → "up" / "down". Beat runs this every ``JETSTREAM_EGRESS_CHECK_SECONDS``
    (CELERY_BEAT_SCHEDULE). Two overlapping runs only check twice."""
    return egress_health.check_egresses()
