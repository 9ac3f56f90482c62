from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


def validate_time_zone(value: str) -> None:
    """Raise ``ValidationError`` unless ``value`` is a time zone name zoneinfo knows ("Europe/Moscow")."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(_("%(value)s is not a known time zone"), params={"value": value}) from None


class UserManager(BaseUserManager):
    """Users keyed by email (stored lower-cased); there is no username."""

    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra):
        if not email:
            raise ValueError("email is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra):
        """A saved non-staff user; ``password`` None gives an unusable password. Raises ``ValueError``
        without an email."""
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra):
        """``create_user`` with ``is_staff`` and ``is_superuser`` set."""
        extra.update(is_staff=True, is_superuser=True)
        return self._create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """Logs in with an email. Superadmin = Django superuser."""

    email = models.EmailField(_("email"), unique=True)
    full_name = models.CharField(_("full name"), max_length=200, blank=True)
    language = models.CharField(_("language"), max_length=8, choices=settings.LANGUAGES, default="ru")
    is_active = models.BooleanField(_("active"), default=True)
    is_staff = models.BooleanField(_("staff"), default=False)
    date_joined = models.DateTimeField(_("date joined"), default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        verbose_name = _("user")
        verbose_name_plural = _("users")

    def __str__(self) -> str:
        return self.email

    def clean(self) -> None:
        """Normalise the email (lower-cased)."""
        super().clean()
        self.email = self.__class__.objects.normalize_email(self.email).lower()


# A fallback chain names at most this many models after the one requested.
MAX_FALLBACKS = 5


def validate_fallbacks(value) -> None:
    """A fallback map: ``{"<public model>": ["<fallback model>", ...]}`` — model names (strings of at
    most 128 characters), at most ``MAX_FALLBACKS`` per model, none naming itself. Raises
    ``ValidationError``."""
    if not isinstance(value, dict):
        raise ValidationError(_("Give a mapping of model name to a list of fallback model names."))
    for model, chain in value.items():
        if not isinstance(chain, list) or not all(isinstance(n, str) and 0 < len(n) <= 128 for n in chain):
            raise ValidationError(_("The fallbacks of %(m)s must be a list of model names.") % {"m": model})
        if len(chain) > MAX_FALLBACKS:
            raise ValidationError(_("%(m)s has more than %(n)s fallbacks.") % {"m": model, "n": MAX_FALLBACKS})
        if model in chain:
            raise ValidationError(_("%(m)s cannot be its own fallback.") % {"m": model})


class DataResidency(models.TextChoices):
    """Where a company's requests may be processed: ``ru`` allows only providers whose ``country``
    is RU (GigaChat, YandexGPT, local nodes marked RU)."""

    ANY = "any", _("Anywhere")
    RU = "ru", _("Russia only (152-FZ)")


class Company(models.Model):
    """A customer organisation. Its tokens' weekly and monthly limits roll over in ``time_zone``; it
    pays provider price × FX × its coefficient: the model's ``CompanyModelCoefficient`` if any, else
    ``sell_coefficient``, else the platform default (``effective_sell_coefficient``). Its wallet is a
    billing ``Account``."""

    slug = models.SlugField(_("slug"), max_length=64, unique=True)
    name = models.CharField(_("name"), max_length=200)
    time_zone = models.CharField(_("time zone"), max_length=64, default="Europe/Moscow", validators=[validate_time_zone],
                                 help_text=_("Calendar limits (weekly, monthly) roll over in this time zone."))
    # None (the default): the platform's JETSTREAM_DEFAULT_SELL_COEFFICIENT, read when prices are computed.
    sell_coefficient = models.DecimalField(_("sell coefficient"), max_digits=8, decimal_places=4, null=True, blank=True, default=None,
                                           validators=[MinValueValidator(Decimal("0.0001"))],
                                           help_text=_("Provider price × FX × this coefficient = the company's price. "
                                                       "Empty: the platform default (JETSTREAM_DEFAULT_SELL_COEFFICIENT)."))
    data_residency = models.CharField(_("data residency"), max_length=8, choices=DataResidency.choices, default=DataResidency.ANY,
                                      help_text=_("Russia only: requests go only to providers hosted in Russia."))
    fallbacks = models.JSONField(_("fallback chains"), default=dict, blank=True, validators=[validate_fallbacks],
                                 help_text=_('Per model, the models to try when it fails, in order: {"gpt-4o-mini": ["deepseek-chat"]}. '
                                             "Overrides the model's own chain; a token's overrides this."))
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("company")
        verbose_name_plural = _("companies")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def effective_sell_coefficient(self) -> Decimal:
        """The company-wide coefficient: its own, or the platform default when it set none."""
        if self.sell_coefficient is not None:
            return self.sell_coefficient
        return Decimal(settings.JETSTREAM_DEFAULT_SELL_COEFFICIENT)


class CompanyModelCoefficient(models.Model):
    """A company's sell coefficient for one model, in place of its company-wide one (4 decimal places,
    > 0): e.g. gpt-4o-mini at 1.10 while the company pays 1.25 elsewhere."""

    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="model_coefficients", verbose_name=_("company"))
    model = models.ForeignKey("providers.Model", on_delete=models.CASCADE, related_name="company_coefficients",
                              verbose_name=_("model"))
    sell_coefficient = models.DecimalField(_("sell coefficient"), max_digits=8, decimal_places=4,
                                           validators=[MinValueValidator(Decimal("0.0001"))],
                                           help_text=_("Provider price × FX × this coefficient = the company's price for this model."))

    class Meta:
        verbose_name = _("model sell coefficient")
        verbose_name_plural = _("model sell coefficients")
        ordering = ["company", "model"]
        constraints = [models.UniqueConstraint(fields=["company", "model"], name="uniq_company_model_coefficient")]

    def __str__(self) -> str:
        return f"{self.company} × {self.model_id}: {self.sell_coefficient}"


class Department(models.Model):
    """A part of a company, in a tree (``parent``); ``monthly_budget`` caps its tokens' spend per
    calendar month (micro-RUB, None = no cap)."""

    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="departments", verbose_name=_("company"))
    parent = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="children", verbose_name=_("parent"))
    slug = models.SlugField(_("slug"), max_length=64)
    name = models.CharField(_("name"), max_length=200)
    monthly_budget = models.BigIntegerField(_("monthly budget, micro-RUB"), null=True, blank=True,
                                            validators=[MinValueValidator(0)],
                                            help_text=_("Spend cap per calendar month for all tokens of this department; empty = none."))
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("department")
        verbose_name_plural = _("departments")
        ordering = ["company__name", "name"]
        constraints = [models.UniqueConstraint(fields=["company", "slug"], name="department_slug_unique_per_company")]

    def __str__(self) -> str:
        return f"{self.company} / {self.name}"

    def clean(self) -> None:
        """Raise ``ValidationError`` if the parent belongs to another company or the parent chain forms a cycle."""
        if self.parent_id is None:
            return
        if self.parent.company_id != self.company_id:
            raise ValidationError({"parent": _("The parent department belongs to another company.")})
        seen = {self.pk}
        node = self.parent
        while node is not None:
            if node.pk in seen:
                raise ValidationError({"parent": _("Departments cannot form a cycle.")})
            seen.add(node.pk)
            node = node.parent


class CompanyRole(models.TextChoices):
    """A user's role in a company."""

    OWNER = "owner", _("Owner")
    MANAGER = "manager", _("Manager")
    VIEWER = "viewer", _("Viewer")


class Membership(models.Model):
    """A user's ``CompanyRole`` in one company (one membership per user and company)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships", verbose_name=_("user"))
    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="memberships", verbose_name=_("company"))
    role = models.CharField(_("role"), max_length=16, choices=CompanyRole.choices, default=CompanyRole.VIEWER)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("company membership")
        verbose_name_plural = _("company memberships")
        constraints = [models.UniqueConstraint(fields=["user", "company"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.company} ({self.get_role_display()})"


class Supplier(models.Model):
    """An organisation selling LLM access (upstream keys) to the platform."""

    slug = models.SlugField(_("slug"), max_length=64, unique=True)
    name = models.CharField(_("name"), max_length=200)
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("supplier")
        verbose_name_plural = _("suppliers")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class SupplierRole(models.TextChoices):
    """A user's role in a supplier."""

    OWNER = "owner", _("Owner")
    MEMBER = "member", _("Member")


class SupplierMembership(models.Model):
    """A user's ``SupplierRole`` in one supplier (one membership per user and supplier)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="supplier_memberships", verbose_name=_("user"))
    supplier = models.ForeignKey(Supplier, on_delete=models.CASCADE, related_name="memberships", verbose_name=_("supplier"))
    role = models.CharField(_("role"), max_length=16, choices=SupplierRole.choices, default=SupplierRole.MEMBER)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("supplier membership")
        verbose_name_plural = _("supplier memberships")
        constraints = [models.UniqueConstraint(fields=["user", "supplier"], name="supplier_membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.supplier}"


class InvitationStatus(models.TextChoices):
    """Where an invitation stands: ``pending`` until it is accepted, revoked or lapses (``expired``)."""

    PENDING = "pending", _("Pending")
    ACCEPTED = "accepted", _("Accepted")
    REVOKED = "revoked", _("Revoked")
    EXPIRED = "expired", _("Expired")


class Invitation(models.Model):
    """An invitation sent by email to join one company (with a ``CompanyRole``) or one supplier (with a
    ``SupplierRole``): exactly one of ``company`` / ``supplier`` is set, and ``role`` is a value of that
    kind's roles.

    The link in the email carries a random key; only its SHA-256 (``key_hash``) is stored, so a copy of
    the database cannot accept anyone's invitation. One pending invitation per email and organisation
    (a new one revokes the old). The services in ``apps/accounts/services.py`` are the only writers."""

    email = models.EmailField(_("email"))
    company = models.ForeignKey(Company, on_delete=models.CASCADE, null=True, blank=True, related_name="invitations",
                                verbose_name=_("company"))
    supplier = models.ForeignKey(Supplier, on_delete=models.CASCADE, null=True, blank=True, related_name="invitations",
                                 verbose_name=_("supplier"))
    role = models.CharField(_("role"), max_length=16)
    key_hash = models.CharField(_("key hash"), max_length=64, unique=True, editable=False)
    status = models.CharField(_("status"), max_length=16, choices=InvitationStatus.choices, default=InvitationStatus.PENDING)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="invitations_sent", verbose_name=_("invited by"))
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                    related_name="invitations_accepted", verbose_name=_("accepted by"))
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires"))
    closed_at = models.DateTimeField(_("closed"), null=True, blank=True,
                                     help_text=_("When it was accepted, revoked or expired."))

    class Meta:
        verbose_name = _("invitation")
        verbose_name_plural = _("invitations")
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(company__isnull=False, supplier__isnull=True)
                                   | models.Q(company__isnull=True, supplier__isnull=False),
                                   name="invitation_one_organisation"),
            models.UniqueConstraint(fields=["email", "company"], condition=models.Q(status="pending", company__isnull=False),
                                    name="invitation_one_pending_per_company"),
            models.UniqueConstraint(fields=["email", "supplier"], condition=models.Q(status="pending", supplier__isnull=False),
                                    name="invitation_one_pending_per_supplier"),
        ]
        indexes = [models.Index(fields=["status", "expires_at"], name="invitation_status_expiry")]

    def __str__(self) -> str:
        return f"{self.email} → {self.organisation} ({self.role_label})"

    @property
    def organisation(self) -> Company | Supplier:
        """The company or the supplier the invitation is to."""
        return self.company if self.company_id else self.supplier  # type: ignore[return-value]

    @property
    def role_label(self) -> str:
        """The role's display name in the active language."""
        choices = CompanyRole if self.company_id else SupplierRole
        return str(dict(choices.choices).get(self.role, self.role))

    @property
    def is_open(self) -> bool:
        """Pending and not past ``expires_at``: it can still be accepted or revoked."""
        return self.status == InvitationStatus.PENDING and self.expires_at > timezone.now()
