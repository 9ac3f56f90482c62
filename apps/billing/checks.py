"""Argument checks of the ledger services: bad input is refused with ``InvalidTransfer`` /
``InvalidAmount`` before any SQL runs (amounts are ``int`` micro-rubles)."""

from __future__ import annotations

import json

from django.utils.translation import gettext as _

from apps.billing.exceptions import InvalidAmount, InvalidTransfer
from apps.billing.models import Account, Transfer, TransferKind

BIGINT_MAX = 2**63 - 1  # the amount columns are PostgreSQL bigint
_IDEMPOTENCY_ID_MAX: int = Transfer._meta.get_field("idempotency_id").max_length or 0
_DESCRIPTION_MAX: int = Transfer._meta.get_field("description").max_length or 0


def check_amount(amount: object, *, allow_zero: bool = False) -> None:
    """Raise ``InvalidAmount`` unless ``amount`` is an ``int`` (not a bool) of micro-rubles in
    1..2**63-1 (0 too with ``allow_zero``)."""
    # bool is an int subclass; Decimal and float are never money inside the ledger.
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise InvalidAmount(amount, _("An amount is a whole number of micro-rubles (int), got %(type)s.")
                            % {"type": type(amount).__name__})
    if amount < 0 or (amount == 0 and not allow_zero):
        raise InvalidAmount(amount, _("An amount must be greater than zero, got %(amount)s.") % {"amount": amount})
    if amount > BIGINT_MAX:
        raise InvalidAmount(amount, _("An amount must not exceed %(max)s micro-rubles.") % {"max": BIGINT_MAX})


def check_idempotency_id(idempotency_id: object) -> None:
    """Raise ``InvalidTransfer`` unless it is a non-blank ``str`` no longer than the column
    (``Transfer.idempotency_id``, 200 characters) and without NUL."""
    if not isinstance(idempotency_id, str) or not idempotency_id.strip():
        raise InvalidTransfer(_("An idempotency id is a non-empty string."))
    if len(idempotency_id) > _IDEMPOTENCY_ID_MAX or "\x00" in idempotency_id:
        raise InvalidTransfer(_("An idempotency id has at most %(max)s characters and no NUL bytes.") % {"max": _IDEMPOTENCY_ID_MAX})


def check_kind(kind: object) -> None:
    """Raise ``InvalidTransfer`` unless ``kind`` is a ``TransferKind`` value."""
    if kind not in TransferKind.values:
        raise InvalidTransfer(_("Unknown transfer kind %(kind)r.") % {"kind": kind})


def check_text(*, description: object, metadata: object) -> None:
    """Raise ``InvalidTransfer`` unless ``description`` is a ``str`` that fits its column (300
    characters) without NUL, and ``metadata`` is None or a JSON-serialisable dict."""
    if not isinstance(description, str) or len(description) > _DESCRIPTION_MAX or "\x00" in description:
        raise InvalidTransfer(_("A description is a string of at most %(max)s characters.") % {"max": _DESCRIPTION_MAX})
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise InvalidTransfer(_("Metadata is a dict."))
        try:
            json.dumps(metadata)
        except (TypeError, ValueError):
            raise InvalidTransfer(_("Metadata must be JSON-serialisable.")) from None


def check_common(*, idempotency_id: object, debit: object, credit: object, kind: object, description: object,
                  metadata: object) -> None:
    """The checks every transfer takes: the idempotency id, two different saved ``Account``s, the
    kind, the description and metadata. Raises ``InvalidTransfer``."""
    check_idempotency_id(idempotency_id)
    for side, account in (("debit", debit), ("credit", credit)):
        if not isinstance(account, Account) or account.pk is None:
            raise InvalidTransfer(_("The %(side)s side must be a saved ledger account.") % {"side": side})
    assert isinstance(debit, Account) and isinstance(credit, Account)  # checked just above
    if debit.pk == credit.pk:
        raise InvalidTransfer(_("A transfer needs two different accounts."))
    check_kind(kind)
    check_text(description=description, metadata=metadata)
