"""Amounts as Russian documents print them: kopecks, figures, words, VAT.

Every function takes integer micro-rubles (lib/money.py) and rounds once, to whole kopecks, half
up (1.005 RUB → 1.01 RUB), the way the kopeck figures on a document are read back.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from num2words import CONVERTER_CLASSES, num2words

from apps.invoicing.models import KOPECK

_RUBLE_FORMS = ("рубль", "рубля", "рублей")
_KOPECK_FORMS = ("копейка", "копейки", "копеек")
_NBSP = "\u00a0"


def to_kopecks(micro: int) -> int:
    """Micro-rubles to whole kopecks, rounded half up (away from zero): 1_005_000 → 101."""
    sign = -1 if micro < 0 else 1
    whole, rest = divmod(abs(micro), KOPECK)
    return sign * (whole + (1 if rest * 2 >= KOPECK else 0))


def _plural(n: int, forms: tuple[str, str, str]) -> str:
    return CONVERTER_CLASSES["ru"].pluralize(n, forms)


def amount_in_words(micro: int) -> str:
    """The amount in words, as invoices and acts write it: rubles in words, kopecks in figures.

    ``1_010_000`` → "Один рубль 01 копейка"; ``21_000_000`` → "Двадцать один рубль 00 копеек";
    ``1_000_000_000_000`` → "Один миллион рублей 00 копеек". Raises ``ValueError`` for a negative amount.
    """
    if micro < 0:
        raise ValueError("a document amount is never negative")
    rubles, kopecks = divmod(to_kopecks(micro), 100)
    words = num2words(rubles, lang="ru")
    text = f"{words} {_plural(rubles, _RUBLE_FORMS)} {kopecks:02d} {_plural(kopecks, _KOPECK_FORMS)}"
    return text[0].upper() + text[1:]


def format_amount(micro: int) -> str:
    """Rubles and kopecks as Russian documents print figures: ``1 000 000,00`` (no-break spaces)."""
    sign = "-" if micro < 0 else ""
    rubles, kopecks = divmod(abs(to_kopecks(micro)), 100)
    return f"{sign}{rubles:,}".replace(",", _NBSP) + f",{kopecks:02d}"


def vat_included(micro: int, percent: Decimal) -> int:
    """The VAT contained in an amount that includes it, micro-RUB rounded to whole kopecks:
    ``amount × rate / (100 + rate)``. 122.00 RUB at 22 % → 22.00 RUB; 0 % → 0."""
    if percent <= 0:
        return 0
    kopecks = Decimal(to_kopecks(micro)) * percent / (Decimal(100) + percent)
    return int(kopecks.quantize(Decimal(1), rounding=ROUND_HALF_UP)) * KOPECK


def format_percent(percent: Decimal) -> str:
    """``Decimal('22.00')`` → "22", ``Decimal('10.50')`` → "10,5"."""
    text = format(percent.normalize(), "f")
    return text.replace(".", ",")
