"""Reversible depersonalization: each masked value becomes a stable placeholder on its way to the
provider, and the placeholders in the provider's answer become the values again.

``Masker`` is one request's mapping. ``mask(text, findings)`` replaces the spans of the ``MASK``
findings with ``[STEM_N]`` placeholders (the stem is ``Category.placeholder_stem``: ``[PERSON_1]``,
``[PHONE_2]``); the same value (of the same category) gets the same placeholder everywhere in the
request — system prompt, every message, tool results, tool-call arguments — so the model can still
tell two people apart and refer back to one. ``restore(text)`` puts the values back in a whole
answer; ``restore_json(arguments)`` does it inside a JSON text (tool-call arguments): the values are
restored inside the decoded strings and the JSON re-encoded, so a value with a quote or a backslash
stays valid JSON. ``restorer()`` is the incremental form for streams (``StreamRestorer``): a
placeholder split across chunks (``"[PER"`` + ``"SON_1]"``) is held back only while what was received
so far can still be the start of a known placeholder, never longer.

The mapping lives in this object only: it never leaves the gateway. When a policy asks for it to be
kept (for an audit), ``sealed()`` gives it encrypted with ``lib.crypto`` (AES-256-GCM under
``JETSTREAM_ENCRYPTION_KEYS``) and ``Masker.unseal`` reads it back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import orjson

from lib import crypto

from .findings import Action, Category, Finding

SEAL_CONTEXT = "moderation-mapping"  # bound into the GCM associated data: a sealed mapping is no other secret
# A placeholder as this module writes it: "[" + an upper-case stem + "_" + a number + "]".
PLACEHOLDER = re.compile(r"\[([A-Z][A-Z_]*)_([1-9][0-9]*)\]")


class Masker:
    """One request's mapping of masked values to placeholders (and back).

    ``values`` maps a placeholder (``"[PHONE_1]"``) to the original value; placeholders are numbered
    per category in the order their values are first met. ``reserved``: placeholder-shaped strings the
    request already holds as text (a client quoting ``[PHONE_1]``): never given to a value, so an answer
    repeating that text is not "restored" into someone's number."""

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self.reserved = frozenset(reserved)
        self.values: dict[str, str] = {}
        self._by_value: dict[tuple[Category, str], str] = {}
        self._counts: dict[Category, int] = {}
        self._prefixes: frozenset[str] | None = None  # every proper prefix of a placeholder (StreamRestorer)

    def __bool__(self) -> bool:
        return bool(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def placeholder(self, category: Category, value: str) -> str:
        """The placeholder for ``value`` of ``category``: the one it already has in this request, else the next number."""
        key = (category, value)
        known = self._by_value.get(key)
        if known is not None:
            return known
        number = self._counts.get(category, 0) + 1
        while f"[{category.placeholder_stem}_{number}]" in self.reserved:
            number += 1
        self._counts[category] = number
        placeholder = f"[{category.placeholder_stem}_{number}]"
        self._by_value[key] = placeholder
        self.values[placeholder] = value
        self._prefixes = None
        return placeholder

    def mask(self, text: str, findings: Iterable[Finding]) -> str:
        """``text`` with the span of every ``MASK`` finding replaced by its placeholder. Spans are
        offsets in code points of ``text``; overlapping spans (the scanner resolves them, but a
        caller may not have) keep the one that starts first, then the longer."""
        spans = sorted((f.detection for f in findings if f.action == Action.MASK), key=lambda d: (d.start, -d.end))
        out: list[str] = []
        at = 0
        for detection in spans:
            if detection.start < at or detection.end <= detection.start:
                continue
            out.append(text[at:detection.start])
            out.append(self.placeholder(detection.category, text[detection.start:detection.end]))
            at = detection.end
        if not out:
            return text
        out.append(text[at:])
        return "".join(out)

    def restore(self, text: str) -> str:
        """``text`` with every known placeholder replaced by its value (unknown ones stay as they are)."""
        if not self.values or "[" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self.values.get(m.group(0), m.group(0)), text)

    def restore_escaped(self, text: str) -> str:
        """``text`` (JSON text, or a piece of it inside a string) with every known placeholder
        replaced by its value escaped for a JSON string (quotes, backslashes, control characters)."""
        if not self.values or "[" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: _json_escaped(self.values[m.group(0)]) if m.group(0) in self.values else m.group(0), text)

    def restore_json(self, arguments: str) -> str:
        """Tool-call ``arguments`` (a JSON text) with the values restored inside its decoded strings
        (keys included) and re-encoded; a text that is not JSON gets the escaped replacement."""
        if not self.values or "[" not in arguments:
            return arguments
        try:
            decoded = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return self.restore_escaped(arguments)
        return orjson.dumps(self._restore_value(decoded)).decode()

    def _restore_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.restore(value)
        if isinstance(value, list):
            return [self._restore_value(v) for v in value]
        if isinstance(value, dict):
            return {self.restore(k): self._restore_value(v) for k, v in value.items()}
        return value

    def prefixes(self) -> frozenset[str]:
        """Every proper, non-empty prefix of a known placeholder (what a stream may have to hold back)."""
        if self._prefixes is None:
            self._prefixes = frozenset(p[:i] for p in self.values for i in range(1, len(p)))
        return self._prefixes

    def restorer(self, *, json_string: bool = False) -> StreamRestorer:
        """A fresh incremental restorer over this mapping (``json_string``: the text is JSON, such as
        streamed tool-call arguments, and values are written escaped)."""
        return StreamRestorer(self, json_string=json_string)

    def sealed(self) -> str:
        """The mapping encrypted with ``lib.crypto`` (a self-describing token; only for a policy that
        keeps mappings)."""
        return crypto.encrypt(orjson.dumps(self.values).decode(), context=SEAL_CONTEXT)

    @classmethod
    def unseal(cls, token: str) -> Masker:
        """A masker with the mapping ``sealed`` gave. Raises ``lib.crypto.SecretDecryptionError`` for a token it cannot decrypt."""
        masker = cls()
        for placeholder, value in orjson.loads(crypto.decrypt(token, context=SEAL_CONTEXT)).items():
            match = PLACEHOLDER.fullmatch(placeholder)
            if match is None:
                continue
            category = next((c for c in Category if c.placeholder_stem == match.group(1)), None)
            if category is None:
                continue
            masker.values[placeholder] = value
            masker._by_value[(category, value)] = placeholder
            masker._counts[category] = max(masker._counts.get(category, 0), int(match.group(2)))
        return masker


def placeholders_in(raw: bytes) -> set[str]:
    """The placeholder-shaped strings in ``raw`` (a request body): a ``Masker``'s ``reserved``."""
    return {match.group(0).decode() for match in PLACEHOLDER_BYTES.finditer(raw)} if b"[" in raw else set()


PLACEHOLDER_BYTES = re.compile(PLACEHOLDER.pattern.encode())


def _json_escaped(value: str) -> str:
    return orjson.dumps(value).decode()[1:-1]


class StreamRestorer:
    """Restores placeholders in a text that arrives in pieces.

    ``feed(piece)`` returns what can be sent now: everything received, restored, except a tail that
    is still a proper prefix of a known placeholder (``"[PHO"`` when ``[PHONE_1]`` is known) — held
    until the next piece completes it or proves it is something else. ``finish()`` returns what is
    held at the end of the stream. Nothing is ever held that could not become a placeholder, so a
    text without ``[`` passes through at once."""

    __slots__ = ("_held", "_json", "_masker")

    def __init__(self, masker: Masker, *, json_string: bool = False) -> None:
        self._masker = masker
        self._json = json_string
        self._held = ""

    @property
    def held(self) -> str:
        """The text held back so far."""
        return self._held

    def feed(self, piece: str) -> str:
        """What can be sent after ``piece`` arrived (restored)."""
        text = self._held + piece
        if "[" not in text:
            self._held = ""
            return text
        cut = self._holdback_start(text)
        self._held = text[cut:]
        return self._restore(text[:cut])

    def finish(self) -> str:
        """The held tail (restored where it can be), at the end of the stream."""
        text, self._held = self._held, ""
        return self._restore(text)

    def _restore(self, text: str) -> str:
        return self._masker.restore_escaped(text) if self._json else self._masker.restore(text)

    def _holdback_start(self, text: str) -> int:
        """Where the tail that may still become a placeholder starts (``len(text)``: none)."""
        prefixes = self._masker.prefixes()
        start = text.rfind("[")
        # Only the last "[" can open an unfinished placeholder: a placeholder has no "[" inside.
        if start >= 0 and text[start:] in prefixes:
            return start
        return len(text)
