"""Invoices and acts as HTML (print CSS) and PDF.

A document's ``details`` (a JSON-able dict built by ``invoice_details``/``act_details``) holds
everything it shows; the templates ``invoicing/invoice.html`` and ``invoicing/act.html`` lay it
out and WeasyPrint (https://doc.courtbouillon.org/weasyprint/) renders the HTML to PDF with the
DejaVu fonts (Cyrillic). WeasyPrint needs Pango ≥ 1.44 from the system (``make install`` checks).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.template.loader import render_to_string
from django.utils.translation import gettext as _

from apps.invoicing.amounts import amount_in_words, format_amount, format_percent
from apps.invoicing.exceptions import RequisitesMissing

MONTHS_GENITIVE = ("января", "февраля", "марта", "апреля", "мая", "июня", "июля", "августа", "сентября", "октября",
                   "ноября", "декабря")
MONTHS_NOMINATIVE = ("январь", "февраль", "март", "апрель", "май", "июнь", "июль", "август", "сентябрь", "октябрь",
                     "ноябрь", "декабрь")
SERVICE_NAME = "Услуги доступа к LLM API"
# Required on every document; director and accountant may stay blank (signed by hand).
_REQUIRED_SELLER_FIELDS = ("name", "inn", "bank", "bik", "corr_account", "account")


def date_text(day: dt.date) -> str:
    """``2026-11-29`` → "29 ноября 2026 г."."""
    return f"{day.day} {MONTHS_GENITIVE[day.month - 1]} {day.year} г."


def seller_requisites() -> dict[str, str]:
    """The platform's requisites from settings (``INVOICING["SELLER"]``); raises ``RequisitesMissing``
    naming the environment variables still unset."""
    seller = dict(settings.INVOICING["SELLER"])
    missing = [f"JETSTREAM_SELLER_{key.upper()}" for key in _REQUIRED_SELLER_FIELDS if not seller.get(key)]
    if missing:
        raise RequisitesMissing(_("The platform's requisites are not configured; set %(names)s.") % {"names": ", ".join(missing)})
    return seller


def buyer_requisites(company: Any) -> dict[str, str]:
    """The company as documents name it: its ``CompanyRequisites`` or, without them, just its name."""
    requisites = getattr(company, "requisites", None)
    if requisites is None:
        return {"name": company.name, "inn": "", "kpp": "", "address": "", "contract": ""}
    return {"name": requisites.legal_name, "inn": requisites.inn, "kpp": requisites.kpp, "address": requisites.address,
            "contract": requisites.contract}


def _service_line(buyer: dict[str, str]) -> tuple[str, str]:
    """(line name, basis): «Услуги доступа к LLM API по договору № …» and «Договор № …»."""
    contract = buyer.get("contract", "")
    if contract:
        return f"{SERVICE_NAME} по договору {contract}", f"Договор {contract}"
    return f"{SERVICE_NAME} по договору-оферте", "Договор-оферта"


def _common(*, kind: str, number: int, day: dt.date, amount: int, vat_percent: Decimal, vat: int, company: Any,
            line_name: str | None = None) -> dict[str, Any]:
    seller, buyer = seller_requisites(), buyer_requisites(company)
    name, basis = _service_line(buyer)
    total_text = format_amount(amount)
    return {
        "kind": kind, "number": number, "date": day.isoformat(), "date_text": date_text(day),
        "seller": seller, "buyer": buyer, "basis": basis,
        "lines": [{"name": line_name or name, "quantity": "1", "unit": "усл.", "price_text": total_text,
                   "amount_text": total_text, "amount": amount}],
        "total": amount, "total_text": total_text, "total_words": amount_in_words(amount),
        "vat_percent": str(vat_percent), "vat_percent_text": format_percent(vat_percent) if vat_percent > 0 else "",
        "vat": vat, "vat_text": format_amount(vat),
    }


def invoice_details(*, number: int, day: dt.date, amount: int, vat_percent: Decimal, vat: int, company: Any,
                    top_up_request_id: int) -> dict[str, Any]:
    """What an invoice for a top-up shows (amounts micro-RUB, texts ready to print)."""
    details = _common(kind="invoice", number=number, day=day, amount=amount, vat_percent=vat_percent, vat=vat, company=company)
    details["top_up_request"] = top_up_request_id
    return details


def act_details(*, number: int, day: dt.date, amount: int, vat_percent: Decimal, vat: int, company: Any,
                period: tuple[dt.date, dt.date]) -> dict[str, Any]:
    """What a month's closing act shows; ``period`` is (first day, last day) of the month."""
    first, last = period
    name, _basis = _service_line(buyer_requisites(company))
    line = f"{name} за {MONTHS_NOMINATIVE[first.month - 1]} {first.year} г."
    details = _common(kind="act", number=number, day=day, amount=amount, vat_percent=vat_percent, vat=vat, company=company,
                      line_name=line)
    details.update({"period_from": first.isoformat(), "period_to": last.isoformat(), "period_from_text": date_text(first),
                    "period_to_text": date_text(last), "time_zone": company.time_zone})
    return details


def render_html(details: dict[str, Any]) -> str:
    """The document's HTML (the PDF's source), from its ``details``."""
    template = "invoicing/act.html" if details["kind"] == "act" else "invoicing/invoice.html"
    return render_to_string(template, {"d": details, "footer": "Документ сформирован в Jetstream."})


def render_pdf(details: dict[str, Any]) -> tuple[bytes, str]:
    """(PDF bytes, their SHA-256 hex) for the document's ``details``."""
    from weasyprint import HTML  # imported here: it loads Pango, which only document rendering needs

    pdf = HTML(string=render_html(details)).write_pdf()
    assert pdf is not None  # write_pdf without a target returns the bytes
    return pdf, hashlib.sha256(pdf).hexdigest()
