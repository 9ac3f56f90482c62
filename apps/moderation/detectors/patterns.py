"""The pattern layer: identifiers found by regular expressions and confirmed by their control digits,
formats or context — payment cards (Luhn, issuer prefixes), СНИЛС, ИНН-10/12, ОГРН/ОГРНИП, phones
(libphonenumber's validity rules, Russian and international), e-mail addresses, IBAN (mod 97), Russian
settlement accounts checked with a БИК found in the same text, Russian passports (series and number
near the word), IPv4/IPv6 addresses (not version strings), street addresses, and secrets (``secrets.py``).

An identifier that a control digit confirms only one time in ten (ИНН-10, ОГРН, a bare 11-digit СНИЛС) is
flagged only with its name nearby (``ИНН``, ``OGRN``…): a 10-digit phone number passes the ИНН check as
often. ``PatternDetector().detect(text)`` takes about 0.3 ms for a 4 KB prompt (``make eval-moderation``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

import phonenumbers

from apps.moderation.detectors.checksums import (
    account_valid_with_bik,
    iban_valid,
    inn_valid,
    luhn_valid,
    ogrn_valid,
    snils_valid,
)
from apps.moderation.detectors.secrets import SecretDetector
from apps.moderation.findings import Category, Detection

NAME = "pattern"

# Digit runs: digits with single spaces, dashes, dots, brackets or a leading plus between them. One scan
# of the text for every numeric identifier; each run is then judged by its digit count and shape.
_DIGIT_RUN = re.compile(r"\+?\(?\d(?:[\d]|[ \-\u00a0](?=\d)|[ ]?[()](?=[ ]?\d)|\)[ \-]?(?=\d)|\.(?=\d))*\d(?!\w|/(?!\d{9}(?!\d))|[.,]\d)")
_EMAIL = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w\-])"
    r"|[\w.%+\-]{1,64}@(?:[^\W_](?:[\w\-]{0,61}[^\W_])?\.)+(?:рф|рус|москва|онлайн|сайт|бел|укр|қаз)(?![\w\-])")
_IBAN_HINT = re.compile(r"[A-Z]{2}\d\d")
_IMAGE_SUFFIX = re.compile(r"@\d+(?:\.\d+)?x\.(?:png|jpe?g|gif|webp|svg)$", re.IGNORECASE)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?:/\d{1,2})?(?![\w]|\.\d)")
_HEX_COLON = frozenset("0123456789abcdefABCDEF:")
_IPV6_TAIL = re.compile(r"(?:%\w+)?(?:/\d{1,3})?")
_VERSION_BEFORE = re.compile(r"(?:\bv(?:er(?:sion)?)?\.?|верси[яиюей]|сборк[аи]|release|build|[=<>~^@/]|==)\s*$", re.IGNORECASE)
_BIK = re.compile(r"04\d{7}")
_ADDRESS_RU = re.compile(
    r"\b(?:ул\.|улица|пр-т|пр\.|проспект|пер\.|переулок|ш\.|шоссе|б-р|бульвар|наб\.|набережная|пл\.|площадь|проезд|мкр\.?|микрорайон)"
    r"\s*[А-ЯЁ0-9][\w\-]*(?:\s+[А-ЯЁа-яё][\w\-]*){0,2}"
    r",?\s*(?:д\.|дом)\s*\d+[А-Яа-я]?(?:\s*/\s*\d+)?(?:,?\s*(?:корп\.|корпус|к\.|стр\.|строение)\s*\d+)*(?:,?\s*(?:кв\.|квартира|оф\.|офис|пом\.)\s*\d+)?")
_ADDRESS_EN = re.compile(
    r"\b\d{1,5}\s+(?:[A-Z][a-z]+\s+){1,3}(?:Street|St\.|Avenue|Ave\.|Road|Rd\.|Boulevard|Blvd\.|Lane|Ln\.|Drive|Dr\.|Court|Ct\.|Way|Place|Pl\.)"
    r"(?:,?\s*(?:Apt\.?|Suite|Unit|#)\s*\w+)?")
_STREET_WORDS_EN = ("Street", "St.", "Avenue", "Ave.", "Road", "Rd.", "Boulevard", "Blvd.", "Lane", "Ln.", "Drive", "Dr.",
                    "Court", "Ct.", "Way", "Place", "Pl.")

# Context words within ``_CONTEXT_CHARS`` before an identifier that its control digit alone cannot carry.
_CONTEXT_CHARS = 48
_INN_CONTEXT = re.compile(r"\bИНН\b|\bINN\b|\bTIN\b|налогоплательщик|taxpayer|ИНН/КПП", re.IGNORECASE)
_OGRN_CONTEXT = re.compile(r"ОГРН|\bOGRN|ОГРНИП|государственн\w* регистрац|registration number|\bPSRN", re.IGNORECASE)
_SNILS_CONTEXT = re.compile(r"СНИЛС|\bSNILS|страхов\w* номер|страховое свидетельство|pension insurance", re.IGNORECASE)
_PASSPORT_CONTEXT = re.compile(r"паспорт|passport|серия|серии|удостоверени\w+ личности|\bID card", re.IGNORECASE)
_ACCOUNT_CONTEXT = re.compile(r"\bр/с|\bр/сч|\bк/с|расч[её]тн\w* сч|сч[её]т\w*|account|\bacc\b", re.IGNORECASE)
_PHONE_CONTEXT = re.compile(r"тел|моб|phone|mobile|tel\b|call|звон|whatsapp|telegram|факс|fax|контакт|contact", re.IGNORECASE)
_DATE_SHAPE = re.compile(r"^\d{1,4}[.\-/ ]\d{1,2}[.\-/ ]\d{2,4}(?:[ T]\d{1,2}[:.]\d{2}(?::\d{2})?)?$")
_CARD_GROUPS = re.compile(r"\d{4}(?:[ \-]\d{4}){2,3}(?:[ \-]?\d{1,3})?|\d{4}[ \-]\d{6}[ \-]\d{5}")
_SNILS_FORMAT = re.compile(r"\d{3}-\d{3}-\d{3}[ \-]\d{2}")
_PASSPORT_FORMAT = re.compile(r"\d{2} ?\d{2}[ ]?(?:№ ?)?\d{6}")
_PASSPORT_SPLIT = re.compile(r"(?:\d{2} ?\d{2})\s*(?:№|N|No\.?|номер)\s*\d{6}(?!\d)")
_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|35|6[0-9]|50|9860)")


def _context(text: str, start: int, pattern: re.Pattern[str]) -> bool:
    return pattern.search(text, max(0, start - _CONTEXT_CHARS), start) is not None


def _russian_national(digits: str, international: bool) -> str | None:
    """The ten national digits of a number in the +7 plan (``+7 916 …``, ``8 916 …``, ``916 …`` written
    with a phone's shape), else None (another country's: libphonenumber judges it)."""
    if international:
        return digits[1:] if len(digits) == 11 and digits[0] == "7" else None
    if len(digits) == 11 and digits[0] in "78":
        return digits[1:]
    return digits if len(digits) == 10 else None


def _glued(char: str) -> bool:
    """Whether a number starting after ``char`` is part of a longer token (a word, a path, a version)."""
    return char.isalnum() or char in "_.-/"


_NOT_DIGIT = re.compile(r"[^0-9]")


def _digits(value: str) -> str:
    return _NOT_DIGIT.sub("", value)


def _biks(text: str) -> list[str]:
    """Every БИК (9 digits starting with 04, not inside a longer number) in ``text``."""
    if "04" not in text:
        return []
    found = []
    for match in _BIK.finditer(text):
        start, end = match.start(), match.end()
        if (start and text[start - 1].isdigit()) or (end < len(text) and text[end].isdigit()):
            continue
        found.append(match.group())
    return found


class PatternDetector:
    """Every pattern-layer category in one pass per pattern (see the module docstring). ``secrets``:
    include the secret detector (``secrets.py``); the scan gives it its own name otherwise."""

    name = NAME

    def __init__(self, *, secrets: bool = True) -> None:
        self._secrets = SecretDetector() if secrets else None

    def detect(self, text: str) -> Iterator[Detection]:
        if not text:
            return
        yield from self._numbers(text)
        if "@" in text:
            yield from self._emails(text)
        if _IBAN_HINT.search(text):
            yield from self._ibans(text)
        if "." in text:
            yield from self._ipv4(text)
        if "::" in text or text.count(":") >= 2:
            yield from self._ipv6(text)
        yield from self._addresses(text)
        if self._secrets is not None:
            yield from self._secrets.detect(text)

    # --- numeric identifiers ------------------------------------------------------------------

    def _numbers(self, text: str) -> Iterator[Detection]:
        biks: list[str] | None = None
        for match in _DIGIT_RUN.finditer(text):
            if match.start() and _glued(text[match.start() - 1]):
                continue
            raw = match.group()
            digits = _digits(raw)
            count = len(digits)
            start, end = match.start(), match.end()
            if count < 9 or count > 20:
                if 6 <= count < 9 or count == 4:
                    yield from self._passport_split(text, match)
                continue
            if count == 20:
                if biks is None:
                    biks = _biks(text)
                if self._is_account(text, start, digits, biks):
                    yield Detection(Category.BANK_ACCOUNT, start, end, raw, NAME)
                continue
            found = self._identifier(text, start, raw, digits)
            if found is not None:
                yield Detection(found, start, end, raw, NAME)
                continue
            phone = self._phone(text, match)
            if phone is not None:
                yield phone

    def _identifier(self, text: str, start: int, raw: str, digits: str) -> Category | None:
        count = len(digits)
        plain = raw.isdigit()
        if count in (13, 15, 16, 18, 19) and not raw.startswith("+") and _CARD_PREFIX.match(digits) and luhn_valid(digits):
            if plain or _CARD_GROUPS.fullmatch(raw):
                if not (count in (13, 15) and _context(text, start, _OGRN_CONTEXT)):
                    return Category.PAYMENT_CARD
        if count == 11 and not raw.startswith("+"):
            formatted = _SNILS_FORMAT.fullmatch(raw) is not None
            if snils_valid(digits) and (formatted or _context(text, start, _SNILS_CONTEXT)):
                return Category.SNILS
        if count in (10, 12) and plain:
            if inn_valid(digits) and (count == 12 or _context(text, start, _INN_CONTEXT)):
                if not (count == 12 and _context(text, start, _PHONE_CONTEXT) and not _context(text, start, _INN_CONTEXT)):
                    return Category.INN
        if count in (13, 15) and plain and ogrn_valid(digits) and _context(text, start, _OGRN_CONTEXT):
            return Category.OGRN
        if count == 10 and _context(text, start, _PASSPORT_CONTEXT) and _PASSPORT_FORMAT.fullmatch(raw):
            return Category.PASSPORT
        return None

    def _passport_split(self, text: str, match: re.Match[str]) -> Iterator[Detection]:
        """A series and a number written apart: ``серия 45 06 № 123456`` / ``4506 номер 123456``."""
        if not _context(text, match.start(), _PASSPORT_CONTEXT):
            return
        found = _PASSPORT_SPLIT.match(text, match.start())
        if found is not None:
            yield Detection(Category.PASSPORT, found.start(), found.end(), found.group(), NAME)

    def _is_account(self, text: str, start: int, digits: str, biks: list[str]) -> bool:
        if digits[:3] not in ("401", "402", "403", "404", "405", "406", "407", "408", "409", "301", "423", "426", "421"):
            return False
        if biks:
            return any(account_valid_with_bik(digits, bik) for bik in biks)
        return _context(text, start, _ACCOUNT_CONTEXT)

    def _phone(self, text: str, match: re.Match[str]) -> Detection | None:
        raw = match.group()
        digits = _digits(raw)
        if len(digits) > 15 or _DATE_SHAPE.match(raw):
            return None
        international = raw.startswith("+")
        shaped = any(ch in raw for ch in " -()")
        if not international and not shaped and not _context(text, match.start(), _PHONE_CONTEXT):
            # A bare digit run is a phone only when it has the Russian national shape (8 or 7 and ten
            # digits) or its context names a phone: order numbers, INNs and timestamps are bare too.
            if not (len(digits) == 11 and digits[0] in "78" and digits[1] in "3489"):
                return None
        if international and len(digits) == 11 and digits[0] == "1":
            # NANP (+1): area code and exchange start with 2–9, the area code is not N11 (N11 are service codes)
            if digits[1] in "01" or digits[4] in "01" or digits[2:4] == "11":
                return None
            return Detection(Category.PHONE, match.start(), match.end(), raw, NAME)
        national = _russian_national(digits, international)
        if national is not None:
            if national[0] not in "346789":  # ABC and DEF codes (+7 6xx/7xx: Kazakhstan)
                return None
            return Detection(Category.PHONE, match.start(), match.end(), raw, NAME)
        try:
            number = phonenumbers.parse(raw, None if international else "RU")
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_valid_number(number):
            return None
        return Detection(Category.PHONE, match.start(), match.end(), raw, NAME)

    # --- the rest -----------------------------------------------------------------------------

    def _emails(self, text: str) -> Iterator[Detection]:
        # From each "@" back over the characters a local part may have, then one anchored match: a
        # pattern that starts with a character class would be tried at every position of the text.
        at = text.find("@")
        end = 0
        while at != -1:
            start = at
            while start > end and at - start < 64 and (text[start - 1].isalnum() or text[start - 1] in "._%+-"):
                start -= 1
            match = _EMAIL.match(text, start) if start < at else None
            if match is not None and match.end() > at:
                value = match.group()
                if not _IMAGE_SUFFIX.search(value) and not (start and text[start - 1] in "."):
                    yield Detection(Category.EMAIL, start, match.end(), value, NAME)
                end = match.end()
            at = text.find("@", max(at + 1, end))

    def _ibans(self, text: str) -> Iterator[Detection]:
        for match in _IBAN.finditer(text):
            if iban_valid(match.group().replace(" ", "")):
                yield Detection(Category.BANK_ACCOUNT, match.start(), match.end(), match.group(), NAME)

    def _ipv4(self, text: str) -> Iterator[Detection]:
        for match in _IPV4.finditer(text):
            if match.start() and _glued(text[match.start() - 1]):
                continue
            value = match.group()
            address = value.split("/")[0]
            if any(int(part) > 255 or (len(part) > 1 and part[0] == "0") for part in address.split(".")):
                continue
            if _VERSION_BEFORE.search(text, max(0, match.start() - 16), match.start()):
                continue
            yield Detection(Category.IP_ADDRESS, match.start(), match.end(), value, NAME)

    def _ipv6(self, text: str) -> Iterator[Detection]:
        # From each ":" outwards over hex digits, colons and dots, then the zone (%eth0) and the prefix
        # (/64): a pattern that may start with an empty group would be tried at every position.
        colon = text.find(":")
        while colon != -1:
            start = colon
            while start and text[start - 1] in _HEX_COLON:
                start -= 1
            end = colon
            while end < len(text) and (text[end] in _HEX_COLON or text[end] == "."):
                end += 1
            while end > colon and text[end - 1] in ".":
                end -= 1
            tail = _IPV6_TAIL.match(text, end)
            detection = self._ipv6_at(text, start, end, tail.end() if tail else end)
            if detection is not None:
                yield detection
            colon = text.find(":", max(end, colon + 1))

    @staticmethod
    def _ipv6_at(text: str, start: int, address_end: int, end: int) -> Detection | None:
        if (start and (text[start - 1].isalnum() or text[start - 1] in "_.")) or (end < len(text) and text[end].isalnum()):
            return None
        address = text[start:address_end]
        groups = [g for g in address.split(":") if g]
        if len(groups) < 2 or (len(groups) < 3 and "::" not in address):
            return None
        if all(g.isdigit() and len(g) <= 2 for g in groups):  # a time of day: 10:30:00
            return None
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return None
        return Detection(Category.IP_ADDRESS, start, end, text[start:end], NAME)

    def _addresses(self, text: str) -> Iterator[Detection]:
        matches: list[re.Match[str]] = []
        if "д." in text or "дом" in text:
            matches.extend(_ADDRESS_RU.finditer(text))
        if any(word in text for word in _STREET_WORDS_EN):
            matches.extend(_ADDRESS_EN.finditer(text))
        for match in matches:
            value = match.group().rstrip(" ,")
            yield Detection(Category.ADDRESS, match.start(), match.start() + len(value), value, NAME)
