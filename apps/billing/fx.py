"""FX rates: integer micro-rubles per unit of a currency, versioned by ``valid_from``.

A rate is *fresh* while the date it was last stated for (its ``valid_from``, or later its
``confirmed_for`` when a source restates it unchanged) is no older than
``JETSTREAM_FX_MAX_AGE_HOURS``; the proxy refuses models priced in a currency whose rate is not
(``apps.proxy.snapshot``). Feeds: ``apps.billing.fx_sources``.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.billing.models import FxRate
from lib.money import Currency
from lib.upsert import UNCHANGED, UPDATED, Outcome, save_staged


def set_fx_rate(
    *,
    currency: str,
    rub_per_unit: int,
    valid_from: dt.datetime | None = None,
    source: str = "manual",
    dry_run: bool = False,
) -> Outcome:
    """Add an FX version unless the rate in force at ``valid_from`` (default now) is equal; ``dry_run`` validates only.

    ``rub_per_unit`` is integer micro-rubles per one unit of ``currency`` (92_500_000 = 92.50 RUB
    per USD); the ruble itself has no rate. Earlier versions are kept (usage records point at the
    rate they were priced with). An equal rate is not a new version; given with an explicit
    ``valid_from`` (a feed's date, a restatement) it moves the current one's ``confirmed_for``
    forward to it, so an unchanged rate does not go stale — re-applying a configuration file
    (no ``valid_from``) restates nothing. Returns the
    ``lib.upsert.Outcome`` of the new or current rate. Raises ``ValidationError`` for the ruble, an
    unknown currency, a rate ≤ 0, or a different rate already recorded from exactly ``valid_from``
    (versions are never edited).
    """
    if currency == Currency.RUB or currency not in Currency.values:
        raise ValidationError({"currency": _("FX rates exist for %(choices)s; the ruble is the base currency.")
                               % {"choices": ", ".join(c for c in Currency.values if c != Currency.RUB)}})
    if rub_per_unit <= 0:
        raise ValidationError({"rub_per_unit": _("The rate must be greater than zero.")})
    when = valid_from or timezone.now()
    with transaction.atomic():
        if not dry_run:
            # Serialise writers of one currency (there may be no row to lock yet): both would
            # compare against the same current rate and add two versions.
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"jetstream:fx:{currency}"])
        current = FxRate.objects.filter(currency=currency, valid_from__lte=when).order_by("-valid_from").first()
        if current is not None and current.rub_per_unit == rub_per_unit:
            if not dry_run and valid_from is not None and when > stated_for(current):
                # A save (not an update) so the proxy's snapshots reload now (apps/proxy/signals.py).
                current.confirmed_for = when
                current.save(update_fields=["confirmed_for"])
            return Outcome(current, UNCHANGED)
        if current is not None and current.valid_from == when:
            raise ValidationError({"valid_from": _("A different %(currency)s rate from %(when)s is already recorded; "
                                                   "rates are versions and are never edited.")
                                   % {"currency": currency, "when": when.isoformat()}})
        rate = FxRate(currency=currency, rub_per_unit=rub_per_unit, valid_from=when, source=source)
        outcome = save_staged(rate, [], dry_run=dry_run)
        return outcome if current is None else Outcome(rate, UPDATED, ("rub_per_unit",))


def stated_for(rate: FxRate) -> dt.datetime:
    """The latest moment ``rate`` was stated for: its ``valid_from`` or a later ``confirmed_for``."""
    if rate.confirmed_for is not None and rate.confirmed_for > rate.valid_from:
        return rate.confirmed_for
    return rate.valid_from


def is_stale(rate: FxRate, *, now: dt.datetime | None = None, max_age_hours: int | None = None) -> bool:
    """Whether ``rate`` was last stated for a moment more than ``max_age_hours`` (default
    ``settings.JETSTREAM_FX_MAX_AGE_HOURS``; 0 = rates never go stale) before ``now``."""
    hours = settings.JETSTREAM_FX_MAX_AGE_HOURS if max_age_hours is None else max_age_hours
    if hours <= 0:
        return False
    return (now or timezone.now()) - stated_for(rate) > dt.timedelta(hours=hours)
