from __future__ import annotations

import random

import pytest

from apps.moderation.detectors.checksums import (
    account_valid_with_bik,
    iban_valid,
    inn_valid,
    luhn_valid,
    ogrn_valid,
    snils_valid,
)

from . import numbers

RNG = random.Random(11)


@pytest.mark.parametrize("make,check", [
    (lambda: numbers.card(RNG), luhn_valid), (lambda: numbers.snils(RNG), snils_valid),
    (lambda: numbers.inn10(RNG), inn_valid), (lambda: numbers.inn12(RNG), inn_valid),
    (lambda: numbers.ogrn(RNG), ogrn_valid), (lambda: numbers.ogrnip(RNG), ogrn_valid),
    (lambda: numbers.iban_de(RNG), iban_valid),
])
def test_it_accepts_valid_numbers_and_refuses_a_changed_last_digit(make, check):
    for _ in range(50):
        value = make()
        assert check(value), value
        assert not check(numbers.off_by_one(value)), value


def test_it_knows_published_examples():
    assert luhn_valid("4111111111111111") and luhn_valid("5555555555554444") and not luhn_valid("4111111111111112")
    assert snils_valid("11223344595") and not snils_valid("11223344596")
    assert inn_valid("7707083893") and inn_valid("500100732259") and not inn_valid("7707083894")
    assert ogrn_valid("1027700132195") and ogrn_valid("304500116000157") and not ogrn_valid("1027700132196")
    assert iban_valid("GB82WEST12345698765432") and iban_valid("de89370400440532013000")
    assert not iban_valid("GB82WEST12345698765433") and not iban_valid("GB82WEST1234569876543")  # digit, length


def test_it_checks_an_account_with_its_bik():
    assert account_valid_with_bik("30101810400000000225", "044525225")  # Sberbank's correspondent account
    account = numbers.account_for_bik(RNG, "044525225")
    assert account_valid_with_bik(account, "044525225")
    assert not account_valid_with_bik(account, "044525974")
    assert not account_valid_with_bik(numbers.off_by_one(account), "044525225")


def test_it_refuses_odd_input():
    for check in (luhn_valid, snils_valid, inn_valid, ogrn_valid):
        assert not check("")
        assert not check("12345abc")
    assert not snils_valid("00100199800")  # below the first number with a control sum
    assert not iban_valid("")
    assert not account_valid_with_bik("123", "044525225")
