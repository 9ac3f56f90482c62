"""The audit trail: one append-only, hash-chained table.

Tenants and actors are kept as plain ids (with the actor's e-mail as it was), not foreign keys: the
trail must outlive the users, companies and objects it talks about, and a cascade must never try to
delete a row — PostgreSQL refuses UPDATE and DELETE on this table (migration ``0002``).
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from .actions import action_label


class ActorRole(models.TextChoices):
    """Who acted, as the trail records it (the role in the event's tenant at that moment)."""

    SYSTEM = "system", _("System")
    ANONYMOUS = "anonymous", _("Anonymous")
    SUPERADMIN = "superadmin", _("Superadmin")
    OWNER = "owner", _("Owner")
    MANAGER = "manager", _("Manager")
    VIEWER = "viewer", _("Viewer")
    SUPPLIER_OWNER = "supplier_owner", _("Supplier owner")
    SUPPLIER_MEMBER = "supplier_member", _("Supplier member")
    USER = "user", _("User")


class AuditEvent(models.Model):
    """One security- or money-relevant action. Written only by ``apps.audit.services.record``.

    A row is inserted *pending* (``seq`` and ``hash`` empty) in the transaction of the change it
    records, and *sealed* right after that transaction commits (``services.seal_pending``): ``seq``
    is then its position in the chain (1, 2, 3, … without gaps), ``prev_hash`` the previous row's
    ``hash`` (64 zeros for the first) and ``hash`` the SHA-256 (hex) of the row's canonical JSON
    (``chain.canonical_payload``), which includes ``prev_hash``. ``before`` / ``after`` hold the
    changed fields' values (amounts in micro-rubles, as the models store them), never a secret.
    """

    seq = models.BigIntegerField(_("sequence number"), unique=True, null=True, blank=True, editable=False)
    occurred_at = models.DateTimeField(_("time"), db_index=True, editable=False)
    actor_id = models.BigIntegerField(_("actor id"), null=True, blank=True, db_index=True, editable=False)
    actor_email = models.CharField(_("actor"), max_length=254, blank=True, editable=False)
    actor_role = models.CharField(_("actor role"), max_length=16, choices=ActorRole.choices, editable=False)
    company_id = models.BigIntegerField(_("company id"), null=True, blank=True, editable=False)
    supplier_id = models.BigIntegerField(_("supplier id"), null=True, blank=True, editable=False)
    action = models.CharField(_("action"), max_length=64, db_index=True, editable=False)
    object_type = models.CharField(_("object type"), max_length=100, blank=True, editable=False)
    object_id = models.CharField(_("object id"), max_length=64, blank=True, editable=False)
    object_label = models.CharField(_("object"), max_length=200, blank=True, editable=False)
    before = models.JSONField(_("before"), null=True, blank=True, editable=False)
    after = models.JSONField(_("after"), null=True, blank=True, editable=False)
    client_ip = models.CharField(_("client IP"), max_length=45, blank=True, editable=False)
    request_id = models.CharField(_("request id"), max_length=64, blank=True, editable=False)
    prev_hash = models.CharField(_("previous hash"), max_length=64, blank=True, editable=False)
    hash = models.CharField(_("hash (SHA-256)"), max_length=64, unique=True, null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("audit event")
        verbose_name_plural = _("audit events")
        ordering = ["-seq"]
        indexes = [
            # A tenant's listing and export: its events, newest first, keyset-paginated by seq.
            models.Index(fields=["company_id", "-seq"], name="audit_company_seq"),
            models.Index(fields=["supplier_id", "-seq"], name="audit_supplier_seq"),
            # The sealer's queue: pending rows in insertion order.
            models.Index(fields=["id"], name="audit_pending", condition=models.Q(seq__isnull=True)),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action}"

    @property
    def changes(self) -> list[tuple[str, object, object]]:
        """``(field, before, after)`` for each key of ``before`` / ``after``, sorted by field (None: absent)."""
        before, after = self.before or {}, self.after or {}
        return [(name, before.get(name), after.get(name)) for name in sorted({*before, *after})]

    @property
    def action_label(self) -> str:
        """The action's human name in the active language."""
        return action_label(self.action)
