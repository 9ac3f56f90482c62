"""The ledger's own exception hierarchy: catch ``LedgerError`` for all of them.

Messages are user-visible (a cabinet may show them), so they go through gettext and name
amounts in rubles; the raw values stay on the exception's attributes for code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.utils.translation import gettext as _

from lib.money import format_rub

if TYPE_CHECKING:
    from apps.billing.models import Account, Transfer


class LedgerError(Exception):
    """Base class of every error the ledger services raise on purpose."""


class InvalidAmount(LedgerError, ValueError):
    """An amount that is not a positive integer number of micro-rubles (or is out of range)."""

    def __init__(self, amount: object, reason: str) -> None:
        self.amount = amount
        self.reason = reason
        super().__init__(reason)


class InvalidTransfer(LedgerError, ValueError):
    """Any other malformed request: same account on both sides, a bad idempotency id, kind, expiry."""


class InsufficientFunds(LedgerError):
    """The debit account must not go negative and this amount does not fit."""

    def __init__(self, account: Account, requested: int, available: int) -> None:
        self.account = account
        self.requested = requested
        self.available = available
        super().__init__(
            _("Insufficient funds on %(account)s: requested %(requested)s RUB, available %(available)s RUB.")
            % {"account": account, "requested": format_rub(requested, 6), "available": format_rub(available, 6)}
        )


class IdempotencyConflict(LedgerError):
    """The idempotency id was already used for a different transfer."""

    def __init__(self, idempotency_id: str, existing: Transfer) -> None:
        self.idempotency_id = idempotency_id
        self.existing = existing
        super().__init__(
            _("Idempotency id %(id)r was already used for a different transfer (#%(pk)s).")
            % {"id": idempotency_id, "pk": existing.pk}
        )


class HoldNotPending(LedgerError):
    """The hold is no longer open (committed, voided or expired), or the transfer is not a hold."""

    def __init__(self, hold: Transfer, message: str | None = None) -> None:
        self.hold = hold
        super().__init__(
            message
            or _("Hold #%(pk)s is %(status)s, not pending.") % {"pk": hold.pk, "status": hold.get_status_display()}
        )


class HoldExpired(HoldNotPending):
    """The hold timed out; its money went back to the debit account."""

    def __init__(self, hold: Transfer) -> None:
        super().__init__(hold, _("Hold #%(pk)s expired; its amount was released.") % {"pk": hold.pk})
