"""``manage.py invoicing_sample DIR``: write a sample invoice and act (PDF and HTML) with the
configured requisites and VAT, to check them before real documents are issued. Writes nothing to
the database and takes no number (the samples are numbered 0)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.invoicing import rendering
from apps.invoicing.amounts import vat_included
from apps.invoicing.exceptions import InvoicingError
from lib.money import MICRO

_SAMPLE_BUYER = SimpleNamespace(
    name="Romashka", time_zone="Europe/Moscow",
    requisites=SimpleNamespace(legal_name="ООО «Ромашка»", inn="7701234567", kpp="770101001",
                               address="125009, г. Москва, ул. Тверская, д. 7", contract="№ 17/2026 от 01.02.2026"),
)


class Command(BaseCommand):
    help = "Write a sample invoice and closing act (PDF and HTML) to DIR using the configured requisites and VAT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", type=Path)

    def handle(self, *args: Any, **options: Any) -> None:
        out: Path = options["directory"]
        out.mkdir(parents=True, exist_ok=True)
        vat_percent = settings.INVOICING["VAT_PERCENT"]
        invoice_amount, act_amount = 15_000 * MICRO + 500_000, 12_345 * MICRO + 674_321
        try:
            samples = {
                "invoice": rendering.invoice_details(
                    number=0, day=dt.date(2026, 11, 30), amount=invoice_amount, vat_percent=vat_percent,
                    vat=vat_included(invoice_amount, vat_percent), company=_SAMPLE_BUYER, top_up_request_id=0),
                "act": rendering.act_details(
                    number=0, day=dt.date(2026, 10, 31), amount=act_amount, vat_percent=vat_percent,
                    vat=vat_included(act_amount, vat_percent), company=_SAMPLE_BUYER,
                    period=(dt.date(2026, 10, 1), dt.date(2026, 10, 31))),
            }
        except InvoicingError as exc:
            raise CommandError(str(exc)) from None
        for name, details in samples.items():
            (out / f"sample-{name}.html").write_text(rendering.render_html(details), encoding="utf-8")
            pdf, _sha = rendering.render_pdf(details)
            (out / f"sample-{name}.pdf").write_bytes(pdf)
            self.stdout.write(f"{out / f'sample-{name}.pdf'}")
