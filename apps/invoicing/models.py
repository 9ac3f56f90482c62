"""Top-up requests, company requisites and the documents issued for them (invoices, closing acts).

Amounts are integer micro-rubles (lib/money.py), like the ledger's. A document is written once,
with its PDF and the PDF's SHA-256, and never changes: migration 0001's trigger refuses any UPDATE
or DELETE of a document row, so a number once issued always names the same PDF. Numbers come
from ``DocumentSequence``, one gapless sequence per kind and calendar year.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from lib.money import MICRO

KOPECK = MICRO // 100  # micro-rubles in one kopeck

validate_inn = RegexValidator(r"^(\d{10}|\d{12})$", _("An INN is 10 digits (a company) or 12 (a person)."))
validate_kpp = RegexValidator(r"^\d{9}$", _("A KPP is 9 digits."))


class CompanyRequisites(models.Model):
    """What a company's documents name as the buyer: legal name, INN, KPP, address and contract."""

    company = models.OneToOneField("accounts.Company", on_delete=models.CASCADE, related_name="requisites", verbose_name=_("company"))
    legal_name = models.CharField(_("legal name"), max_length=300, help_text=_("As in the register, e.g. ООО «Ромашка»."))
    inn = models.CharField(_("INN"), max_length=12, validators=[validate_inn])
    kpp = models.CharField(_("KPP"), max_length=9, blank=True, validators=[validate_kpp])
    address = models.CharField(_("legal address"), max_length=500, blank=True)
    contract = models.CharField(_("contract"), max_length=200, blank=True,
                                help_text=_("Number and date, as documents name it: № 17/2026 от 01.02.2026."))

    class Meta:
        verbose_name = _("company requisites")
        verbose_name_plural = _("company requisites")

    def __str__(self) -> str:
        return self.legal_name


class DocumentKind(models.TextChoices):
    """An invoice («Счёт на оплату») for a top-up, or a monthly closing act («Акт оказанных услуг»)."""

    INVOICE = "invoice", _("Invoice")
    ACT = "act", _("Closing act")


class DocumentSequence(models.Model):
    """The last number issued for one kind of document in one calendar year (gapless: a number is
    taken in the same transaction that writes its document)."""

    kind = models.CharField(_("kind"), max_length=16, choices=DocumentKind.choices)
    year = models.PositiveSmallIntegerField(_("year"))
    last_number = models.PositiveIntegerField(_("last number"), default=0)

    class Meta:
        verbose_name = _("document number sequence")
        verbose_name_plural = _("document number sequences")
        constraints = [models.UniqueConstraint(fields=["kind", "year"], name="document_sequence_unique")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.year}: {self.last_number}"


class Document(models.Model):
    """An issued invoice or act: its number, the amounts it states (micro-RUB, VAT included), what
    it showed (``details``) and the PDF itself with its SHA-256. Written once, never changed."""

    kind = models.CharField(_("kind"), max_length=16, choices=DocumentKind.choices)
    year = models.PositiveSmallIntegerField(_("year"))
    number = models.PositiveIntegerField(_("number"))
    date = models.DateField(_("date"))
    company = models.ForeignKey("accounts.Company", on_delete=models.PROTECT, related_name="documents", verbose_name=_("company"))
    amount = models.BigIntegerField(_("amount incl. VAT, micro-RUB"))
    vat_percent = models.DecimalField(_("VAT, %"), max_digits=5, decimal_places=2)
    vat_amount = models.BigIntegerField(_("VAT included, micro-RUB"))
    period_start = models.DateField(_("period from"), null=True, blank=True, help_text=_("Acts: the first day of the month."))
    period_end = models.DateField(_("period to"), null=True, blank=True, help_text=_("Acts: the last day of the month."))
    details = models.JSONField(_("details"), default=dict, editable=False)
    pdf = models.BinaryField(_("PDF"), editable=False)
    sha256 = models.CharField(_("SHA-256 of the PDF"), max_length=64, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+", verbose_name=_("issued by"))
    created_at = models.DateTimeField(_("issued"), auto_now_add=True)

    class Meta:
        verbose_name = _("document")
        verbose_name_plural = _("documents")
        ordering = ["-year", "kind", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "year", "number"], name="document_number_unique"),
            models.UniqueConstraint(fields=["company", "period_start"], condition=Q(kind="act"), name="one_act_per_company_month"),
            models.CheckConstraint(condition=Q(amount__gt=0, vat_amount__gte=0, number__gt=0), name="document_amounts_valid"),
            models.CheckConstraint(condition=~Q(kind="act") | Q(period_start__isnull=False, period_end__isnull=False),
                                   name="act_has_period"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} № {self.number} ({self.year})"

    @property
    def filename(self) -> str:
        """``invoice-2026-12.pdf``: what the download is called."""
        return f"{self.kind}-{self.year}-{self.number}.pdf"


class TopUpStatus(models.TextChoices):
    """requested → invoiced → paid, or cancelled before it is paid."""

    REQUESTED = "requested", _("Requested")
    INVOICED = "invoiced", _("Invoiced")
    PAID = "paid", _("Paid")
    CANCELLED = "cancelled", _("Cancelled")


class TopUpRequest(models.Model):
    """A company's request to top its wallet up by ``amount`` micro-RUB (whole kopecks), paid by
    bank transfer against an invoice. Each step keeps who did it and when (the audit trail); a paid
    request names the ledger transfer that credited the wallet."""

    company = models.ForeignKey("accounts.Company", on_delete=models.PROTECT, related_name="top_up_requests", verbose_name=_("company"))
    amount = models.BigIntegerField(_("amount, micro-RUB"))
    status = models.CharField(_("status"), max_length=16, choices=TopUpStatus.choices, default=TopUpStatus.REQUESTED)
    request_key = models.CharField(_("request key"), max_length=100,
                                   help_text=_("The caller's idempotency key: the same key for the same company is one request."))
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                     related_name="+", verbose_name=_("requested by"))
    requested_at = models.DateTimeField(_("requested"), auto_now_add=True)
    invoice = models.OneToOneField(Document, on_delete=models.PROTECT, null=True, blank=True, related_name="top_up_request",
                                   verbose_name=_("invoice"))
    invoiced_at = models.DateTimeField(_("invoiced"), null=True, blank=True)
    transfer = models.OneToOneField("billing.Transfer", on_delete=models.PROTECT, null=True, blank=True, related_name="+",
                                    verbose_name=_("ledger transfer"))
    paid_at = models.DateTimeField(_("payment confirmed"), null=True, blank=True)
    confirmed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                     related_name="+", verbose_name=_("confirmed by"))
    cancelled_at = models.DateTimeField(_("cancelled"), null=True, blank=True)
    cancelled_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                     related_name="+", verbose_name=_("cancelled by"))

    class Meta:
        verbose_name = _("top-up request")
        verbose_name_plural = _("top-up requests")
        ordering = ["-requested_at"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="top_up_request_amount_positive"),
            models.UniqueConstraint(fields=["company", "request_key"], name="top_up_request_key_unique"),
            models.CheckConstraint(condition=~Q(status="paid") | Q(transfer__isnull=False, paid_at__isnull=False),
                                   name="paid_top_up_has_transfer"),
            models.CheckConstraint(condition=Q(status__in=["requested", "cancelled"]) | Q(invoice__isnull=False),
                                   name="invoiced_top_up_has_invoice"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.company} {self.amount // MICRO} RUB ({self.get_status_display()})"
