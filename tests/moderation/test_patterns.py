"""The pattern layer: each category found where it is, and its look-alikes left alone."""

from __future__ import annotations

import random

import pytest

from apps.moderation.detectors.patterns import PatternDetector
from apps.moderation.findings import Category

from . import numbers

RNG = random.Random(7)
DETECTOR = PatternDetector()


def found(text: str) -> list[tuple[str, str]]:
    return [(d.category.value, d.value) for d in DETECTOR.detect(text)]


def spans_hold(text: str) -> None:
    for detection in DETECTOR.detect(text):
        assert text[detection.start:detection.end] == detection.value


@pytest.mark.parametrize("text,category,value", [
    ("Карта клиента 4111 1111 1111 1111, срок 12/27", "payment_card", "4111 1111 1111 1111"),
    ("card: 5555-5555-5555-4444", "payment_card", "5555-5555-5555-4444"),
    ("Номер 2200000000000004 (Мир)", "payment_card", "2200000000000004"),
    ("СНИЛС 112-233-445 95", "snils", "112-233-445 95"),
    ("СНИЛС: 11223344595", "snils", "11223344595"),
    ("ИНН 7707083893", "inn", "7707083893"),
    ("ИНН/КПП 7707083893/773601001", "inn", "7707083893"),
    ("физлицо 500100732259", "inn", "500100732259"),
    ("ОГРН 1027700132195", "ogrn", "1027700132195"),
    ("ОГРНИП: 304500116000157", "ogrn", "304500116000157"),
    ("Звоните +7 (916) 123-45-67", "phone", "+7 (916) 123-45-67"),
    ("тел. 8 800 555-35-35", "phone", "8 800 555-35-35"),
    ("мобильный 89161234567", "phone", "89161234567"),
    ("London office +44 20 7946 0958", "phone", "+44 20 7946 0958"),
    ("US: +1 (415) 555-2671", "phone", "+1 (415) 555-2671"),
    ("пишите на ivan.petrov@mail.ru", "email", "ivan.petrov@mail.ru"),
    ("support+billing@acme-corp.co.uk.", "email", "support+billing@acme-corp.co.uk"),
    ("IBAN GB82 WEST 1234 5698 7654 32", "bank_account", "GB82 WEST 1234 5698 7654 32"),
    ("IBAN: DE89370400440532013000", "bank_account", "DE89370400440532013000"),
    ("р/с 30101810400000000225 в банке с БИК 044525225", "bank_account", "30101810400000000225"),
    ("паспорт серия 4506 № 123456 выдан", "passport", "4506 № 123456"),
    ("Паспорт: 45 06 123456", "passport", "45 06 123456"),
    ("host 192.168.10.4 is down", "ip_address", "192.168.10.4"),
    ("allow 10.0.0.0/8 only", "ip_address", "10.0.0.0/8"),
    ("ipv6 2001:db8:85a3::8a2e:370:7334 ok", "ip_address", "2001:db8:85a3::8a2e:370:7334"),
    ("loopback ::1 and fe80::1%eth0", "ip_address", "fe80::1%eth0"),
    ("Адрес: ул. Тверская, д. 7, кв. 15", "address", "ул. Тверская, д. 7, кв. 15"),
    ("ship to 221 Baker Street, Apt 2", "address", "221 Baker Street, Apt 2"),
])
def test_it_finds(text, category, value):
    assert (category, value) in found(text)
    spans_hold(text)


@pytest.mark.parametrize("text", [
    "Карта 4111 1111 1111 1112 не прошла",  # fails Luhn
    "заказ № 1234567812345678 оформлен",  # 16 digits, Luhn fails
    "СНИЛС 112-233-445 96",  # wrong control number
    "ИНН 7707083894",  # wrong control digit
    "номер договора 7707083893",  # valid INN-10 digits, but nothing says INN
    "ОГРН 1027700132196",
    "timestamp 1700000000000 ms",  # a 13-digit number with no OGRN context
    "Встреча 12.03.2024 в 10:30, потом 2024-03-12 14:00",  # dates and times
    "Счёт за период 01.01.2024-31.12.2024",
    "заказ 12345678901 от клиента",  # 11 digits without a phone's shape or context
    "version 1.2.3.4 released; v10.0.0.1; pip install pkg==2.0.1.3",  # versions, not IPs
    "Chrome/120.0.6099.109 Safari/537.36",
    "ratio 999.999.999.999 is not an address",
    "at 10:30:00 and 12:45:10",  # times, not IPv6
    "std::vector<int> a; foo::bar::baz()",
    "icon@2x.png and logo@3x.webp",  # retina image names, not e-mails
    "заказ 4506 № 123456",  # a series-and-number shape with nothing saying passport
    "IBAN GB82 WEST 1234 5698 7654 33",  # mod 97 fails
    "р/с 40702810938000060474 БИК 044525225",  # the account fails the key check with this BIK
    "Итого: 1 234 567 890 руб.",
    "ISBN 978-5-699-12014-7",
])
def test_it_leaves_lookalikes_alone(text):
    assert found(text) == []


def test_it_finds_generated_identifiers_and_not_their_broken_twins():
    for _ in range(30):
        inn = numbers.inn10(RNG)
        assert ("inn", inn) in found(f"ИНН {inn}")
        assert found(f"ИНН {numbers.off_by_one(inn)}") == []
        snils = numbers.snils(RNG)
        formatted = f"{snils[:3]}-{snils[3:6]}-{snils[6:9]} {snils[9:]}"
        assert ("snils", formatted) in found(f"СНИЛС {formatted}")
        account = numbers.account_for_bik(RNG, "044525225")
        assert ("bank_account", account) in found(f"р/с {account}, БИК 044525225")
        assert found(f"р/с {numbers.off_by_one(account)}, БИК 044525225") == []


def test_it_survives_odd_input():
    assert found("") == []
    assert found("\x00\ufeff🙂" * 100) == []
    spans_hold("Тел.: +7 916 123 45 67 — 🙂 — ivan@mail.ru " * 50)
    big = "1" * 5000 + " " + "9" * 30
    assert found(big) == []


def test_it_detects_in_code_points():
    text = "🙂🙂 ivan@mail.ru"
    [detection] = DETECTOR.detect(text)
    assert (detection.start, detection.end) == (3, 15)
    assert detection.category == Category.EMAIL
