"""Billing background tasks: thin wrappers around services, safe to run twice."""

from __future__ import annotations

from celery import shared_task
from celery.signals import beat_init

from apps.billing import services


@shared_task(name="apps.billing.tasks.void_expired_holds", ignore_result=True)
def void_expired_holds() -> int:
    """Release holds past their expiry — lapsed supplier withdrawals (apps/billing/withdrawals.py) —
    and return how many (beat runs this every 300 s; see CELERY_BEAT_SCHEDULE).

    Two overlapping runs are harmless: expire_holds skips holds another run has locked, and a
    hold expired once is no longer pending.
    """
    return services.expire_holds()


@shared_task(name="apps.billing.tasks.fetch_fx_rates", ignore_result=True)
def fetch_fx_rates() -> bool | None:
    """Fetch the FX document (``JETSTREAM_FX_SOURCE``) and add the rates that changed; return
    whether the document was accepted, or None when no source is configured
    (``apps.billing.fx_sources.update_fx_rates``; a refused document changes nothing and is
    recorded). Safe to run twice: the second run adds nothing."""
    from apps.billing.fx_sources import update_fx_rates

    run = update_fx_rates()
    return None if run is None else run.ok


@beat_init.connect
def _fetch_fx_rates_on_start(sender: object = None, **kwargs: object) -> None:
    """Beat sends ``fetch_fx_rates`` once as it starts, so a fresh install has rates before the first schedule slot."""
    fetch_fx_rates.delay()


# --- suppliers: payouts (apps/billing/payouts.py) -----------------------------------------------

@shared_task(name="apps.billing.tasks.pay_approved_withdrawals", ignore_result=True)
def pay_approved_withdrawals() -> int | None:
    """Pay every approved supplier withdrawal in a new payout batch; return the batch's id, or
    None when nothing was approved (beat runs it daily; see CELERY_BEAT_SCHEDULE). Running it
    twice pays nothing twice (see payouts.run_payouts)."""
    from apps.billing.payouts import run_payouts

    batch = run_payouts()
    return batch.pk if batch is not None else None
