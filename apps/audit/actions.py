"""The audit trail's vocabulary: every action an ``AuditEvent`` may name, dotted ``<subject>.<verb>``.

An action not listed here is refused by ``services.record`` (``UnknownAction``), so this table is the
complete list of what the trail can say; docs/security.md ("Audit trail") describes it. ``WARNING``
lists the actions that exports mark with syslog severity 4 (warning) instead of 5 (notice).
"""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _

ACTIONS = {
    # Sign-in and second factor (allauth / django.contrib.auth / django-otp signals).
    "auth.sign_in": _("Signed in"),
    "auth.sign_in_failed": _("Sign-in failed"),
    "auth.sign_out": _("Signed out"),
    "mfa.device_added": _("Second-factor device added"),
    "mfa.device_confirmed": _("Second-factor device confirmed"),
    "mfa.device_removed": _("Second-factor device removed"),
    "mfa.verification_failed": _("Second-factor code rejected"),
    # People and their roles.
    "user.created": _("User created"),
    "user.changed": _("User's access changed"),
    "member.added": _("Member added"),
    "member.role_changed": _("Member's role changed"),
    "member.removed": _("Member removed"),
    # API tokens (apps/proxy): a person's changes and the limit job's automatic ones.
    "token.created": _("API token created"),
    "token.limits_changed": _("API token limits changed"),
    "token.settings_changed": _("API token settings changed"),
    "token.secret_rotated": _("API token secret replaced"),
    "token.blocked": _("API token blocked"),
    "token.unblocked": _("API token unblocked"),
    "token.auto_blocked": _("API token blocked automatically (limit reached)"),
    "token.auto_unblocked": _("API token unblocked automatically"),
    "token.revoked": _("API token revoked"),
    "token.deleted": _("API token deleted"),
    # Supplier keys (apps/providers): never the secret itself.
    "supplier_key.added": _("Supplier key added"),
    "supplier_key.changed": _("Supplier key settings changed"),
    "supplier_key.secret_rotated": _("Supplier key secret replaced"),
    "supplier_key.disabled": _("Supplier key disabled"),
    "supplier_key.enabled": _("Supplier key enabled"),
    "supplier_key.auto_disabled": _("Supplier key taken out by the gateway"),
    "supplier_key.deleted": _("Supplier key deleted"),
    # Money.
    "wallet.topup_requested": _("Top-up requested"),
    "wallet.topup_invoiced": _("Top-up invoice issued"),
    "wallet.topup_cancelled": _("Top-up request cancelled"),
    "wallet.topup_confirmed": _("Wallet topped up"),
    "ledger.correction": _("Ledger correction posted"),
    "withdrawal.requested": _("Withdrawal requested"),
    "withdrawal.approved": _("Withdrawal approved"),
    "withdrawal.rejected": _("Withdrawal rejected"),
    "withdrawal.lapsed": _("Withdrawal lapsed"),
    "payout.paid": _("Withdrawal paid out"),
    # Prices, coefficients and policies.
    "price.changed": _("Price changed"),
    "coefficient.changed": _("Sell or buy coefficient changed"),
    "company.created": _("Company created"),
    "company.changed": _("Company settings changed"),
    "policy.changed": _("Data policy changed"),
}

#: Failures and automatic interventions: syslog severity 4 (warning); everything else is 5 (notice).
WARNING = frozenset({"auth.sign_in_failed", "mfa.verification_failed", "token.auto_blocked", "supplier_key.auto_disabled"})


def action_label(action: str) -> str:
    """The human name of ``action`` in the active language (the action itself if unknown)."""
    return str(ACTIONS.get(action, action))
