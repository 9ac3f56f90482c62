"""Money and numbers for people, in the active language: ``{% load cabinet_format %}``.

- ``{{ wallet_micro|rub }}`` → ``1 234,56 ₽`` (Russian) / ``₽1,234.56`` (English): integer
  micro-rubles (``lib/money.py``) rounded half up to 2 places; ``|rub:6`` keeps six, ``|rub:0`` none.
- ``{{ tokens|number }}`` → ``12 345 678`` / ``12,345,678``; ``|number:2`` two decimals (half up).
- ``{{ share|percent }}`` → ``12,5 %`` / ``12.5%`` from a ratio (0.125); ``|percent:0`` whole percents.
- ``{{ wait|minutes }}`` → ``15 минут`` / ``15 minutes`` from a ``timedelta`` (rounded up).

Separators come from Django's formats for the active language (Russian groups with a no-break space
and writes a decimal comma); a negative gets a true minus sign (−). ``None`` and "" print ``—``;
anything that is not a number is shown unchanged, never an error in the page.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from django import template
from django.utils.formats import get_format
from django.utils.translation import get_language, ngettext

from lib.money import format_rub

register = template.Library()

MINUS = "\u2212"
NBSP = "\u00a0"
DASH = "—"


def _separators() -> tuple[str, str]:
    """(decimal mark, thousands separator) of the active language."""
    return str(get_format("DECIMAL_SEPARATOR")), str(get_format("THOUSAND_SEPARATOR"))


def group_digits(text: str) -> str:
    """Plain decimal text (``"-1234567.5"``, as ``format_rub`` or ``str(Decimal)`` write it) with the
    active language's thousands separator and decimal mark and a true minus: ``"−1 234 567,5"``."""
    decimal_mark, thousands = _separators()
    negative = text.startswith("-")
    whole, _dot, fraction = text.lstrip("+-").partition(".")
    groups = []
    while len(whole) > 3:
        groups.insert(0, whole[-3:])
        whole = whole[:-3]
    groups.insert(0, whole)
    out = thousands.join(groups) + (decimal_mark + fraction if fraction else "")
    is_zero = not any(c in "123456789" for c in text)
    return (MINUS if negative and not is_zero else "") + out


def _is_russian() -> bool:
    return (get_language() or "ru").split("-")[0] == "ru"


@register.filter
def rub(micro: Any, places: Any = 2) -> str:
    """Integer micro-rubles → rubles with the sign ₽ (see the module docstring). ``places`` 0–6."""
    if micro is None or micro == "":
        return DASH
    try:
        amount, digits = int(micro), max(0, min(6, int(places)))
    except (TypeError, ValueError):
        return str(micro)
    text = group_digits(format_rub(amount, digits))
    if _is_russian():
        return f"{text}{NBSP}₽"
    return f"{MINUS}₽{text[1:]}" if text.startswith(MINUS) else f"₽{text}"


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


@register.filter
def number(value: Any, places: Any = None) -> str:
    """A count or amount with grouped thousands; ``places`` decimals (half up), else an integer as it
    is and any other number with 2."""
    if value is None or value == "":
        return DASH
    amount = _decimal(value)
    if amount is None:
        return str(value)
    if places is None:
        digits = 0 if isinstance(value, int) else 2
    else:
        try:
            digits = max(0, min(12, int(places)))
        except (TypeError, ValueError):
            digits = 0
    quantised = amount.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return group_digits(f"{quantised:f}")


@register.filter
def percent(ratio: Any, places: Any = 1) -> str:
    """A ratio as percent: 0.125 → ``12,5 %`` (Russian, a no-break space before %) / ``12.5%``."""
    if ratio is None or ratio == "":
        return DASH
    amount = _decimal(ratio)
    if amount is None:
        return str(ratio)
    text = number(amount * 100, places)
    return f"{text}{NBSP}%" if _is_russian() else f"{text}%"


@register.filter
def minutes(value: Any) -> str:
    """A ``timedelta`` as whole minutes, rounded up, in words: ``15 minutes`` (``15 минут``)."""
    if not isinstance(value, dt.timedelta):
        return DASH if value in (None, "") else str(value)
    count = max(0, math.ceil(value.total_seconds() / 60))
    return ngettext("%(n)s minute", "%(n)s minutes", count) % {"n": count}
