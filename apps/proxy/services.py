"""API token services: issue, configure, rotate, block, unblock, revoke.

A token's secret exists in clear only in the return value of ``issue_token`` and
``rotate_token_secret`` (to be shown once); the database keeps its sha256 and a display
prefix. The proxy reads tokens through a snapshot cache at most ~1 s stale, so a block or
revoke reaches every replica within that second without any call from here.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.translation import gettext as _

from apps.accounts.models import Company, Membership
from apps.proxy.exceptions import TokenStateError
from apps.proxy.models import ApiToken, TokenStatus
from lib.upsert import UNCHANGED, Outcome, find_for_update, model_default, save_staged, stage

# Everything about a token a manager may set, besides its company, name, secret and status.
TOKEN_SETTINGS = (
    "department", "owner", "environment",
    "limit_total", "limit_weekly", "limit_monthly", "rpm", "tpm",
    "models_allow", "models_deny", "ip_allow", "max_distinct_ips", "expires_at", "fallbacks",
)


def default_token_settings() -> dict[str, Any]:
    """Every setting at its default: a token with no limits, any model, any address, prod."""
    return {name: model_default(ApiToken, name) for name in TOKEN_SETTINGS}


def check_owner(*, company: Company, owner) -> None:
    """A token's owner works for the token's company (the one rule, for services and forms)."""
    if owner is not None and (company.pk is None or not Membership.objects.filter(user=owner, company=company).exists()):
        raise ValidationError({"owner": _("The owner must be a member of the company.")})


def _checked_settings(company: Company, settings: dict[str, Any]) -> dict[str, Any]:
    unknown = set(settings) - set(TOKEN_SETTINGS)
    if unknown:
        raise TypeError(f"unknown token settings: {', '.join(sorted(unknown))}")
    check_owner(company=company, owner=settings.get("owner"))
    return settings


def _set_secret(token: ApiToken, secret: str | None) -> str:
    """Set the given (or a generated) secret on ``token``; refuse one another token uses."""
    try:
        plain = token.set_secret(secret)
    except ValidationError as exc:
        raise ValidationError({"secret": exc.messages}) from None
    if ApiToken.objects.filter(key_hash=token.key_hash).exclude(pk=token.pk).exists():
        raise ValidationError({"secret": _("Another token already uses this secret.")})
    return plain


def issue_token(
    *,
    company: Company,
    name: str,
    secret: str | None = None,
    status: str = TokenStatus.ACTIVE,
    dry_run: bool = False,
    **settings: Any,
) -> tuple[ApiToken, str | None]:
    """A new token; ``settings`` are any of ``TOKEN_SETTINGS`` (limits in micro-RUB).

    Returns the token and its secret in clear (generated when not given) — show it once. A
    dry run validates and returns no generated secret.
    """
    with transaction.atomic():
        token = ApiToken(company=company, name=name, status=status)
        stage(token, _checked_settings(company, settings))
        plain = _set_secret(token, secret)
        save_staged(token, [], dry_run=dry_run)
        return token, (None if dry_run and secret is None else plain)


def update_token(*, token: ApiToken, name: str | None = None, dry_run: bool = False, **settings: Any) -> Outcome:
    """Change the given ``settings`` (any of ``TOKEN_SETTINGS``) and, if given, the name; the others stay."""
    with transaction.atomic():
        # Lock: two managers editing one token's limits.
        token = find_for_update(ApiToken.objects, dry_run=dry_run, pk=token.pk)
        values = _checked_settings(token.company, settings)
        if name is not None:
            values = {"name": name, **values}
        changed = stage(token, values)
        return save_staged(token, changed, dry_run=dry_run)


def rotate_token_secret(*, token: ApiToken, secret: str | None = None, dry_run: bool = False) -> tuple[ApiToken, str | None]:
    """Replace the secret (with ``secret`` or a generated one); the old one stops working."""
    with transaction.atomic():
        # Lock: a concurrent revoke must not be followed by a rotation that revives the token's use.
        token = find_for_update(ApiToken.objects, dry_run=dry_run, pk=token.pk)
        if token.status == TokenStatus.REVOKED:
            raise TokenStateError(_("A revoked token cannot get a new secret; issue a new token."))
        plain = _set_secret(token, secret)
        save_staged(token, ["secret"], dry_run=dry_run)
        return token, (None if dry_run and secret is None else plain)


def set_token_status(*, token: ApiToken, status: str, reason: str = "", dry_run: bool = False) -> Outcome:
    """Move a token between active and blocked, or revoke it for good."""
    with transaction.atomic():
        # Lock: a block and a revoke of the same token at once.
        token = find_for_update(ApiToken.objects, dry_run=dry_run, pk=token.pk)
        if token.status == status:
            return Outcome(token, UNCHANGED)
        if token.status == TokenStatus.REVOKED:
            raise TokenStateError(_("A revoked token stays revoked; issue a new token."))
        changed = stage(token, {"status": status, "status_reason": reason})
        return save_staged(token, changed, dry_run=dry_run)


def block_token(*, token: ApiToken, reason: str) -> Outcome:
    """``set_token_status`` to BLOCKED (the proxy answers 403 with ``reason``). Raises
    ``TokenStateError`` for a revoked token."""
    return set_token_status(token=token, status=TokenStatus.BLOCKED, reason=reason)


def unblock_token(*, token: ApiToken, reason: str = "") -> Outcome:
    """``set_token_status`` back to ACTIVE. Raises ``TokenStateError`` for a revoked token."""
    return set_token_status(token=token, status=TokenStatus.ACTIVE, reason=reason)


def revoke_token(*, token: ApiToken, reason: str) -> Outcome:
    """``set_token_status`` to REVOKED, for good (UNCHANGED if it already is)."""
    return set_token_status(token=token, status=TokenStatus.REVOKED, reason=reason)


# A token blocked because a spend limit is reached (``rollover.enforce_limits``) carries a reason that
# starts with this; only such blocks are lifted by the job (a person's block is never touched).
LIMIT_BLOCK_PREFIX = "Limit reached: "


def block_for_limit(*, token: ApiToken, reason: str) -> bool:
    """Block an ACTIVE token because a spend limit is reached, with ``reason`` (starting with
    ``LIMIT_BLOCK_PREFIX``); a token already blocked (by a person or the job) or revoked is left as
    it is. Returns whether it was blocked."""
    with transaction.atomic():
        token = find_for_update(ApiToken.objects, dry_run=False, pk=token.pk)
        if token is None or token.status != TokenStatus.ACTIVE:
            return False
        save_staged(token, stage(token, {"status": TokenStatus.BLOCKED, "status_reason": reason}), dry_run=False)
        return True


def release_limit_block(*, token: ApiToken) -> bool:
    """Unblock a token the job blocked on a limit (its reason still starts with ``LIMIT_BLOCK_PREFIX``:
    a block a person set meanwhile stays). Returns whether it was unblocked."""
    with transaction.atomic():
        token = find_for_update(ApiToken.objects, dry_run=False, pk=token.pk)
        if token is None or token.status != TokenStatus.BLOCKED or not token.status_reason.startswith(LIMIT_BLOCK_PREFIX):
            return False
        save_staged(token, stage(token, {"status": TokenStatus.ACTIVE, "status_reason": ""}), dry_run=False)
        return True
