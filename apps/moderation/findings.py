"""What moderation finds and what it does about it: the shared vocabulary of the detectors
(``apps/moderation/detectors/``), the policy, the masking engine and the proxy's moderation stage.

A detector reads one text and yields ``Detection`` values (category, span in Unicode code points of
that text, the matched value, the detector's name); the policy turns each into a ``Finding`` with the
``Action`` it calls for in that ``Direction``. Nothing here touches the database or the network.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from django.utils.translation import gettext_lazy as _


class Category(enum.StrEnum):
    """What kind of sensitive content a detection is (the ``code`` of a ``moderation_blocked`` error,
    the placeholder's stem in upper case: ``PERSON`` → ``[PERSON_1]``)."""

    PERSON = "person"
    ADDRESS = "address"
    ORGANIZATION = "organization"
    PHONE = "phone"
    EMAIL = "email"
    PAYMENT_CARD = "payment_card"
    BANK_ACCOUNT = "bank_account"  # IBAN, Russian settlement account with its БИК
    PASSPORT = "passport"  # Russian internal passport: series and number in context
    SNILS = "snils"
    INN = "inn"
    OGRN = "ogrn"  # ОГРН and ОГРНИП
    IP_ADDRESS = "ip_address"
    SECRET = "secret"  # API keys, tokens, passwords, private keys, URLs with credentials
    PROMPT_INJECTION = "prompt_injection"
    CUSTOM_DICTIONARY = "custom_dictionary"
    CUSTOM_REGEX = "custom_regex"
    HARMFUL = "harmful"  # flagged by the LLM moderator or the external moderation API (no narrower category)

    @property
    def label(self) -> str:
        """The category's human name (translated)."""
        return str(CATEGORY_LABELS[self])

    @property
    def placeholder_stem(self) -> str:
        """``PERSON`` for ``person``: the stem of a masking placeholder ``[PERSON_1]``."""
        return self.value.upper()


CATEGORY_LABELS = {
    Category.PERSON: _("person names"),
    Category.ADDRESS: _("addresses"),
    Category.ORGANIZATION: _("organisations"),
    Category.PHONE: _("phone numbers"),
    Category.EMAIL: _("e-mail addresses"),
    Category.PAYMENT_CARD: _("payment card numbers"),
    Category.BANK_ACCOUNT: _("bank accounts"),
    Category.PASSPORT: _("passport numbers"),
    Category.SNILS: _("SNILS"),
    Category.INN: _("INN"),
    Category.OGRN: _("OGRN / OGRNIP"),
    Category.IP_ADDRESS: _("IP addresses"),
    Category.SECRET: _("secrets (keys, tokens, passwords)"),
    Category.PROMPT_INJECTION: _("prompt injection"),
    Category.CUSTOM_DICTIONARY: _("custom dictionary"),
    Category.CUSTOM_REGEX: _("custom patterns"),
    Category.HARMFUL: _("harmful content"),
}


class Action(enum.StrEnum):
    """What the policy does with a finding, weakest first (``max`` of several is the strongest)."""

    ALLOW = "allow"  # reported by /v1/moderation/check, otherwise ignored
    LOG = "log"  # recorded in the moderation report, sent unchanged
    MASK = "mask"  # replaced by a placeholder upstream, restored in the answer
    BLOCK = "block"  # the request (or the answer) is refused: moderation_blocked

    @property
    def rank(self) -> int:
        """0 for ALLOW … 3 for BLOCK."""
        return _ACTION_ORDER.index(self)


_ACTION_ORDER = [Action.ALLOW, Action.LOG, Action.MASK, Action.BLOCK]


def strongest(actions: Iterable[Action]) -> Action:
    """The strongest of ``actions`` (``ALLOW`` for none)."""
    return max(actions, key=lambda a: a.rank, default=Action.ALLOW)


class Direction(enum.StrEnum):
    """Which way the text goes: the client's prompt to the provider, or the provider's answer back."""

    PROMPT = "prompt"
    RESPONSE = "response"


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected value: ``text[start:end] == value`` (offsets in code points of the scanned text);
    ``detector`` names the layer (``pattern``, ``ner``, ``llm``, ``external``, ``dictionary``, ``regex``)."""

    category: Category
    start: int
    end: int
    value: str
    detector: str


@dataclass(frozen=True, slots=True)
class Finding:
    """A detection with the action the policy calls for."""

    detection: Detection
    action: Action

    @property
    def category(self) -> Category:
        return self.detection.category


class Detector(Protocol):
    """A layer of detection: ``detect(text)`` yields every ``Detection`` in ``text``; it never raises
    on odd input (empty, huge, any Unicode)."""

    name: str

    def detect(self, text: str) -> Iterable[Detection]:
        ...


class RegexDetector:
    """A custom pattern (a company's regex, ``CUSTOM_REGEX``) or a custom dictionary (whole words, case
    folded, ``CUSTOM_DICTIONARY``): each match is one detection. Raises ``ValueError`` for a pattern
    that does not compile."""

    def __init__(self, category: Category, pattern: str | re.Pattern[str], *, name: str = "regex") -> None:
        self.category = category
        self.name = name
        try:
            self.pattern = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid pattern: {exc}") from None

    @classmethod
    def dictionary(cls, words: Iterable[str]) -> RegexDetector:
        """A detector of whole ``words`` (case-insensitive, longest first)."""
        cleaned = sorted({w.strip() for w in words if w.strip()}, key=len, reverse=True)
        if not cleaned:
            return cls(Category.CUSTOM_DICTIONARY, re.compile(r"(?!)"), name="dictionary")
        alternatives = "|".join(re.escape(w) for w in cleaned)
        return cls(Category.CUSTOM_DICTIONARY, re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE), name="dictionary")

    def detect(self, text: str) -> Iterator[Detection]:
        for match in self.pattern.finditer(text):
            if match.end() > match.start():
                yield Detection(self.category, match.start(), match.end(), match.group(), self.name)
