"""Money is integer micro-rubles (1 RUB = 1_000_000). Decimal only at the edges (input, display).

Prices are stored as integer micro-units of their currency per 1M tokens, FX rates as integer
micro-rubles per currency unit, coefficients as Decimal with 4 places (exact, never float).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.db import models
from django.utils.translation import gettext_lazy as _

MICRO = 1_000_000
COEF_SCALE = 10_000  # coefficients carry 4 decimal places


class Currency(models.TextChoices):
    """The currencies prices are given in (ISO 4217 codes); the ledger counts rubles only."""

    RUB = "RUB", _("Russian ruble")
    USD = "USD", _("US dollar")
    EUR = "EUR", _("Euro")
    CNY = "CNY", _("Chinese yuan")


class MoneyFormatError(ValueError):
    """An amount or coefficient in a form money may not take (a float, too many decimals, NaN, out of range)."""
    pass


def to_micro(value: str | int | Decimal, *, field: str = "amount", allow_zero: bool = True, allow_negative: bool = False) -> int:
    """'1000.00' → 1_000_000_000. Refuses floats, more than 6 decimals, NaN/inf."""
    if isinstance(value, float) or isinstance(value, bool):
        raise MoneyFormatError(f"{field}: give amounts as strings or integers, not floats ({value!r})")
    try:
        dec = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise MoneyFormatError(f"{field}: {value!r} is not a number") from None
    if not dec.is_finite():
        raise MoneyFormatError(f"{field}: {value!r} is not a finite number")
    scaled = dec * MICRO
    if scaled != scaled.to_integral_value():
        raise MoneyFormatError(f"{field}: {value!r} has more than 6 decimal places")
    micro = int(scaled)
    if micro < 0 and not allow_negative:
        raise MoneyFormatError(f"{field}: {value!r} must not be negative")
    if micro == 0 and not allow_zero:
        raise MoneyFormatError(f"{field}: {value!r} must be greater than zero")
    return micro


def to_coefficient(value: str | int | Decimal, *, field: str = "coefficient") -> Decimal:
    """'1.25' → Decimal('1.2500'): a positive coefficient below 10_000 with at most 4 decimals.
    Raises ``MoneyFormatError`` for a float (or bool), a non-number, or a value out of that range."""
    if isinstance(value, float) or isinstance(value, bool):
        raise MoneyFormatError(f"{field}: give coefficients as strings, not floats ({value!r})")
    try:
        dec = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise MoneyFormatError(f"{field}: {value!r} is not a number") from None
    if not dec.is_finite() or dec <= 0:
        raise MoneyFormatError(f"{field}: {value!r} must be a positive number")
    if dec != dec.quantize(Decimal("0.0001")):
        raise MoneyFormatError(f"{field}: {value!r} has more than 4 decimal places")
    if dec >= 10_000:
        raise MoneyFormatError(f"{field}: {value!r} is too large")
    return dec.quantize(Decimal("0.0001"))


def coefficient_units(coef: Decimal) -> int:
    """A coefficient as integer ten-thousandths: Decimal('1.25') → 12_500 (``cost_from_units`` takes these)."""
    return int(coef * COEF_SCALE)


_COST_DENOMINATOR = MICRO * MICRO * COEF_SCALE


def cost_from_units(token_price_sum: int, fx_micro: int, coef_units: int) -> int:
    """Exact cost in micro-rubles, rounded up once per request (integers only: the hot path).

    ``token_price_sum`` = Σ tokens × price (micro-currency per 1M tokens);
    cost = sum / 1e6 [micro-currency] × fx / 1e6 [RUB per unit] × coef → micro-RUB.
    """
    return -(-(token_price_sum * fx_micro * coef_units) // _COST_DENOMINATOR)


def cost_micro(*, tokens_by_price: list[tuple[int, int]], fx_micro: int, coefficient: Decimal) -> int:
    """``tokens_by_price``: (token count, price in micro-currency per 1M tokens) pairs."""
    return cost_from_units(sum(t * p for t, p in tokens_by_price), fx_micro, coefficient_units(coefficient))


def format_rub(micro: int, places: int = 2, *, exact: bool = False) -> str:
    """Integer micro-units (micro-rubles, or micro-units of a price's currency) as decimal text.

    Integers only (no Decimal: the proxy's hot path formats amounts in its error messages).
    The sign is kept (also when the rounded amount is zero: -1 → "-0.00"), there are no
    thousands separators, and ``places == 0`` prints no decimal point.

    - ``exact=False``: exactly ``places`` decimals, rounded half up (away from zero, like
      Decimal's ROUND_HALF_UP): 1_234_567_890 → "1234.57"; ``format_rub(-1, 6)`` → "-0.000001".
    - ``exact=True``: never rounds: at least ``places`` decimals and as many more as the amount
      needs, for form inputs, exports and reports: ``format_rub(1_500_000, 0, exact=True)`` →
      "1.5", ``format_rub(75_000, 2, exact=True)`` → "0.075", ``format_rub(0, 0, exact=True)`` → "0".
    """
    sign = "-" if micro < 0 else ""
    if micro < 0:
        micro = -micro
    if places == 6 and not exact:  # the proxy's messages: no rounding, the cheapest path
        return f"{sign}{micro // MICRO}.{micro % MICRO:06d}"
    if exact:
        whole, fraction = divmod(micro, MICRO)
        digits = f"{fraction:06d}".rstrip("0").ljust(places, "0")
        return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"
    if places < 6:
        divisor = _TEN_POWERS[6 - places]
        micro, remainder = divmod(micro, divisor)
        if remainder * 2 >= divisor:
            micro += 1
        scale = _TEN_POWERS[places]
    else:
        micro *= 10 ** (places - 6)
        scale = 10 ** places
    if places == 0:
        return f"{sign}{micro}"
    whole, fraction = divmod(micro, scale)
    return f"{sign}{whole}.{fraction:0{places}d}"


_TEN_POWERS = tuple(10**n for n in range(7))
