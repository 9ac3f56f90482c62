"""FX rates: integer micro-rubles per unit of a currency, versioned by ``valid_from``."""

from __future__ import annotations

import datetime as dt

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
    """Add an FX version unless the current rate is equal; ``dry_run`` validates only.

    ``rub_per_unit`` is integer micro-rubles per one unit of ``currency`` (92_500_000 = 92.50 RUB
    per USD); the ruble itself has no rate. Earlier versions are kept (usage records point at the
    rate they were priced with). Returns the ``lib.upsert.Outcome`` of the new or current rate.
    """
    if currency == Currency.RUB or currency not in Currency.values:
        raise ValidationError({"currency": _("FX rates exist for %(choices)s; the ruble is the base currency.")
                               % {"choices": ", ".join(c for c in Currency.values if c != Currency.RUB)}})
    if rub_per_unit <= 0:
        raise ValidationError({"rub_per_unit": _("The rate must be greater than zero.")})
    with transaction.atomic():
        if not dry_run:
            # Serialise writers of one currency (there may be no row to lock yet): both would
            # compare against the same current rate and add two versions.
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"jetstream:fx:{currency}"])
        current = FxRate.objects.filter(currency=currency, valid_from__lte=timezone.now()).order_by("-valid_from").first()
        if current is not None and current.rub_per_unit == rub_per_unit:
            return Outcome(current, UNCHANGED)
        rate = FxRate(currency=currency, rub_per_unit=rub_per_unit, valid_from=valid_from or timezone.now(), source=source)
        outcome = save_staged(rate, [], dry_run=dry_run)
        return outcome if current is None else Outcome(rate, UPDATED, ("rub_per_unit",))
