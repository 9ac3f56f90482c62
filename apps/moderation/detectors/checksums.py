"""Control-digit checks of the identifiers the pattern layer finds. Each function takes the digits
only (a ``str`` of ASCII digits, separators already removed) and returns whether they are valid.

Sources: Luhn — ISO/IEC 7812-1 annex B; СНИЛС — Постановление Правления ПФР от 27.12.1996 № 3-П
(контрольное число); ИНН — Приказ ФНС от 29.06.2012 № ММВ-7-6/435@ (алгоритм контрольных цифр);
ОГРН / ОГРНИП — Постановление Правительства РФ от 19.06.2002 № 438 (остаток от деления на 11 / 13);
IBAN — ISO 13616-1 (mod 97-10, ISO 7064); расчётный счёт — Положение Банка России от 08.09.1997
№ 515 (ключевой разряд, весовые коэффициенты 7-1-3 с тремя разрядами БИК).
"""

from __future__ import annotations

import operator

_INN10_WEIGHTS = (2, 4, 10, 3, 5, 9, 4, 6, 8)
_INN12_WEIGHTS_11 = (7, 2, 4, 10, 3, 5, 9, 4, 6, 8)
_INN12_WEIGHTS_12 = (3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8)
_ACCOUNT_WEIGHTS = ((7, 1, 3) * 8)[:23]  # 23 positions: three of the БИК, twenty of the account


def luhn_valid(digits: str) -> bool:
    """Luhn's check (payment cards): the doubled-every-second-from-the-right digit sum is 0 mod 10."""
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def snils_valid(digits: str) -> bool:
    """СНИЛС: 11 digits; the last two are Σ dᵢ·(9−i) over the first nine, mod 101 (100 → 00). Numbers up
    to 001-001-998 have no control number and are refused."""
    if len(digits) != 11 or not digits.isdigit():
        return False
    body = digits[:9]
    if int(body) <= 1001998:
        return False
    total = sum(int(d) * (9 - i) for i, d in enumerate(body))
    control = total % 101
    if control == 100:
        control = 0
    return control == int(digits[9:])


def _weighted(digits: str, weights: tuple[int, ...]) -> int:
    return sum(int(d) * w for d, w in zip(digits, weights, strict=False)) % 11 % 10


def inn_valid(digits: str) -> bool:
    """ИНН: 10 digits (an organisation: one control digit) or 12 (a person: two)."""
    if not digits.isdigit():
        return False
    if len(digits) == 10:
        return _weighted(digits, _INN10_WEIGHTS) == int(digits[9])
    if len(digits) == 12:
        return (_weighted(digits, _INN12_WEIGHTS_11) == int(digits[10])
                and _weighted(digits, _INN12_WEIGHTS_12) == int(digits[11]))
    return False


def ogrn_valid(digits: str) -> bool:
    """ОГРН (13 digits, the first 1 or 5: the first 12 mod 11, mod 10) or ОГРНИП (15 digits, the first 3:
    the first 14 mod 13, mod 10)."""
    if not digits.isdigit():
        return False
    if len(digits) == 13 and digits[0] in "125":
        return int(digits[:12]) % 11 % 10 == int(digits[12])
    if len(digits) == 15 and digits[0] in "34":
        return int(digits[:14]) % 13 % 10 == int(digits[14])
    return False


# ISO 13616 lengths of the countries whose IBANs Russian companies meet most (the registry has ~80;
# an unknown country is accepted at 15–34 characters when its mod 97 holds).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BE": 16, "BG": 22, "BH": 22, "BY": 28, "CH": 21, "CY": 28,
    "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GE": 22, "GR": 27,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IT": 27, "KZ": 20, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "TR": 26, "UA": 29,
}


def iban_valid(iban: str) -> bool:
    """IBAN (spaces removed, any case): two letters, two check digits, the BBAN; the length the country
    requires; the number with its first four characters moved to the end, letters as 10–35, is 1 mod 97."""
    iban = iban.upper()
    if not (15 <= len(iban) <= 34) or not iban[:2].isalpha() or not iban[2:4].isdigit() or not iban.isalnum():
        return False
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected:
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def account_valid_with_bik(account: str, bik: str) -> bool:
    """A Russian 20-digit account checked with its bank's 9-digit БИК: for an account at a bank, the last
    three digits of the БИК; for a correspondent account (30101…) at the Bank of Russia, "0" and the БИК's
    5th–6th digits; then the 23 digits weighted 7-1-3 sum to 0 mod 10."""
    if len(account) != 20 or len(bik) != 9 or not account.isdigit() or not bik.isdigit():
        return False
    prefix = "0" + bik[4:6] if account.startswith("301") else bik[6:]
    digits = prefix + account
    return sum(map(operator.mul, map(int, digits), _ACCOUNT_WEIGHTS)) % 10 == 0
