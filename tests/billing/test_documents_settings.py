"""The platform's requisites and VAT (JETSTREAM_SELLER_*, JETSTREAM_VAT_PERCENT): malformed values stop
the process naming the variable; the sample command renders both documents with them."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from pypdf import PdfReader

from tests.test_settings import _check, _production_env

GOOD = {"JETSTREAM_SELLER_NAME": "ООО «Тест»", "JETSTREAM_SELLER_INN": "7712345678", "JETSTREAM_SELLER_KPP": "771201001",
        "JETSTREAM_SELLER_BIK": "044525225", "JETSTREAM_SELLER_CORR_ACCOUNT": "30101810400000000225",
        "JETSTREAM_SELLER_ACCOUNT": "40702810938000000001", "JETSTREAM_VAT_PERCENT": "20"}


def test_it_starts_with_good_requisites_and_without_any():
    assert _check(_production_env(**GOOD)).returncode == 0
    # Unset requisites do not stop the server; issuing a document is what is refused then.
    assert _check(_production_env()).returncode == 0


@pytest.mark.parametrize(("name", "value"), [
    ("JETSTREAM_VAT_PERCENT", "abc"), ("JETSTREAM_VAT_PERCENT", "100"), ("JETSTREAM_VAT_PERCENT", "-1"),
    ("JETSTREAM_VAT_PERCENT", "22.005"), ("JETSTREAM_SELLER_INN", "77123456789"), ("JETSTREAM_SELLER_BIK", "04452522X"),
    ("JETSTREAM_SELLER_ACCOUNT", "4070281093800000000"),
])
def test_it_refuses_malformed_values_naming_the_variable(name, value):
    result = _check(_production_env(**{**GOOD, name: value}))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and name in result.stderr


def test_the_sample_command_writes_both_documents(tmp_path, settings):
    from decimal import Decimal

    settings.INVOICING = {**settings.INVOICING, "VAT_PERCENT": Decimal("10.50")}
    call_command("invoicing_sample", str(tmp_path))
    invoice = " ".join(PdfReader(tmp_path / "sample-invoice.pdf").pages[0].extract_text().split())
    act = " ".join(PdfReader(tmp_path / "sample-act.pdf").pages[0].extract_text().split())
    assert "Счёт на оплату № 0" in invoice and "В т.ч. НДС (10,5%)" in invoice
    assert "Акт № 0 от 31 октября 2026 г." in act and "Двенадцать тысяч триста сорок пять рублей 67 копеек" in act
    assert (tmp_path / "sample-invoice.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
