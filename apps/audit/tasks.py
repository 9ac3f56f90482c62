"""Audit background task: seal what a worker left pending (thin, safe to run twice)."""

from __future__ import annotations

from celery import shared_task

from apps.audit import services


@shared_task(name="apps.audit.tasks.seal_audit_trail", ignore_result=True)
def seal_audit_trail() -> int:
    """Chain the committed events still pending — normally sealed when their transaction commits;
    these are a process's that died in between — and return how many (beat: every 60 s)."""
    return services.seal_pending()
