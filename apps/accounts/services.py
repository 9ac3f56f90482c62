"""Accounts services: suppliers, companies (with their wallet and policy), departments,
configuration top-ups, the bootstrap superadmin, and invitations to join a company or a supplier.

Every writer takes keyword-only arguments and runs inside ``transaction.atomic()``. The upsert
style services also take ``dry_run``: they then validate and report what they would do
(an ``Outcome``) without writing, which is how ``jetstream_apply --dry-run`` builds its plan
with the very code that later applies it.

The upsert mechanics (``stage``, ``save_staged``, ``find_for_update``, ``Outcome``) are in
lib/upsert.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import QuerySet, Sum
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.accounts.exceptions import (
    AlreadyMember,
    InvitationEmailMismatch,
    InvitationInvalid,
    InvitationNotAllowed,
    InvitationUserExists,
    SuperadminEmailTaken,
    TopUpReductionError,
)
from apps.accounts.models import (
    Company,
    CompanyModelCoefficient,
    CompanyRole,
    Department,
    Invitation,
    InvitationStatus,
    Membership,
    Supplier,
    SupplierMembership,
    SupplierRole,
    User,
)
from apps.billing import services as ledger
from apps.billing.models import Account, AccountKind, Transfer, TransferKind
from lib.money import format_rub
from lib.upsert import UNCHANGED, UPDATED, Outcome, find_for_update, model_default, save_staged, stage

# --- suppliers -----------------------------------------------------------------------------

def upsert_supplier(*, slug: str, name: str, dry_run: bool = False) -> Outcome:
    """Create the supplier ``slug`` or set its ``name`` (the row locked). Raises ``ValidationError``."""
    with transaction.atomic():
        # Lock: two configuration runs editing the same supplier.
        supplier = find_for_update(Supplier.objects, dry_run=dry_run, slug=slug) or Supplier(slug=slug)
        return save_staged(supplier, stage(supplier, {"name": name}), dry_run=dry_run)


# --- companies -----------------------------------------------------------------------------

def _sync_company_books(company: Company, *, credit_limit: int, dry_run: bool) -> list[str]:
    """Make sure the company has its wallet (with ``credit_limit``). (A company without a moderation
    policy row has the default one: moderation off.)"""
    if credit_limit < 0:
        raise ValidationError({"credit_limit": _("The credit limit must not be negative.")})
    if company.pk is None:
        wallet = None
    else:
        wallet = Account.objects.filter(kind=AccountKind.COMPANY_WALLET, company=company).first()
    changed = []
    if wallet is None:
        changed.append("wallet")
    if credit_limit != (wallet.credit_limit if wallet else 0):
        changed.append("credit_limit")
    if dry_run or not changed:
        return changed
    wallet = ledger.company_wallet(company)
    if wallet.credit_limit != credit_limit:
        try:
            with transaction.atomic():
                # One UPDATE of the limit alone: the ledger triggers own the sums on this row,
                # and the account's CHECK constraint refuses a limit below the current overdraft.
                Account.objects.filter(pk=wallet.pk).update(credit_limit=credit_limit)
        except IntegrityError:
            raise ValidationError(
                {"credit_limit": _("The wallet already uses more credit than this limit; top it up first.")}
            ) from None
    return changed


def _company_settings(time_zone: str | None, sell_coefficient: Decimal | None, routing: CompanyRouting | None = None) -> dict[str, Any]:
    """The settings with None replaced by the model's defaults."""
    routing = routing or CompanyRouting()
    return {
        "time_zone": time_zone or model_default(Company, "time_zone"),
        "sell_coefficient": sell_coefficient if sell_coefficient is not None else model_default(Company, "sell_coefficient"),
        "data_residency": routing.data_residency or model_default(Company, "data_residency"),
        "fallbacks": routing.fallbacks if routing.fallbacks is not None else {},
    }


@dataclass(frozen=True)
class CompanyRouting:
    """Where a company's requests may go: ``data_residency`` ("any" | "ru", None = the default) and
    its fallback chains (``{"<model>": ["<fallback>", ...]}``, None = none)."""

    data_residency: str | None = None
    fallbacks: dict[str, list[str]] | None = None


def create_company(
    *,
    slug: str,
    name: str,
    time_zone: str | None = None,
    sell_coefficient: Decimal | None = None,
    credit_limit: int = 0,
    routing: CompanyRouting | None = None,
    dry_run: bool = False,
) -> Outcome:
    """A new company with its wallet (``credit_limit`` in micro-RUB) and a moderation policy (off)."""
    with transaction.atomic():
        company = Company(slug=slug)
        stage(company, {"name": name, **_company_settings(time_zone, sell_coefficient, routing)})
        outcome = save_staged(company, [], dry_run=dry_run)
        _sync_company_books(company, credit_limit=credit_limit, dry_run=dry_run)
        return outcome


def update_company(
    *,
    company: Company,
    name: str,
    time_zone: str,
    sell_coefficient: Decimal,
    credit_limit: int,
    data_residency: str = "any",
    fallbacks: dict[str, list[str]] | None = None,
    dry_run: bool = False,
) -> Outcome:
    """Set every editable company setting (a form's full state); also repairs a missing wallet or policy."""
    with transaction.atomic():
        # Lock: two editors of the same company.
        company = find_for_update(Company.objects, dry_run=dry_run, pk=company.pk)
        changed = stage(company, {"name": name, "time_zone": time_zone, "sell_coefficient": sell_coefficient,
                                  "data_residency": data_residency, "fallbacks": fallbacks or {}})
        outcome = save_staged(company, changed, dry_run=dry_run)
        books = _sync_company_books(company, credit_limit=credit_limit, dry_run=dry_run)
        if books:
            return Outcome(company, UPDATED, outcome.fields + tuple(books))
        return outcome


def upsert_company(
    *,
    slug: str,
    name: str,
    time_zone: str | None = None,
    sell_coefficient: Decimal | None = None,
    credit_limit: int = 0,
    routing: CompanyRouting | None = None,
    dry_run: bool = False,
) -> Outcome:
    """Create the company, or bring an existing one to exactly these settings (None = the default)."""
    existing = Company.objects.filter(slug=slug).first()
    if existing is None:
        return create_company(slug=slug, name=name, time_zone=time_zone, sell_coefficient=sell_coefficient,
                              credit_limit=credit_limit, routing=routing, dry_run=dry_run)
    return update_company(company=existing, name=name, credit_limit=credit_limit, dry_run=dry_run,
                          **_company_settings(time_zone, sell_coefficient, routing))


# --- departments ---------------------------------------------------------------------------

def _stage_department(department: Department, *, name: str, parent: Department | None, monthly_budget: int | None,
                      dry_run: bool) -> Outcome:
    changed = stage(department, {"name": name, "parent": parent, "monthly_budget": monthly_budget})
    return save_staged(department, changed, dry_run=dry_run)


def create_department(
    *,
    company: Company,
    slug: str,
    name: str,
    parent: Department | None = None,
    monthly_budget: int | None = None,
    dry_run: bool = False,
) -> Outcome:
    """A department of ``company``; ``parent`` makes a tree, ``monthly_budget`` is micro-RUB (None = none)."""
    with transaction.atomic():
        department = Department(company=company, slug=slug)
        return _stage_department(department, name=name, parent=parent, monthly_budget=monthly_budget, dry_run=dry_run)


def update_department(
    *,
    department: Department,
    name: str,
    parent: Department | None,
    monthly_budget: int | None,
    dry_run: bool = False,
) -> Outcome:
    """Set a department's name, parent and ``monthly_budget`` (micro-RUB, None = none), the row
    locked. Raises ``ValidationError`` (a parent of another company, a cycle)."""
    with transaction.atomic():
        # Lock: two editors re-parenting departments of one tree could close a cycle between them.
        department = find_for_update(Department.objects, dry_run=dry_run, pk=department.pk)
        return _stage_department(department, name=name, parent=parent, monthly_budget=monthly_budget, dry_run=dry_run)


def upsert_department(
    *,
    company: Company,
    slug: str,
    name: str,
    parent: Department | None = None,
    monthly_budget: int | None = None,
    dry_run: bool = False,
) -> Outcome:
    """``create_department``, or ``update_department`` of the company's department ``slug`` to exactly these values."""
    existing = Department.objects.filter(company=company, slug=slug).first() if company.pk else None
    if existing is None:
        return create_department(company=company, slug=slug, name=name, parent=parent, monthly_budget=monthly_budget, dry_run=dry_run)
    return update_department(department=existing, name=name, parent=parent, monthly_budget=monthly_budget, dry_run=dry_run)


# --- top-ups declared in configuration -----------------------------------------------------

@dataclass(frozen=True)
class TopUpOutcome:
    """What ``sync_configured_top_up`` did, micro-RUB: the ``declared`` total, what configuration
    top-ups had added before (``applied_before``), the ``amount`` added now (or, dry, that would
    be) and its ``transfer`` (None if nothing was posted)."""

    declared: int  # micro-RUB, cumulative
    applied_before: int  # what earlier configuration top-ups added
    amount: int  # topped up by this call (or, on a dry run, that would be)
    transfer: Transfer | None = None

    @property
    def changed(self) -> bool:
        """Whether money was (or would be) added."""
        return self.amount > 0


def config_top_up_prefix(company: Company) -> str:
    """The idempotency-id prefix of a company's configuration top-ups, ``config:top_up:<slug>:``;
    the declared total follows it, so one declaration is never posted twice."""
    return f"config:top_up:{company.slug}:"


def configured_top_up_total(company: Company) -> int:
    """The sum of the top-ups configuration has made for this company, in micro-RUB."""
    if company.pk is None:
        return 0
    total = Transfer.objects.filter(
        kind=TransferKind.TOP_UP, idempotency_id__startswith=config_top_up_prefix(company),
    ).aggregate(total=Sum("amount"))["total"]
    return total or 0


def sync_configured_top_up(*, company: Company, declared: int, dry_run: bool = False) -> TopUpOutcome:
    """Top the wallet up so configuration's top-ups add up to ``declared`` micro-RUB in total.

    Only ever adds: a lower declaration than already applied is refused (money that arrived
    stays; a correction is a separate ledger transfer).
    """
    with transaction.atomic():
        if not dry_run and company.pk is not None:
            # Lock the company: two runs declaring different totals would otherwise both add
            # their difference to the same old total.
            Company.objects.select_for_update().filter(pk=company.pk).first()
        applied = configured_top_up_total(company)
        if declared < applied:
            raise TopUpReductionError(
                _("cannot reduce a top-up; post a correction (configuration already added %(applied)s RUB, "
                  "this declares %(declared)s RUB)") % {"applied": format_rub(applied), "declared": format_rub(declared)},
                declared=declared, applied=applied,
            )
        amount = declared - applied
        transfer = None
        if amount and not dry_run:
            transfer = ledger.top_up(
                company=company,
                amount=amount,
                idempotency_id=f"{config_top_up_prefix(company)}{declared}",
                description=_("Top-up declared in configuration (total %(total)s RUB)") % {"total": format_rub(declared)},
            )
        return TopUpOutcome(declared=declared, applied_before=applied, amount=amount, transfer=transfer)


# --- bootstrap -----------------------------------------------------------------------------

def ensure_superadmin(*, email: str) -> tuple[Any, str | None]:
    """Return the first superuser; create ``email`` with a generated password if there is none.

    The password is returned only when the user was created now (it is not stored anywhere
    in clear).
    """
    User = get_user_model()
    with transaction.atomic():
        existing = User.objects.filter(is_superuser=True).order_by("pk").first()
        if existing is not None:
            return existing, None
        if User.objects.filter(email__iexact=email).exists():
            raise SuperadminEmailTaken(
                _("No superuser exists, and %(email)s belongs to an ordinary user; make it a superuser "
                  "in the shell or run createsuperuser.") % {"email": email}
            )
        password = secrets.token_urlsafe(18)
        # Two bootstraps at once: the unique e-mail lets only one of them create the user.
        user = User.objects.create_superuser(email, password)
        return user, password


def set_model_coefficients(*, company: Company, coefficients: list[tuple[Any, Decimal]], dry_run: bool = False) -> Outcome:
    """Bring ``company``'s per-model sell coefficients to exactly ``coefficients``: (``providers.Model``,
    Decimal > 0 with 4 places) pairs, one per model (unsaved models allowed on a dry run). Missing
    rows are created, others updated, rows of models not named deleted (those models fall back to
    the company's coefficient). Returns an ``Outcome`` on the company:
    CREATED/UPDATED when anything changed (or, with ``dry_run``, would), else UNCHANGED; nothing is
    written on a dry run. Raises ``ValidationError`` for a coefficient out of range."""
    with transaction.atomic():
        existing = ({row.model_id: row for row in CompanyModelCoefficient.objects.select_for_update().filter(company=company)}
                    if company.pk is not None else {})
        wanted = {model.pk for model, _coef in coefficients}
        changed = False
        for model, coef in coefficients:
            row = existing.get(model.pk) if model.pk is not None else None
            if row is not None and row.sell_coefficient == coef:
                continue
            row = row or CompanyModelCoefficient(company=company, model=model)
            row.sell_coefficient = coef
            row.full_clean(exclude=["company", "model"] if dry_run else None, validate_unique=not dry_run)
            changed = True
            if not dry_run:
                row.save()
        stale = [pk for pk in existing if pk not in wanted]
        if stale:
            changed = True
            if not dry_run:
                CompanyModelCoefficient.objects.filter(company=company, model_id__in=stale).delete()
        return Outcome(company, UPDATED if changed else UNCHANGED)


# --- invitations ---------------------------------------------------------------------------
#
# A manager invites an email to their company (with a CompanyRole) or supplier (with a SupplierRole).
# The email carries a link with a random key (``INVITATION_ACCEPT_URL_NAME``); the database keeps only
# the key's SHA-256. Following the link, a person with no account sets a password
# (``accept_invitation_as_new_user``); a person with one signs in and accepts (``accept_invitation``).
# Either way the result is a Membership / SupplierMembership with the invited role.

#: The URL name of the accept page (``/accounts/invitation/<key>/``); the link in the email points there.
INVITATION_ACCEPT_URL_NAME = "invitation_accept"
#: Company roles that may invite (owners may invite anyone; managers anyone but an owner).
_COMPANY_INVITERS = (CompanyRole.OWNER, CompanyRole.MANAGER)


@dataclass(frozen=True)
class IssuedInvitation:
    """What ``invite`` returns: the saved ``invitation`` and its ``key`` — the secret part of the
    link, shown nowhere else and not stored (only its SHA-256); ``accept_url`` is the absolute link
    that was emailed."""

    invitation: Invitation
    key: str
    accept_url: str


def invitation_key_hash(key: str) -> str:
    """The stored form of an invitation key: SHA-256, 64 lower-case hex digits."""
    return hashlib.sha256(key.encode()).hexdigest()


def invitation_ttl() -> dt.timedelta:
    """How long an invitation stays open: ``JETSTREAM_INVITATION_TTL_HOURS`` (default 72 h)."""
    return dt.timedelta(hours=getattr(settings, "JETSTREAM_INVITATION_TTL_HOURS", 72))


def _check_inviter(*, invited_by: Any, company: Company | None, supplier: Supplier | None, role: str) -> None:
    """Raise ``InvitationNotAllowed`` unless ``invited_by`` may invite to this organisation with ``role``."""
    if company is not None:
        if role not in CompanyRole.values:
            raise InvitationNotAllowed(_("%(role)s is not a company role.") % {"role": role})
        if invited_by.is_superuser:
            return
        membership = Membership.objects.filter(user=invited_by, company=company).first()
        if membership is None or membership.role not in _COMPANY_INVITERS:
            raise InvitationNotAllowed(_("Only the company's owners and managers may invite."))
        if role == CompanyRole.OWNER and membership.role != CompanyRole.OWNER:
            raise InvitationNotAllowed(_("Only an owner may invite another owner."))
        return
    assert supplier is not None
    if role not in SupplierRole.values:
        raise InvitationNotAllowed(_("%(role)s is not a supplier role.") % {"role": role})
    if invited_by.is_superuser:
        return
    if not SupplierMembership.objects.filter(user=invited_by, supplier=supplier, role=SupplierRole.OWNER).exists():
        raise InvitationNotAllowed(_("Only the supplier's owners may invite."))


def _already_member(email: str, *, company: Company | None, supplier: Supplier | None) -> bool:
    if company is not None:
        return Membership.objects.filter(company=company, user__email__iexact=email).exists()
    return SupplierMembership.objects.filter(supplier=supplier, user__email__iexact=email).exists()


def invite(*, email: str, role: str, invited_by: Any, company: Company | None = None, supplier: Supplier | None = None,
           site_url: str | None = None) -> IssuedInvitation:
    """Invite ``email`` to ``company`` (``role`` a ``CompanyRole`` value) or ``supplier`` (a
    ``SupplierRole`` value) — exactly one of them — and email the link (Django's email backend, in the
    active language). A pending invitation for the same email and organisation is revoked first, so
    "invite again" re-sends a fresh link. The invitation expires after ``invitation_ttl()``.

    ``site_url`` (``https://gw.example.com``) is the link's origin; default ``settings.SITE_URL``.

    Raises ``ValidationError`` (a malformed email), ``InvitationNotAllowed`` (the inviter is not an
    owner/manager there, a manager inviting an owner, a role of the wrong kind), ``AlreadyMember``.
    """
    if (company is None) == (supplier is None):
        raise ValueError("invite() takes exactly one of company= or supplier=")
    email = User.objects.normalize_email(email.strip()).lower()
    validate_email(email)
    with transaction.atomic():
        # Lock the organisation's row: two managers inviting the same email at once would both find no
        # pending invitation and the second would fail on the unique constraint instead of replacing it.
        organisation = (Company.objects.select_for_update().get(pk=company.pk) if company is not None
                        else Supplier.objects.select_for_update().get(pk=supplier.pk))  # type: ignore[union-attr]
        _check_inviter(invited_by=invited_by, company=company, supplier=supplier, role=role)
        if _already_member(email, company=company, supplier=supplier):
            raise AlreadyMember(_("%(email)s is already a member of %(org)s.") % {"email": email, "org": organisation})
        now = timezone.now()
        Invitation.objects.filter(email=email, company=company, supplier=supplier, status=InvitationStatus.PENDING).update(
            status=InvitationStatus.REVOKED, closed_at=now)
        key = secrets.token_urlsafe(32)
        invitation = Invitation.objects.create(email=email, company=company, supplier=supplier, role=role,
                                               key_hash=invitation_key_hash(key), invited_by=invited_by,
                                               expires_at=now + invitation_ttl())
        accept_url = (site_url or settings.SITE_URL).rstrip("/") + reverse(INVITATION_ACCEPT_URL_NAME, args=[key])
        issued = IssuedInvitation(invitation=invitation, key=key, accept_url=accept_url)
        # Sent after the commit: a rolled-back invitation must not leave a live-looking link in an inbox.
        transaction.on_commit(lambda: send_invitation_email(issued))
        return issued


def send_invitation_email(issued: IssuedInvitation) -> None:
    """Email the invitation's link to its address (subject and body from
    ``templates/account/email/invitation_{subject,message}.txt``)."""
    invitation = issued.invitation
    context = {"invitation": invitation, "organisation": invitation.organisation, "role": invitation.role_label,
               "accept_url": issued.accept_url, "expires_at": invitation.expires_at,
               "inviter": invitation.invited_by.email if invitation.invited_by else ""}
    subject = " ".join(render_to_string("account/email/invitation_subject.txt", context).split())
    body = render_to_string("account/email/invitation_message.txt", context)
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [invitation.email])


def open_invitation(key: str) -> Invitation:
    """The open (pending, unexpired) invitation with this link key. Raises ``InvitationInvalid``."""
    invitation = (Invitation.objects.select_related("company", "supplier", "invited_by")
                  .filter(key_hash=invitation_key_hash(key)).first()) if key else None
    if invitation is None or not invitation.is_open:
        raise InvitationInvalid(_("This invitation is not valid: it has been used, revoked or has expired."))
    return invitation


def _lock_open_invitation(key: str) -> Invitation:
    # Lock: the same link followed twice at once (a double click) must make one membership.
    invitation = Invitation.objects.select_for_update().filter(key_hash=invitation_key_hash(key)).first() if key else None
    if invitation is None or not invitation.is_open:
        raise InvitationInvalid(_("This invitation is not valid: it has been used, revoked or has expired."))
    return invitation


def _join(invitation: Invitation, user: Any) -> Membership | SupplierMembership:
    if invitation.company_id:
        membership, _created = Membership.objects.get_or_create(user=user, company_id=invitation.company_id,
                                                                defaults={"role": invitation.role})
    else:
        membership, _created = SupplierMembership.objects.get_or_create(user=user, supplier_id=invitation.supplier_id,
                                                                        defaults={"role": invitation.role})
    invitation.status = InvitationStatus.ACCEPTED
    invitation.accepted_by = user
    invitation.closed_at = timezone.now()
    invitation.save(update_fields=["status", "accepted_by", "closed_at"])
    return membership


def accept_invitation(*, key: str, user: Any) -> Membership | SupplierMembership:
    """Accept the invitation with link ``key`` as the signed-in ``user``, whose email must be the
    invited one (case-insensitive). Returns the new membership (an existing one is kept as it is).

    Raises ``InvitationInvalid`` (unknown key, used, revoked, expired) and ``InvitationEmailMismatch``."""
    with transaction.atomic():
        invitation = _lock_open_invitation(key)
        if user.email.lower() != invitation.email:
            raise InvitationEmailMismatch(_("This invitation was sent to another email address."))
        return _join(invitation, user)


def accept_invitation_as_new_user(*, key: str, password: str, full_name: str = "") -> tuple[Any, Membership | SupplierMembership]:
    """Create the account of an invited email that has none (``password`` checked by the password
    validators; the email counts as verified — the person followed the emailed link) and accept the
    invitation. Returns ``(user, membership)``.

    Raises ``InvitationInvalid``, ``InvitationUserExists`` (sign in instead), ``ValidationError`` (a
    weak password; messages per validator)."""
    with transaction.atomic():
        invitation = _lock_open_invitation(key)
        if User.objects.filter(email__iexact=invitation.email).exists():
            raise InvitationUserExists(_("An account with this email exists: sign in to accept the invitation."))
        candidate = User(email=invitation.email, full_name=full_name.strip()[:200])
        password_validation.validate_password(password, user=candidate)
        user = User.objects.create_user(invitation.email, password, full_name=candidate.full_name)
        EmailAddress.objects.create(user=user, email=user.email, primary=True, verified=True)
        return user, _join(invitation, user)


def revoke_invitation(*, invitation: Invitation) -> Invitation:
    """Revoke a pending invitation (its link stops working at once). Revoking one that is no longer
    pending changes nothing. Returns the invitation as stored."""
    with transaction.atomic():
        # Lock: a revoke racing an acceptance — one of them wins, never both.
        invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if invitation.status == InvitationStatus.PENDING:
            invitation.status = InvitationStatus.REVOKED
            invitation.closed_at = timezone.now()
            invitation.save(update_fields=["status", "closed_at"])
        return invitation


def expire_invitations(*, now: dt.datetime | None = None) -> int:
    """Mark every pending invitation past its ``expires_at`` as expired; returns how many. (An expired
    link is refused before this runs too: ``open_invitation`` checks the time itself.)"""
    now = now or timezone.now()
    return Invitation.objects.filter(status=InvitationStatus.PENDING, expires_at__lte=now).update(
        status=InvitationStatus.EXPIRED, closed_at=now)


def pending_invitations(*, company: Company | None = None, supplier: Supplier | None = None) -> QuerySet[Invitation]:
    """The organisation's open invitations, newest first (for a members page)."""
    return Invitation.objects.filter(company=company, supplier=supplier, status=InvitationStatus.PENDING,
                                     expires_at__gt=timezone.now()).select_related("invited_by").order_by("-created_at")


# --- demo people (make run) ----------------------------------------------------------------

@dataclass(frozen=True)
class DemoCredentials:
    """How a demo person signs in: ``email``, ``password`` and the TOTP ``totp_secret`` (base32, as
    authenticator apps take it) with its ``totp_uri`` (``otpauth://totp/…``, for a QR code). Either
    secret is None when it was not made now (it is stored only hashed / inside the device)."""

    email: str
    password: str | None
    totp_secret: str | None
    totp_uri: str | None


def ensure_totp_device(*, user: Any, reset: bool = False) -> tuple[str, str] | None:
    """Give ``user`` a confirmed TOTP authenticator (django-otp) if they have none, or a new one with
    ``reset``. Returns ``(base32 secret, otpauth URI)`` when a device was made now, else None."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    with transaction.atomic():
        if reset:
            TOTPDevice.objects.filter(user=user).delete()
        elif TOTPDevice.objects.filter(user=user, confirmed=True).exists():
            return None
        device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True)
        return base64.b32encode(device.bin_key).decode(), device.config_url


def ensure_demo_member(*, email: str, role: str, company: Company | None = None, supplier: Supplier | None = None,
                       reset: bool = False) -> DemoCredentials:
    """The demo's company manager or supplier: the user ``email`` (created with a generated password),
    a membership of ``company`` or ``supplier`` with ``role``, and a TOTP authenticator. With ``reset``
    the password and the authenticator are replaced. The returned secrets are those made now (shown
    once by ``jetstream_demo``); an existing person's are None. Raises ``ValueError`` without exactly
    one of ``company`` / ``supplier``."""
    if (company is None) == (supplier is None):
        raise ValueError("ensure_demo_member() takes exactly one of company= or supplier=")
    with transaction.atomic():
        user = User.objects.filter(email__iexact=email).first()
        password = None
        if user is None or reset:
            password = secrets.token_urlsafe(12)
            if user is None:
                # Two demo runs at once: the unique email lets one create the user, the other fails.
                user = User.objects.create_user(email, password)
            else:
                user.set_password(password)
                user.save(update_fields=["password"])
        EmailAddress.objects.get_or_create(user=user, email=user.email, defaults={"primary": True, "verified": True})
        if company is not None:
            Membership.objects.get_or_create(user=user, company=company, defaults={"role": role})
        else:
            SupplierMembership.objects.get_or_create(user=user, supplier=supplier, defaults={"role": role})
        totp = ensure_totp_device(user=user, reset=reset)
        return DemoCredentials(email=user.email, password=password, totp_secret=totp[0] if totp else None,
                               totp_uri=totp[1] if totp else None)

# --- departments in the company cabinet ------------------------------------------------------

@dataclass(frozen=True)
class DepartmentNode:
    """A department in its company's tree: ``depth`` (0 = top level) and the ids of every
    department below it (``descendants``, at any depth)."""

    department: Department
    depth: int
    descendants: tuple[int, ...]


def department_tree(*, company: Company) -> list[DepartmentNode]:
    """The company's departments depth first (each followed by its children, by name), with
    ``company`` and ``parent`` loaded. One query."""
    departments = list(Department.objects.filter(company=company).select_related("company", "parent").order_by("name", "pk"))
    children: dict[int | None, list[Department]] = {}
    for department in departments:
        children.setdefault(department.parent_id, []).append(department)
    nodes: list[DepartmentNode] = []

    def walk(department: Department, depth: int, seen: frozenset[int]) -> list[int]:
        index = len(nodes)
        nodes.append(DepartmentNode(department, depth, ()))
        below: list[int] = []
        for child in children.get(department.pk, []):
            if child.pk not in seen:  # a cycle is refused on save; never loop on one written behind our back
                below += [child.pk, *walk(child, depth + 1, seen | {child.pk})]
        nodes[index] = DepartmentNode(department, depth, tuple(below))
        return below

    for top in children.get(None, []):
        walk(top, 0, frozenset({top.pk}))
    return nodes


def new_department_slug(*, company: Company, name: str) -> str:
    """A slug for a new department of ``company`` made from ``name`` (Cyrillic transliterated
    roughly; ``department`` when nothing is left), with ``-2``, ``-3``… if it is taken."""
    from django.utils.text import slugify

    table = str.maketrans({"а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh", "з": "z", "и": "i",
                           "й": "y", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t",
                           "у": "u", "ф": "f", "х": "h", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "sch", "ъ": "", "ы": "y",
                           "ь": "", "э": "e", "ю": "yu", "я": "ya"})
    base = slugify(name.lower().translate(table))[:56].strip("-") or "department"
    taken = set(Department.objects.filter(company=company, slug__startswith=base).values_list("slug", flat=True))
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    return slug


def delete_department(*, department: Department) -> None:
    """Delete a department that nothing refers to. Raises ``ValidationError`` while it has
    sub-departments, tokens (revoked ones included: their history names it), usage records or a
    budget account in the ledger."""
    from apps.billing.models import UsageRecord

    with transaction.atomic():
        # Lock: a token or a child department added to it while it is deleted.
        department = Department.objects.select_for_update().get(pk=department.pk)
        if department.children.exists():
            raise ValidationError(_("Move or delete its sub-departments first."))
        if department.tokens.exists():
            raise ValidationError(_("Its tokens still name it; move them to another department first."))
        if UsageRecord.objects.filter(department=department).exists() or Account.objects.filter(department=department).exists():
            raise ValidationError(_("It has spend on record, which must keep naming it; it cannot be deleted."))
        department.delete()


# --- members of a company ----------------------------------------------------------------------

def _check_owner_rules(*, membership: Membership, new_role: str | None, by: Membership) -> None:
    """Only an owner grants, changes or removes an owner's place, and a company that has owners
    keeps at least one. Raises ``ValidationError``."""
    touches_owner = membership.role == CompanyRole.OWNER or new_role == CompanyRole.OWNER
    if touches_owner and by.role != CompanyRole.OWNER:
        raise ValidationError(_("Only an owner can make someone an owner or change an owner's role."))
    if membership.role == CompanyRole.OWNER and new_role != CompanyRole.OWNER:
        owners = Membership.objects.filter(company_id=membership.company_id, role=CompanyRole.OWNER).exclude(pk=membership.pk)
        if not owners.exists():
            raise ValidationError(_("A company keeps at least one owner; make someone else an owner first."))


def change_member_role(*, membership: Membership, role: str, by: Membership) -> Membership:
    """Give a member of a company the ``CompanyRole`` ``role``, as the member ``by`` (of the same
    company) asks. Raises ``ValidationError`` for an unknown role and when the owner rules forbid
    it (``_check_owner_rules``)."""
    if role not in CompanyRole.values:
        raise ValidationError(_("Unknown role: %(role)s.") % {"role": role})
    with transaction.atomic():
        # Lock the company's owners: two owners demoting each other at once must not leave none.
        list(Membership.objects.select_for_update().filter(company_id=membership.company_id, role=CompanyRole.OWNER))
        membership = Membership.objects.select_for_update().get(pk=membership.pk)
        if membership.role == role:
            return membership
        _check_owner_rules(membership=membership, new_role=role, by=by)
        membership.role = role
        membership.save(update_fields=["role"])
        return membership


def remove_member(*, membership: Membership, by: Membership) -> None:
    """Take a person out of a company (``by`` may be the member themself: leaving). Raises
    ``ValidationError`` when the owner rules forbid it (``_check_owner_rules``). Their tokens are
    the proxy's business (``apps.proxy.services.remove_company_member``)."""
    with transaction.atomic():
        # Lock the company's owners: two owners removing each other at once must not leave none.
        list(Membership.objects.select_for_update().filter(company_id=membership.company_id, role=CompanyRole.OWNER))
        membership = Membership.objects.select_for_update().get(pk=membership.pk)
        if by.pk != membership.pk or membership.role == CompanyRole.OWNER:
            _check_owner_rules(membership=membership, new_role=None, by=by)
        membership.delete()
