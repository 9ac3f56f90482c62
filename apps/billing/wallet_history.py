"""A company wallet's history: the ledger transfers that credit or debit it, newest first, a page
at a time with keyset pagination (never OFFSET: a busy wallet has a transfer per request).

Rows come in the order the ledger wrote them (transfer id; ``created_at`` is each writer's clock
— the meter stamps a batch with its transaction's start — so it may tie or run behind the id).
A page is read as two index range scans — the wallet's debits and its credits
(``transfer_debit_id``, ``transfer_credit_id``: account, id) — each cut at the cursor and limited,
merged and cut again. The cursor is signed (``django.core.signing``): it carries the position (the
last id shown) and, for the unfiltered history, the wallet's posted balance just after the next
row, so every row shows the balance after it without summing the rows that came later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core import signing

from apps.billing import services as ledger
from apps.billing.models import Transfer, TransferStatus

_SALT = "jetstream.wallet-history"
PAGE_SIZE = 50


class BadCursor(ValueError):
    """A history cursor that was not made by ``wallet_history`` (tampered with, or from another wallet)."""


@dataclass(frozen=True)
class WalletEntry:
    """One transfer as the wallet sees it: ``amount`` signed micro-RUB (+ credited to the wallet,
    − debited), ``balance_after`` the wallet's posted balance right after it (None when the history
    is filtered or the transfer is not posted), ``request_id`` for usage."""

    transfer: Transfer
    amount: int
    balance_after: int | None

    @property
    def request_id(self) -> str:
        """The API request a usage transfer charged ("" for other kinds)."""
        return str((self.transfer.metadata or {}).get("request_id", ""))


@dataclass(frozen=True)
class WalletPage:
    """A page of ``entries`` and the ``next_cursor`` to the older ones (None at the end)."""

    entries: list[WalletEntry]
    next_cursor: str | None


def wallet_history(*, company: Any, cursor: str = "", kinds: tuple[str, ...] = (), limit: int = PAGE_SIZE) -> WalletPage:
    """A page of the company wallet's transfers, newest first: those of ``kinds`` (``TransferKind``
    values; empty = all), older than ``cursor`` (from the previous page; "" = the newest).
    Amounts are micro-RUB. Raises ``BadCursor`` for a cursor this function did not make for this
    wallet and filter."""
    wallet = ledger.company_wallet(company)
    position = _read_cursor(cursor, wallet.pk, kinds) if cursor else None
    rows: list[Transfer] = []
    for side in ("debit_account", "credit_account"):
        queryset = Transfer.objects.filter(**{side: wallet})
        if kinds:
            queryset = queryset.filter(kind__in=kinds)
        if position is not None:
            queryset = queryset.filter(id__lt=position["i"])
        rows += list(queryset.order_by("-id")[: limit + 1])
    rows.sort(key=lambda t: t.pk, reverse=True)
    more = len(rows) > limit
    rows = rows[:limit]
    balance = None
    if not kinds:
        balance = position["b"] if position is not None else ledger.balance(wallet).posted
    entries = []
    for transfer in rows:
        amount = transfer.amount if transfer.credit_account_id == wallet.pk else -transfer.amount
        posted = transfer.status == TransferStatus.POSTED
        entries.append(WalletEntry(transfer, amount, balance if posted else None))
        if balance is not None and posted:
            balance -= amount
    next_cursor = None
    if more and rows:
        last = rows[-1]
        next_cursor = signing.dumps({"w": wallet.pk, "k": list(kinds), "i": last.pk, "b": balance},
                                    salt=_SALT, compress=True)
    return WalletPage(entries, next_cursor)


def _read_cursor(cursor: str, wallet_id: int, kinds: tuple[str, ...]) -> dict[str, Any]:
    try:
        data = signing.loads(cursor, salt=_SALT)
        if data["w"] != wallet_id or tuple(data["k"]) != tuple(kinds):
            raise BadCursor("the cursor belongs to another wallet or filter")
        return {"i": int(data["i"]), "b": data["b"]}
    except (signing.BadSignature, KeyError, TypeError, ValueError) as exc:
        raise BadCursor(str(exc)) from None
