"""Interim money and number filters for the supplier and operator cabinets, until the shared
``cabinet_format`` library lands: ``rub`` (micro-rubles → "1 234,56 ₽" in Russian, "1,234.56 ₽"
in English) and ``number`` (grouped digits)."""

from __future__ import annotations

from django import template
from django.utils.formats import number_format

from lib.money import format_rub

register = template.Library()


@register.filter
def rub(micro: int | None) -> str:
    """Integer micro-rubles as rubles with kopecks, grouped for the active locale; "—" for None."""
    if micro is None or micro == "":
        return "—"
    text = format_rub(int(micro), 2)
    whole, _, fraction = text.partition(".")
    sign = "-" if whole.startswith("-") else ""
    grouped = number_format(int(whole.lstrip("-")), use_l10n=True, force_grouping=True)
    decimal = number_format(0.5, 1, use_l10n=True)[1]  # the locale's decimal separator
    return f"{sign}{grouped}{decimal}{fraction}\u00a0₽"


@register.filter
def number(value: int | None) -> str:
    """An integer with the locale's digit grouping; "—" for None."""
    if value is None or value == "":
        return "—"
    return number_format(int(value), use_l10n=True, force_grouping=True)
