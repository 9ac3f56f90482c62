"""Where the trail's events come from: signals of other apps' models and of sign-in, connected in
``AuditConfig.ready`` by app label and model name (this app imports no other app).

A change is one ``save`` of a watched model: ``pre_save`` reads the row's tracked fields as they are in
the database, ``post_save`` compares them with the instance and records one event per kind of
change (a block, a limit change, a rotated secret); ``post_delete`` records deletions. A save that
changes nothing watched records nothing, so repeating an idempotent service call adds no event.
Bulk ``QuerySet.update`` sends no signals and so records nothing: services that move watched state
save rows one by one.

Sign-in: django.contrib.auth's ``user_logged_in`` / ``user_login_failed`` / ``user_logged_out``
(allauth and the admin both send them) and django-otp's ``otp_verification_failed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.contrib.auth import signals as auth_signals
from django.db import models
from django.db.models import signals

from . import services
from .context import current_actor
from .redaction import json_safe, snapshot, tracked_fields

Change = tuple[str, dict[str, Any] | None, dict[str, Any] | None]  # (action, before, after)
_BEFORE = "_audit_before"


@dataclass
class Watch:
    """How one model's saves and deletions become events.

    ``fields``: what a snapshot holds (secrets are never among them); ``secret_fields``: compared
    to notice a replaced secret, never recorded; ``created`` / ``changed`` / ``deleted``: the
    events of an insert, an update (given before, after and the changed names) and a delete;
    ``describe``: the object's label in the trail (``str`` unless that shows part of a secret).
    """

    label: str
    ignore: tuple[str, ...] = ()
    secret_fields: tuple[str, ...] = ()
    created: Callable[[Any, dict[str, Any]], list[Change]] | None = None
    changed: Callable[[Any, dict[str, Any], dict[str, Any], set[str]], list[Change]] | None = None
    deleted: Callable[[Any, dict[str, Any]], list[Change]] | None = None
    describe: Callable[[Any], str] = str
    fields: tuple[str, ...] = field(default=(), init=False)

    def bind(self, model: type[models.Model]) -> None:
        self.fields = tracked_fields(model, ignore=self.ignore)


def _pick(values: dict[str, Any], names) -> dict[str, Any]:
    return {name: values.get(name) for name in names}


def _diff(before: dict[str, Any], after: dict[str, Any], names: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    return _pick(before, sorted(names)), _pick(after, sorted(names))


def _by_system() -> bool:
    return current_actor().is_system


# --- API tokens ----------------------------------------------------------------------------------

TOKEN_LIMITS = {"limit_total", "limit_weekly", "limit_monthly", "rpm", "tpm", "models_allow", "models_deny", "ip_allow",
                "max_distinct_ips", "expires_at"}
_STATUS = {"status", "status_reason"}


def _token_status(before: dict[str, Any], after: dict[str, Any]) -> str:
    old, new = before.get("status"), after.get("status")
    if new == "revoked":
        return "token.revoked"
    if new == "blocked":
        # Nobody is acting when the limit job (apps/proxy/rollover.py) or the meter blocks a token.
        return "token.auto_blocked" if _by_system() else "token.blocked"
    if new == "active" and old == "blocked":
        return "token.auto_unblocked" if _by_system() else "token.unblocked"
    return "token.settings_changed"


def _token_changed(token, before, after, changed) -> list[Change]:
    events: list[Change] = []
    if "status" in changed:
        events.append((_token_status(before, after), *_diff(before, after, _STATUS)))
    if changed & TOKEN_LIMITS:
        events.append(("token.limits_changed", *_diff(before, after, changed & TOKEN_LIMITS)))
    others = changed - TOKEN_LIMITS - _STATUS - {"key_hash"}
    if others:
        events.append(("token.settings_changed", *_diff(before, after, others)))
    if "key_hash" in changed:
        events.append(("token.secret_rotated", None, None))
    return events


# --- supplier keys -------------------------------------------------------------------------------

KEY_SECRETS = ("secret_encrypted", "secret_key_id", "secret_last4")


def _key_status(new: str) -> str:
    return {"disabled": "supplier_key.disabled", "active": "supplier_key.enabled"}.get(new, "supplier_key.auto_disabled")


def _supplier_key_changed(key, before, after, changed) -> list[Change]:
    events: list[Change] = []
    if "status" in changed:
        events.append((_key_status(after["status"]), *_diff(before, after, _STATUS)))
    if "buy_coefficient" in changed:
        events.append(("coefficient.changed", *_diff(before, after, {"buy_coefficient"})))
    others = changed - _STATUS - {"buy_coefficient", *KEY_SECRETS}
    if others:
        events.append(("supplier_key.changed", *_diff(before, after, others)))
    # A new master key re-encrypts the same secret (same last characters, new key id): not a rotation.
    reencrypted = "secret_key_id" in changed and "secret_last4" not in changed
    if "secret_encrypted" in changed and not reencrypted:
        events.append(("supplier_key.secret_rotated", None, None))
    return events


# --- prices and coefficients --------------------------------------------------------------------

def _price_created(price, after) -> list[Change]:
    previous = (type(price)._base_manager.filter(model_id=price.model_id, valid_from__lt=price.valid_from).exclude(pk=price.pk)
                .order_by("-valid_from").first())
    before = snapshot(previous, tracked_fields(type(price), ignore=("created_at",))) if previous is not None else None
    return [("price.changed", before, after)]


def _company_changed(company, before, after, changed) -> list[Change]:
    events: list[Change] = []
    if "sell_coefficient" in changed:
        events.append(("coefficient.changed", *_diff(before, after, {"sell_coefficient"})))
    if changed - {"sell_coefficient"}:
        events.append(("company.changed", *_diff(before, after, changed - {"sell_coefficient"})))
    return events


def _status_events(actions: dict[str, str], extra: tuple[str, ...] = ()) -> Callable[..., list[Change]]:
    """An update handler recording ``actions[new status]`` when ``status`` changes (other changes: nothing)."""

    def changed_(obj, before, after, changed) -> list[Change]:
        action = actions.get(after.get("status", "")) if "status" in changed else None
        if action is None:
            return []
        names = {"status", *(name for name in extra if name in after)}
        return [(action, *_diff(before, after, names))]

    return changed_


def _inserted(action: str) -> Callable[..., list[Change]]:
    """An insert handler recording ``action`` with the whole snapshot as ``after``."""

    def created(obj, values) -> list[Change]:
        return [(action, None, values)]

    return created


def _removed(action: str) -> Callable[..., list[Change]]:
    """A delete handler recording ``action`` with the whole snapshot as ``before``."""

    def deleted(obj, values) -> list[Change]:
        return [(action, values, None)]

    return deleted


def _all_changes(action: str) -> Callable[..., list[Change]]:
    def changed_(obj, before, after, changed) -> list[Change]:
        return [(action, *_diff(before, after, changed))]

    return changed_


def _membership_changed(action: str) -> Callable[..., list[Change]]:
    def changed_(obj, before, after, changed) -> list[Change]:
        return [(action, *_diff(before, after, changed))] if "role" in changed else []

    return changed_


def _device_changed(device, before, after, changed) -> list[Change]:
    if "confirmed" in changed and after.get("confirmed"):
        return [("mfa.device_confirmed", *_diff(before, after, {"confirmed"}))]
    return []


# --- ledger transfers: only the money actions, never usage ---------------------------------------

def _transfer_created(transfer, after) -> list[Change]:
    if transfer.kind == "top_up" and transfer.status == "posted":
        return [("wallet.topup_confirmed", None, after)]
    if transfer.kind == "correction":
        return [("ledger.correction", None, after)]
    return []


def _transfer_tenant(transfer) -> services.Tenant:
    account = apps.get_model("billing", "Account")
    for account_id in (transfer.credit_account_id, transfer.debit_account_id):
        owner = account.objects.filter(pk=account_id).values_list("company_id", "supplier_id").first()
        if owner and (owner[0] or owner[1]):
            return services.Tenant(company_id=owner[0], supplier_id=owner[1])
    return services.Tenant()


WATCHES: list[Watch] = [
    Watch("proxy.ApiToken", ignore=("created_at", "updated_at", "last_used_at"), secret_fields=("key_hash",),
          created=_inserted("token.created"), changed=_token_changed, deleted=_removed("token.deleted")),
    Watch("providers.SupplierKey", ignore=("created_at", "updated_at"), secret_fields=KEY_SECRETS,
          created=_inserted("supplier_key.added"), changed=_supplier_key_changed, deleted=_removed("supplier_key.deleted"),
          describe=lambda key: key.name),  # str() shows the secret's last four characters
    Watch("providers.Price", ignore=("created_at",), created=_price_created, deleted=_removed("price.changed")),
    Watch("accounts.Company", ignore=("created_at",), created=_inserted("company.created"), changed=_company_changed),
    Watch("accounts.CompanyModelCoefficient", created=_inserted("coefficient.changed"), changed=_all_changes("coefficient.changed"),
          deleted=_removed("coefficient.changed")),
    Watch("moderation.Policy", ignore=("updated_at", "created_at"), created=_inserted("policy.changed"),
          changed=_all_changes("policy.changed"), deleted=_removed("policy.changed")),
    Watch("billing.WithdrawalRequest", ignore=("created_at",), created=_inserted("withdrawal.requested"),
          changed=_status_events({"approved": "withdrawal.approved", "rejected": "withdrawal.rejected", "lapsed": "withdrawal.lapsed",
                                  "paid": "payout.paid"}, extra=("decided_by_id", "reject_reason", "payment_id", "batch_id"))),
    # A paid request's money is the ledger's top-up transfer (wallet.topup_confirmed), recorded once there.
    Watch("invoicing.TopUpRequest", ignore=("requested_at",), created=_inserted("wallet.topup_requested"),
          changed=_status_events({"invoiced": "wallet.topup_invoiced", "cancelled": "wallet.topup_cancelled"}, extra=("invoice_id",))),
    Watch("billing.Transfer", ignore=("created_at", "metadata"), created=_transfer_created),
    # Who may sign in and as what: the e-mail, active, staff and superuser flags (never the password).
    Watch("accounts.User", ignore=("last_login", "date_joined", "full_name", "language"), created=_inserted("user.created"),
          changed=_all_changes("user.changed")),
    Watch("accounts.Membership", ignore=("created_at",), created=_inserted("member.added"), changed=_membership_changed("member.role_changed"),
          deleted=_removed("member.removed")),
    Watch("accounts.SupplierMembership", ignore=("created_at",), created=_inserted("member.added"),
          changed=_membership_changed("member.role_changed"), deleted=_removed("member.removed")),
    Watch("otp_totp.TOTPDevice", ignore=("last_t", "drift", "throttling_failure_timestamp", "throttling_failure_count", "created_at",
                                         "last_used_at", "tolerance", "step", "t0", "digits"),
          created=_inserted("mfa.device_added"), changed=_device_changed, deleted=_removed("mfa.device_removed")),
    Watch("otp_static.StaticDevice", ignore=("throttling_failure_timestamp", "throttling_failure_count", "created_at", "last_used_at"),
          created=_inserted("mfa.device_added"), changed=_device_changed, deleted=_removed("mfa.device_removed")),
]

_by_model: dict[type[models.Model], Watch] = {}


def user_tenant(user_id: int | None) -> services.Tenant:
    """A person's tenant for events about the person (sign-in, devices): their oldest company and
    oldest supplier membership — the cabinet they land in."""
    if user_id is None:
        return services.Tenant()
    company = (apps.get_model("accounts", "Membership").objects.filter(user_id=user_id).order_by("created_at", "pk")
               .values_list("company_id", flat=True).first())
    supplier = (apps.get_model("accounts", "SupplierMembership").objects.filter(user_id=user_id).order_by("created_at", "pk")
                .values_list("supplier_id", flat=True).first())
    return services.Tenant(company_id=company, supplier_id=supplier)


def _tenant(instance: Any) -> Any:
    label = instance._meta.label
    if label == "billing.Transfer":
        return _transfer_tenant(instance)
    if label in ("otp_totp.TOTPDevice", "otp_static.StaticDevice"):
        return user_tenant(instance.user_id)
    if label == "accounts.User":
        return user_tenant(instance.pk)
    return instance


def _record_all(instance: Any, changes: list[Change]) -> None:
    if not changes:
        return
    tenant, label = _tenant(instance), _by_model[type(instance)].describe(instance)
    for action, before, after in changes:
        services.record(action, obj=instance, before=before, after=after, tenant=tenant, object_label=label)


def _db_values(watch: Watch, model: type[models.Model], pk: Any) -> dict[str, Any] | None:
    row = model._base_manager.filter(pk=pk).values(*watch.fields, *watch.secret_fields).first()
    return None if row is None else {name: json_safe(value) for name, value in row.items()}


def _pre_save(sender, instance, raw=False, update_fields=None, **kwargs) -> None:
    watch = _by_model[sender]
    instance.__dict__[_BEFORE] = None
    if raw or instance._state.adding or instance.pk is None or watch.changed is None:
        return
    if update_fields is not None and not (set(update_fields) & {*watch.fields, *watch.secret_fields,
                                                                 *(name.removesuffix("_id") for name in watch.fields)}):
        return
    instance.__dict__[_BEFORE] = _db_values(watch, sender, instance.pk)


def _post_save(sender, instance, created, raw=False, **kwargs) -> None:
    if raw:
        return
    watch = _by_model[sender]
    after = snapshot(instance, watch.fields)
    if created:
        _record_all(instance, watch.created(instance, after) if watch.created else [])
        return
    before = instance.__dict__.pop(_BEFORE, None)
    if before is None or watch.changed is None:
        return
    secrets_now = {name: json_safe(getattr(instance, name)) for name in watch.secret_fields}
    changed = {name for name in (*watch.fields, *watch.secret_fields) if before.get(name) != {**after, **secrets_now}.get(name)}
    if changed:
        _record_all(instance, watch.changed(instance, _pick(before, watch.fields), after, changed))


def _post_delete(sender, instance, **kwargs) -> None:
    watch = _by_model[sender]
    if watch.deleted is not None:
        _record_all(instance, watch.deleted(instance, snapshot(instance, watch.fields)))


# --- sign-in ----------------------------------------------------------------------------------------

def _signed_in(sender, request=None, user=None, **kwargs) -> None:
    services.record("auth.sign_in", actor=user, obj=user, tenant=user_tenant(getattr(user, "pk", None)))


def _sign_in_failed(sender, credentials=None, request=None, **kwargs) -> None:
    # Only the address tried is kept: django.contrib.auth already blanks the password, and nothing
    # else of ``credentials`` is read.
    attempted = str((credentials or {}).get("email") or (credentials or {}).get("username") or "")
    services.record("auth.sign_in_failed", actor_email=attempted or "-")


def _signed_out(sender, request=None, user=None, **kwargs) -> None:
    if user is not None:
        services.record("auth.sign_out", actor=user, obj=user, tenant=user_tenant(user.pk))


def _otp_failed(sender, user=None, **kwargs) -> None:
    services.record("mfa.verification_failed", actor=user, obj=user, tenant=user_tenant(getattr(user, "pk", None)))


def connect() -> None:
    """Connect every receiver (idempotent: ``dispatch_uid`` per model). Models of apps that are not
    installed are skipped."""
    for watch in WATCHES:
        try:
            model = apps.get_model(watch.label)
        except LookupError:
            continue
        watch.bind(model)
        _by_model[model] = watch
        uid = f"audit:{watch.label}"
        signals.pre_save.connect(_pre_save, sender=model, dispatch_uid=uid)
        signals.post_save.connect(_post_save, sender=model, dispatch_uid=uid)
        signals.post_delete.connect(_post_delete, sender=model, dispatch_uid=uid)
    auth_signals.user_logged_in.connect(_signed_in, dispatch_uid="audit:sign_in")
    auth_signals.user_login_failed.connect(_sign_in_failed, dispatch_uid="audit:sign_in_failed")
    auth_signals.user_logged_out.connect(_signed_out, dispatch_uid="audit:sign_out")
    try:
        from django_otp.forms import otp_verification_failed
    except ImportError:  # django-otp not installed
        return
    otp_verification_failed.connect(_otp_failed, dispatch_uid="audit:otp_failed")
