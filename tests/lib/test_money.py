"""lib/money.py: the one micro-ruble formatter (integers only) and Currency. DB-free."""

from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal

import pytest

from lib.money import MICRO, Currency, format_rub


def _decimal_rounded(micro: int, places: int) -> str:
    """What Decimal says: micro / 1e6 rounded half up (away from zero) to ``places`` decimals."""
    return format((Decimal(micro) / MICRO).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP), "f")


def _decimal_exact(micro: int, places: int) -> str:
    """Every micro-unit kept, trailing zeros dropped, then padded to at least ``places`` decimals."""
    text = format(Decimal(micro) / MICRO, "f")
    whole, _dot, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(places, "0")
    return f"{whole}.{fraction}" if fraction else whole


def _proxy_rub(micro: int) -> str:
    """apps/proxy/app.py's ``rub`` as it is today: the six-decimal text the proxy's errors show."""
    sign = "-" if micro < 0 else ""
    micro = abs(micro)
    return f"{sign}{micro // 1_000_000}.{micro % 1_000_000:06d}"


def _many_ints(seed: int) -> list[int]:
    rng = random.Random(seed)
    edges = [0, 1, -1, 4_999, 5_000, -5_000, 5_001, 499_999, 500_000, -500_000, 999_999, 1_000_000, 2**63 - 1, -(2**63)]
    return edges + [rng.choice((rng.randint(-10_000, 10_000), rng.randint(-10**9, 10**9), rng.randint(-(2**63), 2**63 - 1)))
                    for _ in range(20_000)]


@pytest.mark.parametrize(("micro", "places", "expected"), [
    (1_234_567_890, 2, "1234.57"), (0, 2, "0.00"), (5_000, 2, "0.01"), (4_999, 2, "0.00"),
    (-5_000, 2, "-0.01"), (-1, 2, "-0.00"), (1_500_000, 0, "2"), (-1_500_000, 0, "-2"),
    (92_500_000, 4, "92.5000"), (1, 8, "0.00000100"),
    (-1, 6, "-0.000001"), (12_345_678, 6, "12.345678"), (0, 6, "0.000000"),
])
def test_it_rounds_half_up_and_keeps_the_sign(micro, places, expected):
    assert format_rub(micro, places) == expected


@pytest.mark.parametrize(("micro", "places", "expected"), [
    (1_500_000, 0, "1.5"), (0, 0, "0"), (1_000_000, 0, "1"), (1, 0, "0.000001"), (-1_500_000, 0, "-1.5"),
    (75_000, 2, "0.075"), (150_000, 2, "0.15"), (1_000_000, 2, "1.00"), (92_500_000, 4, "92.5000"),
    (92_512_345, 4, "92.512345"),
])
def test_it_formats_exactly_with_at_least_the_places_asked(micro, places, expected):
    assert format_rub(micro, places, exact=True) == expected


def test_it_matches_the_proxys_six_decimal_text_for_every_int():
    for micro in _many_ints(seed=6):
        assert format_rub(micro, 6) == _proxy_rub(micro), micro


@pytest.mark.parametrize("places", [0, 1, 2, 3, 4, 5, 6, 7, 9])
def test_it_agrees_with_decimal_on_many_random_amounts(places):
    for micro in _many_ints(seed=places):
        assert format_rub(micro, places) == _decimal_rounded(micro, places), (micro, places)
        assert format_rub(micro, places, exact=True) == _decimal_exact(micro, places), (micro, places)


def test_it_never_uses_thousands_separators():
    assert format_rub(1_234_567_000_000) == "1234567.00"
    assert format_rub(1_234_567_000_000, 0, exact=True) == "1234567"


def test_it_names_the_currencies_prices_come_in():
    assert Currency.values == ["RUB", "USD", "EUR", "CNY"]
    assert Currency.RUB == "RUB"
