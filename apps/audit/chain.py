"""The hash chain: canonical JSON, the row hash, and the walk that checks them.

Each row's ``hash`` is ``sha256(canonical_payload(row))`` in hex. The payload is the row's content
(everything but ``id``, ``seq`` and ``hash``) *including* ``prev_hash``, serialised as JSON with
sorted keys, no whitespace, UTF-8, the time as ISO 8601 UTC with microseconds. So editing any field
breaks the row's own hash; deleting a row breaks the next row's link; moving a row (changing the
order ``seq`` gives) breaks the links around it while every hash stays valid — ``verify_chain``
tells the three apart and names the first broken link.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64

#: The fields a row's hash covers, besides ``prev_hash`` (kept in this order only for readers).
HASHED_FIELDS = ("occurred_at", "actor_id", "actor_email", "actor_role", "company_id", "supplier_id", "action",
                 "object_type", "object_id", "object_label", "before", "after", "client_ip", "request_id")


def canonical_json(value: Any) -> bytes:
    """``value`` as canonical JSON bytes: sorted keys, no whitespace, UTF-8 (not ASCII-escaped)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def format_time(moment: dt.datetime) -> str:
    """An aware datetime as the chain writes it: ISO 8601 in UTC with microseconds ("2026-11-30T01:02:03.000004Z")."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_payload(row: Any) -> dict[str, Any]:
    """The dict a row's hash is computed over (``row``: an ``AuditEvent`` or anything with its attributes)."""
    payload = {name: getattr(row, name) for name in HASHED_FIELDS}
    payload["occurred_at"] = format_time(row.occurred_at)
    payload["prev_hash"] = row.prev_hash
    return payload


def row_hash(row: Any) -> str:
    """The SHA-256 (64 lowercase hex characters) of ``row``'s canonical payload."""
    return hashlib.sha256(canonical_json(canonical_payload(row))).hexdigest()


@dataclass(frozen=True)
class Break:
    """The first broken link: ``kind`` is ``edited`` (the row's content no longer matches its hash),
    ``deleted`` (the row it was chained after is gone — deleted, or rewritten with a new hash),
    ``reordered`` (it was chained after another row that still exists elsewhere) or ``renumbered``
    (the links hold but ``seq`` skips or repeats); ``seq`` / ``id`` name the row where the walk
    stopped, ``message`` says it in English for operators' logs."""

    kind: str
    seq: int
    id: int
    message: str


@dataclass(frozen=True)
class Verification:
    """The outcome of a walk: rows checked, the last good row's ``seq`` and ``hash`` (the head, or
    where the chain broke), and the first ``Break`` (None when the chain is whole)."""

    checked: int
    head_seq: int
    head_hash: str
    broken: Break | None

    @property
    def ok(self) -> bool:
        """True when no link is broken."""
        return self.broken is None


def walk(rows: Iterable[Any], *, find_seq_by_hash) -> Verification:
    """Check ``rows`` (in ``seq`` order) link by link and stop at the first break.

    ``find_seq_by_hash(hash)`` returns the ``seq`` of the row whose stored hash is ``hash``, or None;
    it is asked only at a broken link, to tell a moved row from a deleted one.
    """
    prev_hash, prev_seq, checked = GENESIS, 0, 0
    for row in rows:
        broken = _check(row, prev_hash, prev_seq, find_seq_by_hash)
        if broken is not None:
            return Verification(checked, prev_seq, prev_hash, broken)
        prev_hash, prev_seq, checked = row.hash, row.seq, checked + 1
    return Verification(checked, prev_seq, prev_hash, None)


def _check(row: Any, prev_hash: str, prev_seq: int, find_seq_by_hash) -> Break | None:
    if row_hash(row) != row.hash:
        return Break("edited", row.seq, row.pk, f"row seq={row.seq} id={row.pk} ({row.action}) was edited: its content no longer matches its hash")
    if row.prev_hash != prev_hash:
        if row.prev_hash == GENESIS:
            return Break("reordered", row.seq, row.pk,
                         f"row seq={row.seq} id={row.pk} is the chain's first row but comes after seq={prev_seq}")
        other = find_seq_by_hash(row.prev_hash)
        if other is not None:
            return Break("reordered", row.seq, row.pk,
                         f"row seq={row.seq} id={row.pk} was appended after row seq={other} but now follows seq={prev_seq}: rows were reordered")
        return Break("deleted", row.seq, row.pk,
                     f"the row before seq={row.seq} id={row.pk} is missing (after seq={prev_seq}): it was deleted or rewritten")
    if row.seq != prev_seq + 1:
        return Break("renumbered", row.seq, row.pk, f"row seq={row.seq} id={row.pk} follows seq={prev_seq}: sequence numbers were changed")
    return None
