"""``manage.py jetstream_supplier_statement SUPPLIER --from DATE --to DATE [--format csv|xlsx] [-o FILE]``.

A supplier's statement (apps/billing/suppliers.py: opening balance, accruals by day, key and
model, withdrawals, closing balance) for the days ``[--from, --to)`` in TIME_ZONE, as CSV or
XLSX, for accounting. Writes to ``-o FILE`` or, for CSV, to standard output.
"""

from __future__ import annotations

import datetime as dt

from django.core.exceptions import ObjectDoesNotExist
from django.core.management.base import BaseCommand, CommandError
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.billing.models import Account
from apps.billing.suppliers import export_dataset, statement_dataset, supplier_statement


def _day(text: str) -> dt.datetime:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise CommandError(_("%(text)r is not a date like 2026-11-01") % {"text": text}) from None
    return timezone.make_aware(dt.datetime.combine(day, dt.time(0)))


class Command(BaseCommand):
    """Print or save a supplier's statement. Raises ``CommandError`` for an unknown supplier, a bad
    date or an empty period."""

    help = "A supplier's statement for a period (opening, accruals by day/key/model, withdrawals, closing) as CSV or XLSX."

    def add_arguments(self, parser) -> None:
        parser.add_argument("supplier", help="the supplier's slug")
        parser.add_argument("--from", dest="start", required=True, help="first day, YYYY-MM-DD (TIME_ZONE)")
        parser.add_argument("--to", dest="end", required=True, help="the day after the last, YYYY-MM-DD")
        parser.add_argument("--format", choices=["csv", "xlsx"], default="csv")
        parser.add_argument("-o", "--output", help="the file to write (required for xlsx)")

    def handle(self, *args, supplier: str, start: str, end: str, format: str, output: str | None, **options) -> None:
        supplier_model = Account._meta.get_field("supplier").related_model
        assert isinstance(supplier_model, type) and issubclass(supplier_model, models.Model)
        try:
            owner = supplier_model._default_manager.get(slug=supplier)
        except ObjectDoesNotExist:
            raise CommandError(_("There is no supplier %(slug)r.") % {"slug": supplier}) from None
        first, after = _day(start), _day(end)
        if first >= after:
            raise CommandError(_("--to must be after --from."))
        body = export_dataset(statement_dataset(supplier_statement(supplier=owner, start=first, end=after)), format)
        if output:
            with open(output, "wb") as fh:
                fh.write(body)
        elif format == "csv":
            self.stdout.write(body.decode(), ending="")
        else:
            raise CommandError(_("--format xlsx needs -o FILE."))
