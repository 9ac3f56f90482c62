from __future__ import annotations

import hashlib
import ipaddress
import secrets

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from apps.accounts.models import validate_fallbacks

TOKEN_PREFIX = "js-"
# 32 random bytes → 43 url-safe characters; a given secret must carry at least as many.
MIN_SECRET_CHARS = 32
DISPLAY_PREFIX_CHARS = 10


def hash_token(secret: str) -> str:
    """How a token secret is stored and looked up: its SHA-256 as 64 lowercase hex characters."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def generate_token_secret() -> str:
    """A new token secret: ``js-`` and 43 URL-safe characters (32 random bytes)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def validate_token_secret(secret: str) -> None:
    """Raise ``ValidationError`` unless ``secret`` is ``js-`` and at least ``MIN_SECRET_CHARS`` (32)
    of ``A-Z a-z 0-9 - _``."""
    body = secret[len(TOKEN_PREFIX):]
    if not secret.startswith(TOKEN_PREFIX):
        raise ValidationError(_("A token secret must start with %(prefix)s"), params={"prefix": TOKEN_PREFIX})
    if len(body) < MIN_SECRET_CHARS:
        raise ValidationError(_("A token secret needs at least %(n)d characters after the prefix"), params={"n": MIN_SECRET_CHARS})
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in body):
        raise ValidationError(_("A token secret may hold only letters, digits, '-' and '_'"))


def validate_cidr(value: str) -> None:
    """Raise ``ValidationError`` unless ``value`` is an IPv4/IPv6 address or network (host bits may be
    set: "10.1.2.3/8" is accepted)."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValidationError(_("%(value)s is not an IP address or CIDR network"), params={"value": value}) from None


class TokenEnvironment(models.TextChoices):
    """A label on a token (production or test); the proxy serves both alike."""

    PROD = "prod", _("Production")
    TEST = "test", _("Test")


class TokenStatus(models.TextChoices):
    """Only an ACTIVE token is served (BLOCKED: 403, REVOKED: 401). A blocked token can be unblocked;
    revoked is final (``services.set_token_status``)."""

    ACTIVE = "active", _("Active")
    BLOCKED = "blocked", _("Blocked")
    REVOKED = "revoked", _("Revoked")


class ApiToken(models.Model):
    """A developer's key to /v1. The secret is shown once; only its sha256 is stored."""

    company = models.ForeignKey("accounts.Company", on_delete=models.PROTECT, related_name="tokens", verbose_name=_("company"))
    department = models.ForeignKey("accounts.Department", on_delete=models.PROTECT, null=True, blank=True, related_name="tokens", verbose_name=_("department"))
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="tokens", verbose_name=_("owner"))
    name = models.CharField(_("name"), max_length=100)
    environment = models.CharField(_("environment"), max_length=8, choices=TokenEnvironment.choices, default=TokenEnvironment.PROD)
    key_hash = models.CharField(_("secret hash (sha256)"), max_length=64, unique=True, editable=False)
    key_prefix = models.CharField(_("secret prefix"), max_length=16, editable=False)
    status = models.CharField(_("status"), max_length=8, choices=TokenStatus.choices, default=TokenStatus.ACTIVE)
    status_reason = models.CharField(_("status reason"), max_length=300, blank=True)
    # Spend limits in micro-rubles; empty = no limit. Weekly/monthly are calendar windows in
    # the company's time zone.
    limit_total = models.BigIntegerField(_("total limit, micro-RUB"), null=True, blank=True, validators=[MinValueValidator(0)])
    limit_weekly = models.BigIntegerField(_("weekly limit, micro-RUB"), null=True, blank=True, validators=[MinValueValidator(0)])
    limit_monthly = models.BigIntegerField(_("monthly limit, micro-RUB"), null=True, blank=True, validators=[MinValueValidator(0)])
    rpm = models.PositiveIntegerField(_("requests per minute"), null=True, blank=True)
    tpm = models.PositiveIntegerField(_("tokens per minute"), null=True, blank=True)
    models_allow = ArrayField(models.CharField(max_length=128), default=list, blank=True, verbose_name=_("allowed models"),
                              help_text=_("Empty = every active model."))
    models_deny = ArrayField(models.CharField(max_length=128), default=list, blank=True, verbose_name=_("denied models"))
    ip_allow = ArrayField(models.CharField(max_length=64, validators=[validate_cidr]), default=list, blank=True,
                          verbose_name=_("IP allow-list (CIDR)"), help_text=_("Empty = any address."))
    max_distinct_ips = models.PositiveIntegerField(_("max distinct client IPs per day"), null=True, blank=True)
    fallbacks = models.JSONField(_("fallback chains"), default=dict, blank=True, validators=[validate_fallbacks],
                                 help_text=_('Per model, the models to try when it fails: {"gpt-4o-mini": ["deepseek-chat"]}. '
                                             "Overrides the company's and the model's chains."))
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("API token")
        verbose_name_plural = _("API tokens")
        ordering = ["company__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["company", "name"], name="token_name_unique_per_company"),
            models.CheckConstraint(
                condition=models.Q(limit_total__gte=0) | models.Q(limit_total__isnull=True), name="token_limit_total_non_negative"),
            models.CheckConstraint(
                condition=models.Q(limit_weekly__gte=0) | models.Q(limit_weekly__isnull=True), name="token_limit_weekly_non_negative"),
            models.CheckConstraint(
                condition=models.Q(limit_monthly__gte=0) | models.Q(limit_monthly__isnull=True), name="token_limit_monthly_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"

    def set_secret(self, secret: str | None = None) -> str:
        """Set (or generate) the secret; returns it — the only time it exists in clear."""
        secret = secret or generate_token_secret()
        validate_token_secret(secret)
        self.key_hash = hash_token(secret)
        self.key_prefix = secret[:DISPLAY_PREFIX_CHARS]
        return secret

    def clean(self) -> None:
        """Raise ``ValidationError`` if the department belongs to another company or a model is both
        allowed and denied."""
        if self.department is not None and self.department.company_id != self.company_id:
            raise ValidationError({"department": _("The department belongs to another company.")})
        overlap = set(self.models_allow) & set(self.models_deny)
        if overlap:
            raise ValidationError({"models_deny": _("Models both allowed and denied: %(m)s") % {"m": ", ".join(sorted(overlap))}})
