"""Interim money and number filters for the company pages (``rub``, ``number``), with the same
names and arguments as ``cabinet_format``'s, until that library lands; then the templates load it
instead and this module goes."""

from __future__ import annotations

from typing import Any

from django import template

from lib.money import format_rub

register = template.Library()


@register.filter
def rub(micro: Any, places: Any = 2) -> str:
    """Integer micro-rubles → ``1234.56 ₽`` (``—`` for None)."""
    if micro is None or micro == "":
        return "—"
    try:
        return f"{format_rub(int(micro), max(0, min(6, int(places))))}\u00a0₽"
    except (TypeError, ValueError):
        return str(micro)


@register.filter
def number(value: Any, places: Any = None) -> str:
    """A count as digits (``—`` for None)."""
    return "—" if value is None or value == "" else str(value)
