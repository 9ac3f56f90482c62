"""Invoicing background tasks: thin wrappers around services, safe to run twice."""

from __future__ import annotations

from celery import shared_task

from apps.invoicing import services


@shared_task(name="apps.invoicing.tasks.generate_monthly_acts", ignore_result=True)
def generate_monthly_acts() -> int:
    """Issue closing acts for the month just ended in each company's time zone; return how many
    were issued now (beat runs this hourly, see CELERY_BEAT_SCHEDULE; an act already issued is left
    as it is, so the first run after a month ends issues it and later runs do nothing)."""
    return len(services.issue_acts_for_previous_month())
