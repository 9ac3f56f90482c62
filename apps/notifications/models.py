"""Who a company's spend alerts go to, and every alert ever due (one row per subject × level ×
period × channel: the unique constraint is what makes an alert go out once)."""

from __future__ import annotations

import secrets

from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from lib import crypto

_SECRET_CONTEXT = "notifications.webhook"


class AlertSettings(models.Model):
    """A company's alert recipients: ``emails`` (comma- or newline-separated; empty = the company's
    owners and managers), a ``webhook_url`` (empty = none) signed with a per-company secret kept
    encrypted, and the low-wallet threshold (micro-RUB; empty = the platform default,
    ``JETSTREAM["LOW_WALLET_THRESHOLD"]``): the reserve the low-wallet levels are measured down to
    (``alerts.wallet_levels``)."""

    company = models.OneToOneField("accounts.Company", on_delete=models.CASCADE, related_name="alert_settings",
                                   verbose_name=_("company"))
    enabled = models.BooleanField(_("alerts on"), default=True)
    emails = models.TextField(_("alert emails"), blank=True,
                              help_text=_("Comma- or newline-separated; empty = the company's owners and managers."))
    webhook_url = models.URLField(_("webhook URL"), max_length=500, blank=True)
    webhook_secret_encrypted = models.TextField(_("webhook secret (encrypted)"), blank=True, editable=False)
    low_wallet_threshold = models.BigIntegerField(
        _("low wallet threshold, micro-RUB"), null=True, blank=True, validators=[MinValueValidator(0)],
        help_text=_("The wallet's reserve: the 100 % low-wallet alert comes when the available balance falls to it, "
                    "80 % and 90 % on the way there; empty = the platform default."))

    class Meta:
        verbose_name = _("alert settings")
        verbose_name_plural = _("alert settings")

    def __str__(self) -> str:
        return f"{self.company}"

    def rotate_webhook_secret(self) -> str:
        """Make, store (encrypted) and return a new webhook signing secret (shown once; not saved yet)."""
        secret = "whsec_" + secrets.token_urlsafe(32)
        self.webhook_secret_encrypted = crypto.encrypt(secret, context=_SECRET_CONTEXT)
        return secret

    def webhook_secret(self) -> str:
        """The plaintext signing secret ("" if none). Raises ``lib.crypto.SecretDecryptionError``."""
        if not self.webhook_secret_encrypted:
            return ""
        return crypto.decrypt(self.webhook_secret_encrypted, context=_SECRET_CONTEXT)

    def email_list(self) -> list[str]:
        """The addresses in ``emails``, in order, without blanks."""
        return [e.strip() for e in self.emails.replace("\n", ",").split(",") if e.strip()]


class AlertKind(models.TextChoices):
    """What an alert is about."""

    TOKEN_TOTAL = "token_total", _("Token total limit")
    TOKEN_WEEKLY = "token_weekly", _("Token weekly limit")
    TOKEN_MONTHLY = "token_monthly", _("Token monthly limit")
    DEPARTMENT = "department", _("Department monthly budget")
    LOW_WALLET = "low_wallet", _("Low wallet")


class Channel(models.TextChoices):
    EMAIL = "email", _("Email")
    WEBHOOK = "webhook", _("Webhook")


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SENT = "sent", _("Sent")
    FAILED = "failed", _("Failed (gave up)")
    SUPERSEDED = "superseded", _("Superseded by a higher level")


class AlertDelivery(models.Model):
    """One alert on one channel: ``kind`` of ``subject_id`` (token, department or company id)
    reached ``level`` % in ``period`` ("2026-11", "2026-W48", "all"). Created once (unique);
    sent with retries (``attempts``, ``next_attempt_at``); ``payload`` is the JSON a webhook gets."""

    company = models.ForeignKey("accounts.Company", on_delete=models.CASCADE, related_name="alert_deliveries",
                                verbose_name=_("company"))
    kind = models.CharField(_("kind"), max_length=16, choices=AlertKind.choices)
    subject_id = models.BigIntegerField(_("subject id"))
    level = models.PositiveSmallIntegerField(_("level, %"))
    period = models.CharField(_("period"), max_length=16)
    channel = models.CharField(_("channel"), max_length=8, choices=Channel.choices)
    payload = models.JSONField(_("payload"), default=dict)
    status = models.CharField(_("status"), max_length=12, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt"), null=True, blank=True)
    last_error = models.CharField(_("last error"), max_length=300, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    sent_at = models.DateTimeField(_("sent"), null=True, blank=True)

    class Meta:
        verbose_name = _("alert delivery")
        verbose_name_plural = _("alert deliveries")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["company", "kind", "subject_id", "level", "period", "channel"], name="alert_once_per_period"),
        ]
        indexes = [models.Index(fields=["next_attempt_at"], name="alert_due", condition=Q(status="pending"))]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.subject_id} {self.level}% {self.period} ({self.channel}, {self.status})"
