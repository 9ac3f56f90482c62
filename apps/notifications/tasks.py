"""Notification tasks: thin, idempotent (see alerts.py for why running twice sends nothing twice)."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from . import alerts


@shared_task(name="apps.notifications.tasks.send_spend_alerts", ignore_result=True)
def send_spend_alerts() -> int:
    """Record newly reached spend alerts and send what is due (beat: every minute); returns how many went out."""
    now = timezone.now()
    alerts.scan(now)
    return alerts.deliver(now)
