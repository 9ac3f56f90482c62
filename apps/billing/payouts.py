"""Payout batches: approved withdrawal requests paid in one run, with a registry file for accounting.

``run_payouts`` (the Celery task ``apps.billing.tasks.pay_approved_withdrawals``) takes every
APPROVED request, posts its ledger hold (payable → platform cash, kind ``payout``, idempotency id
``payout:<request idempotency id>``), marks it PAID and puts it in a new ``PayoutBatch``. A
request whose hold has expired is marked LAPSED instead (nothing paid). Running it again pays
nothing twice: a paid request is no longer APPROVED, and a crash between posting and marking
is repaired on the next run by the posting's idempotency id.

The registry (``registry_dataset``, ``registry_file``) lists a batch's payments with the payout
details each request was made with, and a total row; amounts in micro-RUB and RUB.
"""

from __future__ import annotations

import logging

import tablib
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.billing import withdrawals
from apps.billing.exceptions import HoldExpired, HoldNotPending
from apps.billing.models import PAYOUT_DETAIL_FIELDS, PayoutBatch, WithdrawalRequest, WithdrawalStatus
from apps.billing.suppliers import export_dataset, mark_lapsed_withdrawals
from lib.money import format_rub

logger = logging.getLogger("jetstream.billing")


def run_payouts(*, limit: int = 1000) -> PayoutBatch | None:
    """Pay up to ``limit`` approved withdrawal requests (oldest first) in one new batch; return
    the batch, or None when there was nothing to pay. One transaction: the batch, its ledger
    postings and the requests' statuses commit together or not at all.
    """
    mark_lapsed_withdrawals()
    with transaction.atomic():
        # Race: two payout runs, or a run and a superadmin rejecting. SKIP LOCKED leaves a row
        # another transaction holds to it; a row rejected meanwhile is no longer APPROVED when
        # PostgreSQL re-checks it under the lock.
        approved = list(WithdrawalRequest.objects.select_for_update(skip_locked=True, of=("self",))
                        .filter(status=WithdrawalStatus.APPROVED).select_related("hold").order_by("id")[:limit])
        if not approved:
            return None
        batch = PayoutBatch.objects.create()
        paid = [request for request in approved if _pay(request, batch)]
        if not paid:
            batch.delete()  # nothing references it: every request lapsed
            return None
        batch.count = len(paid)
        batch.total = sum(request.amount for request in paid)
        batch.save(update_fields=["count", "total"])
    logger.info("payout batch #%s: %d withdrawals, %s micro-RUB", batch.pk, batch.count, batch.total)
    return batch


def _pay(request: WithdrawalRequest, batch: PayoutBatch) -> bool:
    try:
        payment = withdrawals.pay_withdrawal(withdrawal=request.hold, idempotency_id=f"payout:{request.idempotency_id}")
    except HoldExpired:
        # pay_withdrawal expired the hold in its own savepoint; that stays.
        request.status = WithdrawalStatus.LAPSED
        request.save(update_fields=["status"])
        return False
    except HoldNotPending:
        logger.error("withdrawal request #%s is approved but its hold #%s is %s; left for an operator",
                     request.pk, request.hold_id, request.hold.status)
        return False
    request.status = WithdrawalStatus.PAID
    request.payment = payment
    request.batch = batch
    request.paid_at = timezone.now()
    request.save(update_fields=["status", "payment", "batch", "paid_at"])
    return True


REGISTRY_HEADERS = ["batch", "withdrawal", "supplier", *PAYOUT_DETAIL_FIELDS, "amount_micro_rub", "amount_rub",
                    "ledger_transfer", "paid_at"]


def registry_dataset(batch: PayoutBatch) -> tablib.Dataset:
    """The batch's registry: one row per paid request (``REGISTRY_HEADERS``), then a total row
    whose amount equals ``batch.total``."""
    data = tablib.Dataset(headers=REGISTRY_HEADERS, title=_("Payout batch %(pk)s") % {"pk": batch.pk})
    total = 0
    for request in batch.withdrawals.select_related("supplier").order_by("id"):
        details = [str(request.payout_details.get(name, "")) for name in PAYOUT_DETAIL_FIELDS]
        data.append([batch.pk, request.pk, request.supplier.name, *details, request.amount,
                     format_rub(request.amount, 2, exact=True), request.payment_id,
                     timezone.localtime(request.paid_at).isoformat() if request.paid_at else ""])
        total += request.amount
    blanks = [""] * len(PAYOUT_DETAIL_FIELDS)
    data.append([batch.pk, "", _("Total"), *blanks, total, format_rub(total, 2, exact=True), "", ""])
    return data


def registry_file(batch: PayoutBatch, fmt: str) -> tuple[str, bytes]:
    """``(file name, bytes)`` of the batch's registry as ``csv`` or ``xlsx``. Raises ``ValueError``
    for another format."""
    return f"payout-batch-{batch.pk}.{fmt}", export_dataset(registry_dataset(batch), fmt)
