"""Structure of JSON text read from its bytes, without parsing it into objects.

The hot path needs two facts about JSON it may not want to build objects for: how deep a request
body nests (to refuse it at the door) and how deep one spot of an answer sits (to rename its
top-level ``model``). Both come from the brackets that stand outside strings. Every step here
is a C-level bytes operation (``translate``, ``replace``, ``split``), so the cost is a few passes
over the bytes, never a Python loop per byte.

The results are exact for valid JSON (RFC 8259); for invalid JSON they are some number, and the
parser that runs next reports the real problem.
"""

from __future__ import annotations

_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'"[]{}')
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")


def brackets_outside_strings(raw: bytes) -> bytes:
    """The ``(`` and ``)`` of ``raw``'s arrays and objects in order (``[``/``{`` → ``(``, ``]``/``}`` →
    ``)``), leaving out brackets inside strings."""
    if b"\\" in raw:
        # Outside strings valid JSON has no backslash, and inside one every backslash starts a
        # two-byte escape; a left-to-right pass drops the escaped backslashes first, so each
        # `\"` left is an escaped quote, not a string's end.
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Only quotes and brackets matter. An adjacent pair of quotes has no bracket between them, so
    # dropping it (an empty string, or one string's end and the next one's start) leaves every
    # other quote's parity, and so what is inside a string, as it was.
    marks = raw.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in marks:  # strings holding brackets: keep what lies between them
        marks = b"".join(marks.split(b'"')[::2])
    return marks.translate(_AS_PARENS)


def nesting_exceeds(raw: bytes, limit: int) -> bool:
    """Whether the JSON text ``raw`` nests arrays and objects more than ``limit`` levels deep
    (``{}`` is 1 level, ``{"a": [1]}`` 2)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:  # most bodies: fewer brackets than the limit
        return False
    parens = brackets_outside_strings(raw)
    # Each pass removes the innermost pairs, one level everywhere at once.
    for _ in range(limit):
        shorter = parens.replace(b"()", b"")
        if len(shorter) == len(parens):
            return False  # unbalanced (not JSON): the parser says so
        parens = shorter
    return bool(parens)


def depth_at_end(prefix: bytes) -> int:
    """How many arrays and objects are open at the end of ``prefix`` (the start of a JSON text):
    1 right inside the outermost object."""
    parens = brackets_outside_strings(prefix)
    return parens.count(b"(") - parens.count(b")")
