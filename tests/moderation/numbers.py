"""Valid (and one-digit-off) identifiers for the moderation tests and the evaluation set, built with
the control-digit rules written out independently of ``apps/moderation/detectors/checksums.py``."""

from __future__ import annotations

import random


def luhn_complete(body: str) -> str:
    """``body`` with the Luhn check digit appended."""
    total = 0
    for index, char in enumerate(reversed(body)):
        value = int(char)
        if index % 2 == 0:
            value = value * 2 - 9 if value * 2 > 9 else value * 2
        total += value
    return body + str((10 - total % 10) % 10)


def card(rng: random.Random, prefix: str = "4") -> str:
    return luhn_complete(prefix + "".join(rng.choice("0123456789") for _ in range(15 - len(prefix))))


def snils(rng: random.Random) -> str:
    body = f"{rng.randint(2_000_000, 999_999_999):09d}"
    total = sum(int(d) * (9 - i) for i, d in enumerate(body))
    control = total % 101 % 100 if total % 101 != 100 else 0
    return body + f"{control:02d}"


def inn10(rng: random.Random) -> str:
    body = f"{rng.randint(100_000_000, 999_999_999)}"
    weights = (2, 4, 10, 3, 5, 9, 4, 6, 8)
    return body + str(sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11 % 10)


def inn12(rng: random.Random) -> str:
    body = f"{rng.randint(1_000_000_000, 9_999_999_999)}"
    first = sum(int(d) * w for d, w in zip(body, (7, 2, 4, 10, 3, 5, 9, 4, 6, 8), strict=True)) % 11 % 10
    body += str(first)
    second = sum(int(d) * w for d, w in zip(body, (3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8), strict=True)) % 11 % 10
    return body + str(second)


def ogrn(rng: random.Random) -> str:
    body = "1" + f"{rng.randint(10**10, 10**11 - 1)}"
    return body + str(int(body) % 11 % 10)


def ogrnip(rng: random.Random) -> str:
    body = "3" + f"{rng.randint(10**12, 10**13 - 1)}"
    return body + str(int(body) % 13 % 10)


def account_for_bik(rng: random.Random, bik: str, prefix: str = "40702810") -> str:
    """A 20-digit settlement account valid with ``bik`` (the key digit, position 9, solved for)."""
    weights = ((7, 1, 3) * 8)[:23]
    tail = "".join(rng.choice("0123456789") for _ in range(11))
    for key in "0123456789":
        account = prefix + key + tail
        digits = bik[6:] + account
        if sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 10 == 0:
            return account
    raise AssertionError("no key digit")


def iban_de(rng: random.Random) -> str:
    bban = "".join(rng.choice("0123456789") for _ in range(18))
    numeric = "".join(str(int(ch, 36)) for ch in bban + "DE00")
    check = 98 - int(numeric) % 97
    return f"DE{check:02d}{bban}"


def off_by_one(value: str) -> str:
    """``value`` with its last digit changed (a number that fails its check)."""
    return value[:-1] + str((int(value[-1]) + 1) % 10)
