"""The ledger (double entry, TigerBeetle-style balances), usage records and FX rates.

Amounts are integer micro-rubles. An account keeps four running sums; its balance is derived
from them. For a wallet (a liability: money the platform holds for a company) the available
balance is ``posted_credits - posted_debits - pending_debits``. Invariants the database enforces:
amounts > 0, sums >= 0, and for accounts flagged ``debits_must_not_exceed_credits``
``posted_debits + pending_debits <= posted_credits + credit_limit``. Transfers are never
deleted; a posted transfer is never updated; a pending one changes status exactly once (see
migration 0002's trigger).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import F, Q
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy


class AccountKind(models.TextChoices):
    """What a ledger account is for: per company, department or supplier, or one of the platform's own."""

    COMPANY_WALLET = "company_wallet", _("Company wallet")
    DEPARTMENT_BUDGET = "department_budget", _("Department budget")
    SUPPLIER_PAYABLE = "supplier_payable", _("Supplier payable")
    PLATFORM_REVENUE = "platform_revenue", _("Platform revenue")
    UPSTREAM_COST = "upstream_cost", _("Upstream cost")
    PLATFORM_CASH = "platform_cash", _("Platform cash (incoming payments, payouts)")
    PLATFORM_HARDWARE = "platform_hardware", _("Platform hardware (own local nodes' cost)")


# Kinds that exist once for the whole platform.
PLATFORM_KINDS = (AccountKind.PLATFORM_REVENUE, AccountKind.UPSTREAM_COST, AccountKind.PLATFORM_CASH,
                  AccountKind.PLATFORM_HARDWARE)


class Account(models.Model):
    """A ledger account: four running sums (micro-RUB) that only the database triggers on
    ``Transfer`` change; balances derive from them (``credit_balance``, ``available``).

    With ``debits_must_not_exceed_credits`` (wallets) the database refuses any transfer taking
    ``posted_debits + pending_debits`` beyond ``posted_credits + credit_limit``."""

    kind = models.CharField(_("kind"), max_length=32, choices=AccountKind.choices)
    company = models.ForeignKey("accounts.Company", on_delete=models.PROTECT, null=True, blank=True, related_name="ledger_accounts", verbose_name=_("company"))
    department = models.ForeignKey("accounts.Department", on_delete=models.PROTECT, null=True, blank=True, related_name="ledger_accounts", verbose_name=_("department"))
    supplier = models.ForeignKey("accounts.Supplier", on_delete=models.PROTECT, null=True, blank=True, related_name="ledger_accounts", verbose_name=_("supplier"))
    currency = models.CharField(_("currency"), max_length=3, default="RUB", editable=False)
    posted_debits = models.BigIntegerField(_("posted debits"), default=0, editable=False)
    posted_credits = models.BigIntegerField(_("posted credits"), default=0, editable=False)
    pending_debits = models.BigIntegerField(_("pending debits"), default=0, editable=False)
    pending_credits = models.BigIntegerField(_("pending credits"), default=0, editable=False)
    debits_must_not_exceed_credits = models.BooleanField(_("must not go negative"), default=False)
    credit_limit = models.BigIntegerField(_("credit limit, micro-RUB"), default=0,
                                          help_text=_("How far debits may exceed credits when the account must not go negative."))
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("ledger account")
        verbose_name_plural = _("ledger accounts")
        ordering = ["kind", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(posted_debits__gte=0, posted_credits__gte=0, pending_debits__gte=0, pending_credits__gte=0, credit_limit__gte=0),
                name="account_sums_non_negative",
            ),
            models.CheckConstraint(
                condition=Q(debits_must_not_exceed_credits=False)
                | Q(posted_credits__gte=F("posted_debits") + F("pending_debits") - F("credit_limit")),
                name="account_debits_within_credits",
            ),
            models.UniqueConstraint(fields=["kind", "company"], condition=Q(kind="company_wallet"), name="one_wallet_per_company"),
            models.UniqueConstraint(fields=["kind", "department"], condition=Q(kind="department_budget"), name="one_budget_per_department"),
            models.UniqueConstraint(fields=["kind", "supplier"], condition=Q(kind="supplier_payable"), name="one_payable_per_supplier"),
            models.UniqueConstraint(fields=["kind"], condition=Q(kind__in=[k.value for k in PLATFORM_KINDS]), name="one_platform_account_per_kind"),
            models.CheckConstraint(
                condition=(Q(kind="company_wallet", company__isnull=False) | ~Q(kind="company_wallet"))
                & (Q(kind="department_budget", department__isnull=False) | ~Q(kind="department_budget"))
                & (Q(kind="supplier_payable", supplier__isnull=False) | ~Q(kind="supplier_payable")),
                name="account_owner_present",
            ),
        ]

    def __str__(self) -> str:
        owner = self.company or self.department or self.supplier
        return f"{self.get_kind_display()}{f' — {owner}' if owner else ''}"

    @property
    def credit_balance(self) -> int:
        """Posted credits minus posted debits (what a wallet holds, what a payable owes)."""
        return self.posted_credits - self.posted_debits

    @property
    def available(self) -> int:
        """What may still be debited: posted balance less open holds, plus any credit limit."""
        return self.posted_credits - self.posted_debits - self.pending_debits + self.credit_limit


class TransferStatus(models.TextChoices):
    """POSTED at once, or PENDING (a hold) until it becomes COMMITTED, VOIDED or EXPIRED, exactly once."""

    PENDING = "pending", _("Pending (hold)")
    POSTED = "posted", _("Posted")
    # A hold's final states. A posted hold is "committed": its money moved in a separate
    # posted transfer that points back at it (so sums of posted transfers never double count).
    COMMITTED = "committed", _("Committed (hold posted)")
    VOIDED = "voided", _("Voided (hold released)")
    EXPIRED = "expired", _("Expired (hold timed out)")


class TransferKind(models.TextChoices):
    """Why the money moved, kept on each transfer (top-up, usage at sell or buy price, hold, payout, …)."""

    TOP_UP = "top_up", _("Top-up")
    USAGE = "usage", _("Usage (sell price)")
    USAGE_COST = "usage_cost", _("Usage cost (buy price)")
    HOLD = "hold", _("Hold")
    PAYOUT = "payout", _("Supplier payout")
    CORRECTION = "correction", _("Correction")
    TRANSFER = "transfer", _("Transfer")


class Transfer(models.Model):
    """``amount`` micro-RUB (> 0) from ``debit_account`` to ``credit_account``; never deleted.

    A POSTED transfer is immutable. A PENDING one is a hold, with ``expires_at``; it is resolved
    once (``resolved_at``), and a committed hold's money moves in a separate posted transfer whose
    ``pending`` points at it (one per hold). ``idempotency_id`` is unique across the ledger.
    """

    idempotency_id = models.CharField(_("idempotency id"), max_length=200, unique=True)
    debit_account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="debits", verbose_name=_("debit account"))
    credit_account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="credits", verbose_name=_("credit account"))
    amount = models.BigIntegerField(_("amount, micro-RUB"))
    status = models.CharField(_("status"), max_length=16, choices=TransferStatus.choices)
    kind = models.CharField(_("kind"), max_length=16, choices=TransferKind.choices, default=TransferKind.TRANSFER)
    pending = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="resolutions", verbose_name=_("hold posted"))
    expires_at = models.DateTimeField(_("hold expires"), null=True, blank=True)
    resolved_at = models.DateTimeField(_("hold resolved"), null=True, blank=True)
    description = models.CharField(_("description"), max_length=300, blank=True)
    metadata = models.JSONField(_("metadata"), default=dict, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("transfer")
        verbose_name_plural = _("transfers")
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="transfer_amount_positive"),
            models.CheckConstraint(condition=~Q(debit_account=F("credit_account")), name="transfer_accounts_differ"),
            models.CheckConstraint(condition=~Q(status="pending") | Q(expires_at__isnull=False), name="hold_has_expiry"),
            models.UniqueConstraint(fields=["pending"], condition=Q(pending__isnull=False), name="hold_posted_once"),
        ]
        indexes = [
            models.Index(fields=["status", "expires_at"], name="transfer_open_holds", condition=Q(status="pending")),
            models.Index(fields=["debit_account", "created_at"], name="transfer_debit_time"),
            models.Index(fields=["credit_account", "created_at"], name="transfer_credit_time"),
            # A wallet's history in the order the ledger wrote it (apps/billing/wallet_history.py: keyset by id).
            models.Index(fields=["debit_account", "id"], name="transfer_debit_id"),
            models.Index(fields=["credit_account", "id"], name="transfer_credit_id"),
            # A supplier's paid-out figure (apps/billing/suppliers.py): payouts are few among millions.
            models.Index(fields=["debit_account"], name="transfer_posted_payouts", condition=Q(kind="payout", status="posted")),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.debit_account_id}→{self.credit_account_id} {self.amount} ({self.status})"


class FxRate(models.Model):
    """Rubles per one unit of a currency, versioned by time. Stored as integer micro-rubles."""

    currency = models.CharField(_("currency"), max_length=3)
    rub_per_unit = models.BigIntegerField(_("RUB per unit, micro-RUB"))
    valid_from = models.DateTimeField(_("valid from"))
    source = models.CharField(_("source"), max_length=64, blank=True, default="manual")
    # The one field that changes after insert: the source restating an unchanged rate for a later
    # date moves it forward (no new version), so an unchanged rate does not look stale.
    confirmed_for = models.DateTimeField(_("confirmed for"), null=True, blank=True,
                                         help_text=_("The latest date the source (or an operator) restated this rate for."))
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("FX rate")
        verbose_name_plural = _("FX rates")
        ordering = ["currency", "-valid_from"]
        constraints = [
            models.UniqueConstraint(fields=["currency", "valid_from"], name="fx_rate_version_unique"),
            models.CheckConstraint(condition=Q(rub_per_unit__gt=0), name="fx_rate_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.currency} {self.rub_per_unit / 1_000_000:.4f} RUB @ {self.valid_from:%Y-%m-%d}"


class FeedRun(models.Model):
    """One run of a price or FX feed (``apps.billing.fx_sources``, ``apps.providers.catalogue``):
    whether the document was accepted, how many versions it added, and why it was refused."""

    feed = models.CharField(_("feed"), max_length=32, db_index=True)
    source = models.CharField(_("source"), max_length=500)
    ok = models.BooleanField(_("accepted"))
    added = models.PositiveIntegerField(_("versions added"), default=0)
    detail = models.TextField(_("detail"), blank=True)
    created_at = models.DateTimeField(_("run at"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("feed run")
        verbose_name_plural = _("feed runs")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.feed} {'ok' if self.ok else 'FAILED'} @ {self.created_at:%Y-%m-%d %H:%M}"


class UsageStatus(models.TextChoices):
    """How an API request ended: a ``UsageRecord``'s status."""

    OK = "ok", _("Success")
    CLIENT_CLOSED = "client_closed", _("Client disconnected")
    UPSTREAM_ERROR = "upstream_error", _("Upstream error")
    REJECTED = "rejected", _("Rejected by policy")
    INVALID = "invalid", _("Invalid request")
    FAILED = "failed", _("Gateway error")


class UsageRecord(models.Model):
    """Exactly one per API request, whatever its outcome. Written idempotently by request id."""

    request_id = models.CharField(_("request id"), max_length=64, unique=True)
    token = models.ForeignKey("proxy.ApiToken", on_delete=models.PROTECT, null=True, blank=True, related_name="usage", verbose_name=_("token"))
    company = models.ForeignKey("accounts.Company", on_delete=models.PROTECT, null=True, blank=True, related_name="usage", verbose_name=_("company"))
    department = models.ForeignKey("accounts.Department", on_delete=models.PROTECT, null=True, blank=True, related_name="usage", verbose_name=_("department"))
    endpoint = models.CharField(_("endpoint"), max_length=64, blank=True)
    model_name = models.CharField(_("requested model"), max_length=128, blank=True)
    model = models.ForeignKey("providers.Model", on_delete=models.PROTECT, null=True, blank=True, related_name="usage", verbose_name=_("model"))
    provider = models.ForeignKey("providers.Provider", on_delete=models.PROTECT, null=True, blank=True, related_name="usage", verbose_name=_("provider"))
    supplier_key = models.ForeignKey("providers.SupplierKey", on_delete=models.PROTECT, null=True, blank=True, related_name="usage", verbose_name=_("supplier key"))
    node = models.ForeignKey("providers.LocalNode", on_delete=models.PROTECT, null=True, blank=True, related_name="usage",
                             verbose_name=_("local node"), help_text=_("The local node that served the request, if any."))
    price = models.ForeignKey("providers.Price", on_delete=models.PROTECT, null=True, blank=True, related_name="usage", verbose_name=_("price version"))
    fx_rub_per_unit = models.BigIntegerField(_("FX used, micro-RUB"), null=True, blank=True)
    stream = models.BooleanField(_("streaming"), default=False)
    input_tokens = models.PositiveIntegerField(_("input tokens"), default=0)
    output_tokens = models.PositiveIntegerField(_("output tokens"), default=0)
    cached_tokens = models.PositiveIntegerField(_("cached input tokens"), default=0)
    cache_write_tokens = models.PositiveIntegerField(
        _("cache-write input tokens"), default=0, db_default=0,
        help_text=_("Of the input tokens, those written to the provider's prompt cache (billed at the cache-write price)."))
    images = models.PositiveIntegerField(_("images"), default=0, db_default=0,
                                         help_text=_("Images in the request, billed at the per-image price where the model has one."))
    usage_counted_locally = models.BooleanField(_("tokens counted by the gateway"), default=False)
    sell_cost = models.BigIntegerField(_("sell cost, micro-RUB"), default=0)
    buy_cost = models.BigIntegerField(_("buy cost, micro-RUB"), default=0)
    sell_capped = models.BooleanField(
        _("sell cost capped"), default=False, db_default=False,
        help_text=_("The request cost more at the sell price than was reserved for it: the company was charged the "
                    "reservation, the supplier was owed the full buy cost."))
    sell_cost_uncapped = models.BigIntegerField(
        _("sell cost before the cap, micro-RUB"), default=0, db_default=0,
        help_text=_("What the request cost at the sell price when the cap applied (0 when it did not)."))
    status = models.CharField(_("status"), max_length=16, choices=UsageStatus.choices)
    http_status = models.PositiveSmallIntegerField(_("HTTP status"))
    error_type = models.CharField(_("error type"), max_length=64, blank=True)
    error_code = models.CharField(_("error code"), max_length=64, blank=True)
    latency_ms = models.PositiveIntegerField(_("latency, ms"), default=0)
    ttft_ms = models.PositiveIntegerField(_("time to first token, ms"), null=True, blank=True)
    client_ip = models.GenericIPAddressField(_("client IP"), null=True, blank=True)
    usage_clamped = models.BooleanField(
        _("values clamped"), default=False,
        help_text=_("A token count, cost, HTTP status or time in the usage event did not fit its column and was clamped "
                    "(the raw values are in the log with the request id)."))
    attempts = models.JSONField(
        _("upstream attempts"), default=list, blank=True,
        help_text=_("Every upstream try in order: supplier key id, the gateway's HTTP status for it (200 = answered), "
                    "its error code and milliseconds."))
    started_at = models.DateTimeField(_("started"))
    finished_at = models.DateTimeField(_("finished"))
    recorded_at = models.DateTimeField(_("recorded"), auto_now_add=True)

    class Meta:
        verbose_name = _("usage record")
        verbose_name_plural = _("usage records")
        ordering = ["-started_at"]
        indexes = [
            # The journal's keyset pages, (started_at, id) after each filter (apps/billing/journal.py).
            models.Index(fields=["company", "started_at", "id"], name="usage_company_time_id"),
            models.Index(fields=["token", "started_at", "id"], name="usage_token_time_id"),
            models.Index(fields=["department", "started_at", "id"], name="usage_department_time_id"),
            models.Index(fields=["company", "model", "started_at", "id"], name="usage_company_model_time"),
            models.Index(fields=["company", "started_at", "id"], name="usage_company_failed_time", condition=~Q(status="ok")),
            models.Index(fields=["supplier_key", "started_at"], name="usage_key_time"),
            models.Index(fields=["started_at"], name="usage_time"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(sell_cost__gte=0, buy_cost__gte=0), name="usage_costs_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model_name} {self.status}"


class UsageDay(models.Model):
    """A rollup of usage records: one row per day × company × department × token × model, kept by
    statement-level triggers on ``billing_usagerecord`` (migration 0010's ``billing_usage_day_*``:
    every insert, update and delete of usage records adds or takes away its sums, whoever writes —
    the meter, the sweeper, ``COPY``), never written by code. ``apps/billing/rollups.py`` reads it
    and rebuilds it (``rebuild_usage_days``).

    ``day`` is the record's ``started_at`` date on the company's wall clock (``Company.time_zone``;
    UTC for a record without a company). ``requests`` counts records, ``errors`` those whose status
    is not ``ok``; tokens in tokens; ``sell_cost``/``buy_cost`` micro-RUB; ``latency_ms`` the sum of
    the records' latencies (milliseconds; ÷ ``requests`` = the mean). NULL keys are equal to each
    other here (``NULLS NOT DISTINCT``)."""

    day = models.DateField(_("day (company time zone)"))
    company = models.ForeignKey("accounts.Company", on_delete=models.DO_NOTHING, null=True, blank=True, related_name="+",
                                db_constraint=False, db_index=False, verbose_name=_("company"))
    department = models.ForeignKey("accounts.Department", on_delete=models.DO_NOTHING, null=True, blank=True, related_name="+",
                                   db_constraint=False, db_index=False, verbose_name=_("department"))
    token = models.ForeignKey("proxy.ApiToken", on_delete=models.DO_NOTHING, null=True, blank=True, related_name="+",
                              db_constraint=False, db_index=False, verbose_name=_("token"))
    model = models.ForeignKey("providers.Model", on_delete=models.DO_NOTHING, null=True, blank=True, related_name="+",
                              db_constraint=False, db_index=False, verbose_name=_("model"))
    requests = models.BigIntegerField(_("requests"), default=0)
    errors = models.BigIntegerField(_("errors"), default=0)
    input_tokens = models.BigIntegerField(_("input tokens"), default=0)
    output_tokens = models.BigIntegerField(_("output tokens"), default=0)
    cached_tokens = models.BigIntegerField(_("cached input tokens"), default=0)
    sell_cost = models.BigIntegerField(_("sell cost, micro-RUB"), default=0)
    buy_cost = models.BigIntegerField(_("buy cost, micro-RUB"), default=0)
    latency_ms = models.BigIntegerField(_("latency sum, ms"), default=0)

    class Meta:
        verbose_name = _("usage per day")
        verbose_name_plural = _("usage per day")
        ordering = ["-day"]
        constraints = [
            models.UniqueConstraint(fields=["day", "company", "department", "token", "model"], nulls_distinct=False,
                                    name="usage_day_key"),
        ]
        indexes = [
            models.Index(fields=["company", "day"], name="usage_day_company"),
            models.Index(fields=["token", "day"], name="usage_day_token"),
            models.Index(fields=["department", "day"], name="usage_day_department"),
        ]

    def __str__(self) -> str:
        return f"{self.day} company {self.company_id} token {self.token_id} model {self.model_id}: {self.requests}"


# --- suppliers: payout details, withdrawal requests, payout batches (apps/billing/suppliers.py, payouts.py) ---

class SupplierPayoutDetails(models.Model):
    """Where a supplier wants to be paid: Russian bank requisites, or a card/account reference.

    A withdrawal request copies these (``snapshot()``) when it is made, so a later edit never
    changes where an approved request is paid. ``clean()`` wants either the bank requisites
    (recipient, ИНН, БИК, account) or a card/account reference.
    """

    supplier = models.OneToOneField("accounts.Supplier", on_delete=models.PROTECT, related_name="payout_details",
                                    verbose_name=_("supplier"))
    recipient = models.CharField(_("recipient"), max_length=200)
    inn = models.CharField(_("INN"), max_length=12, blank=True, validators=[RegexValidator(r"^(\d{10}|\d{12})$")])
    kpp = models.CharField(_("KPP"), max_length=9, blank=True, validators=[RegexValidator(r"^\d{9}$")])
    bank_name = models.CharField(_("bank"), max_length=200, blank=True)
    bik = models.CharField(_("BIK"), max_length=9, blank=True, validators=[RegexValidator(r"^\d{9}$")])
    account_number = models.CharField(_("settlement account"), max_length=20, blank=True,
                                      validators=[RegexValidator(r"^\d{20}$")])
    correspondent_account = models.CharField(_("correspondent account"), max_length=20, blank=True,
                                             validators=[RegexValidator(r"^\d{20}$")])
    card_reference = models.CharField(
        _("card or account reference"), max_length=64, blank=True,
        help_text=_("A reference your payment provider gives for a card or account (never a full card number)."))
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("supplier payout details")
        verbose_name_plural = _("supplier payout details")

    def __str__(self) -> str:
        return f"{self.recipient} ({self.supplier})"

    def clean(self) -> None:
        """Either complete bank requisites (ИНН, БИК, account) or a card/account reference."""
        bank = self.inn and self.bik and self.account_number
        if not bank and not self.card_reference:
            raise ValidationError(_("Give the bank requisites (INN, BIK, settlement account) or a card/account reference."))

    def snapshot(self) -> dict[str, str]:
        """The details as a plain dict, to keep on a withdrawal request."""
        return {name: getattr(self, name) for name in PAYOUT_DETAIL_FIELDS}


class PayableCreditDay(models.Model):
    """Posted credits to a supplier payable per UTC day (micro-RUB), kept by a database trigger
    on every transfer INSERT (migration 0005's ``billing_transfer_credit_days``), never written
    by code. It lets a supplier's "on hold" figure sum a few days instead of every accrual
    inside the holding period (apps/billing/suppliers.py)."""

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="credit_days", verbose_name=_("account"))
    day = models.DateField(_("day (UTC)"))
    amount = models.BigIntegerField(_("credits, micro-RUB"), default=0)

    class Meta:
        verbose_name = _("payable credits per day")
        verbose_name_plural = _("payable credits per day")
        constraints = [models.UniqueConstraint(fields=["account", "day"], name="payable_credit_day_unique")]

    def __str__(self) -> str:
        return f"{self.account_id} {self.day} {self.amount}"


PAYOUT_DETAIL_FIELDS = ("recipient", "inn", "kpp", "bank_name", "bik", "account_number", "correspondent_account",
                        "card_reference")


class WithdrawalStatus(models.TextChoices):
    """A withdrawal request's life: REQUESTED → APPROVED → PAID, or REJECTED, or LAPSED (its hold expired)."""

    REQUESTED = "requested", _("Requested")
    APPROVED = "approved", _("Approved")
    REJECTED = "rejected", _("Rejected")
    PAID = "paid", pgettext_lazy("withdrawal status", "Paid")  # paid out, not paid for (a top-up's "Paid")
    LAPSED = "lapsed", _("Lapsed (hold expired)")


class PayoutBatch(models.Model):
    """One run of the payout task: the withdrawals it paid, with a registry file for accounting.

    ``total`` (micro-RUB) and ``count`` are the sums of its paid requests, fixed when it is made.
    """

    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    total = models.BigIntegerField(_("total, micro-RUB"), default=0)
    count = models.PositiveIntegerField(_("withdrawals"), default=0)

    class Meta:
        verbose_name = _("payout batch")
        verbose_name_plural = _("payout batches")
        ordering = ["-id"]
        constraints = [models.CheckConstraint(condition=Q(total__gte=0), name="payout_batch_total_non_negative")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.created_at:%Y-%m-%d %H:%M} ({self.count})"


class WithdrawalRequest(models.Model):
    """A supplier's request to be paid ``amount`` micro-RUB, backed by a ledger hold (``hold``)
    on its payable from request to payout; ``payment`` is the posted transfer that paid it.

    ``payout_details`` is the snapshot of ``SupplierPayoutDetails`` taken at request time.
    Status changes only through apps/billing/suppliers.py and payouts.py.
    """

    supplier = models.ForeignKey("accounts.Supplier", on_delete=models.PROTECT, related_name="withdrawal_requests",
                                 verbose_name=_("supplier"))
    amount = models.BigIntegerField(_("amount, micro-RUB"))
    payout_details = models.JSONField(_("payout details (as requested)"), default=dict)
    status = models.CharField(_("status"), max_length=16, choices=WithdrawalStatus.choices,
                              default=WithdrawalStatus.REQUESTED)
    idempotency_id = models.CharField(_("idempotency id"), max_length=200, unique=True)
    hold = models.OneToOneField(Transfer, on_delete=models.PROTECT, related_name="withdrawal_request",
                                verbose_name=_("ledger hold"))
    payment = models.OneToOneField(Transfer, on_delete=models.PROTECT, null=True, blank=True,
                                   related_name="paid_withdrawal", verbose_name=_("payment transfer"))
    batch = models.ForeignKey(PayoutBatch, on_delete=models.PROTECT, null=True, blank=True, related_name="withdrawals",
                              verbose_name=_("payout batch"))
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                     related_name="+", verbose_name=_("requested by"))
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+", verbose_name=_("approved or rejected by"))
    decided_at = models.DateTimeField(_("decided"), null=True, blank=True)
    reject_reason = models.CharField(_("reason for rejection"), max_length=300, blank=True)
    paid_at = models.DateTimeField(_("paid"), null=True, blank=True)
    created_at = models.DateTimeField(_("requested"), auto_now_add=True)

    class Meta:
        verbose_name = _("withdrawal request")
        verbose_name_plural = _("withdrawal requests")
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="withdrawal_amount_positive"),
            models.CheckConstraint(condition=~Q(status="paid") | Q(payment__isnull=False, batch__isnull=False),
                                   name="withdrawal_paid_has_payment"),
        ]
        indexes = [models.Index(fields=["status", "id"], name="withdrawal_status")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.supplier} {self.amount / 1_000_000:.2f} RUB ({self.status})"
