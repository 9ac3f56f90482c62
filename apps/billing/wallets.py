"""Company wallet sums as the proxy's Redis spend counters mirror them.

The proxy keeps, per company, the wallet's posted credits and debits and its credit limit less
open ledger holds (see apps/proxy/redis_scripts.py); these readers are where those three numbers
come from. All amounts are integer micro-rubles, read from the database at call time (after a
commit, they include it).
"""

from __future__ import annotations

from typing import NamedTuple, cast

from django.db import models

from apps.billing import services as ledger
from apps.billing.models import Account, AccountKind


class WalletSums(NamedTuple):
    """One wallet's sums, micro-RUB. Unpacks as ``(posted_credits, posted_debits, limit_less_holds)``."""

    posted_credits: int
    posted_debits: int
    limit_less_holds: int  # credit limit − pending (held) debits; may be negative


def wallet_sums(company_ids: list[int] | None) -> dict[int, WalletSums]:
    """``{company_id: WalletSums}`` for the companies among ``company_ids`` that have a wallet
    (``None``: every company that has one).

    A company without a wallet yet is absent from the answer (nothing is created). One query.
    """
    wallets = Account.objects.filter(kind=AccountKind.COMPANY_WALLET)
    if company_ids is not None:
        wallets = wallets.filter(company_id__in=company_ids)
    rows = wallets.values_list("company_id", "posted_credits", "posted_debits", "credit_limit", "pending_debits")
    return {company: WalletSums(credits, debits, limit - pending) for company, credits, debits, limit, pending in rows}


def company_wallet_sums(company_id: int) -> WalletSums:
    """The company's ``WalletSums``, its wallet created first if it has none yet (micro-RUB).

    Raises the company model's ``DoesNotExist`` for an unknown ``company_id``.
    """
    # accounts.Company through the wallet's foreign key: billing sits below accounts in the layering.
    company_model = cast("type[models.Model]", Account._meta.get_field("company").related_model)
    ledger.company_wallet(company_model._default_manager.get(pk=company_id))
    return wallet_sums([company_id])[company_id]
