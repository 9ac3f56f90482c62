"""The audit trail's services: record an event, read and filter the trail, verify the chain.

``record`` is the one way in; any app may call it (it imports no other app: tenants and roles are
looked up through ``django.apps.apps.get_model``).

Two steps, so that recording never makes one writer wait for another:

1. ``record`` inserts the event *pending* in the caller's transaction — it commits or rolls back
   with the change it records, and takes no lock.
2. ``seal_pending`` chains the committed pending rows in its own short transaction, under a
   PostgreSQL transaction-level advisory lock (``CHAIN_LOCK_KEY``): the head it reads is the real
   head, so concurrent sealers cannot fork the chain. ``record`` asks for it on commit
   (``transaction.on_commit``); Celery beat runs it every minute for anything left (a worker that
   died between commit and seal); ``verify_chain``, the listings and the exports run it first.

Chaining inside the writer's transaction would hold the chain lock until that transaction
commits — a payout batch would stall every sign-in, and a writer holding a ledger row while
waiting for the lock could deadlock with one holding the lock and waiting for that row.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.db import DatabaseError, connection, models, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from .actions import ACTIONS
from .chain import GENESIS, Verification, row_hash, walk
from .context import Actor, current_actor
from .exceptions import InvalidExportFilter, UnknownAction
from .models import ActorRole, AuditEvent
from .redaction import json_safe

logger = logging.getLogger("jetstream.audit")

#: pg_advisory_xact_lock key of the chain's seals ("jsaudit1" as a big-endian int64).
CHAIN_LOCK_KEY = int.from_bytes(b"jsaudit1", "big", signed=True)

_OBJECT_LABEL_MAX = 200


@dataclass(frozen=True)
class Tenant:
    """Whose record an event is: a company's or a supplier's id (or neither: the platform's)."""

    company_id: int | None = None
    supplier_id: int | None = None


def tenant_of(value: Any) -> Tenant:
    """The tenant of ``value``: a ``Tenant``; a Company or Supplier; or any object with a
    ``company_id`` / ``supplier_id`` attribute (a token, a key, a withdrawal). None → no tenant."""
    if value is None:
        return Tenant()
    if isinstance(value, Tenant):
        return value
    label = getattr(getattr(value, "_meta", None), "label", "")
    if label == "accounts.Company":
        return Tenant(company_id=value.pk)
    if label == "accounts.Supplier":
        return Tenant(supplier_id=value.pk)
    return Tenant(company_id=getattr(value, "company_id", None), supplier_id=getattr(value, "supplier_id", None))


def _actor_user(actor: Actor) -> Any:
    user = actor.user
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user


def role_of(user: Any, tenant: Tenant) -> str:
    """``ActorRole`` of ``user`` (None: anonymous) in ``tenant``: superadmin, the company or
    supplier membership's role, else ``user``."""
    if user is None:
        return ActorRole.ANONYMOUS
    if user.is_superuser:
        return ActorRole.SUPERADMIN
    if tenant.company_id is not None:
        role = (apps.get_model("accounts", "Membership").objects.filter(user_id=user.pk, company_id=tenant.company_id)
                .values_list("role", flat=True).first())
        if role in (ActorRole.OWNER, ActorRole.MANAGER, ActorRole.VIEWER):
            return role
    if tenant.supplier_id is not None:
        role = (apps.get_model("accounts", "SupplierMembership").objects.filter(user_id=user.pk, supplier_id=tenant.supplier_id)
                .values_list("role", flat=True).first())
        if role is not None:
            return ActorRole.SUPPLIER_OWNER if role == "owner" else ActorRole.SUPPLIER_MEMBER
    return ActorRole.USER


def _object_fields(obj: Any, object_type: str | None, object_id: Any, object_label: str | None) -> tuple[str, str, str]:
    if obj is not None:
        object_type = object_type or obj._meta.label
        object_id = object_id if object_id is not None else obj.pk
        object_label = object_label if object_label is not None else str(obj)
    label = (object_label or "").replace("\x00", "")
    if len(label) > _OBJECT_LABEL_MAX:
        label = label[:_OBJECT_LABEL_MAX - 1] + "…"
    return object_type or "", "" if object_id is None else str(object_id)[:64], label


def record(action: str, *, actor: Any = None, obj: models.Model | None = None, before: dict[str, Any] | None = None,
           after: dict[str, Any] | None = None, tenant: Any = None, object_type: str | None = None, object_id: Any = None,
           object_label: str | None = None, actor_email: str | None = None) -> AuditEvent:
    """Append one event to the trail and return it.

    ``action`` is one of ``actions.ACTIONS`` (else ``UnknownAction``). The actor is ``actor`` (a
    user; an ``Actor``) or, by default, the current context's (``context.current_actor``: the
    request's user and IP, or the system); ``actor_email`` overrides the e-mail shown (a failed
    sign-in's attempted address). ``obj`` names the object (``object_*`` override its type,
    id and label); ``tenant`` (a Company, Supplier, ``Tenant`` or an object carrying
    ``company_id`` / ``supplier_id``) defaults to ``obj``'s. ``before`` / ``after`` are made
    JSON-safe with secrets dropped (``redaction``). Inserted pending inside the caller's
    transaction (if it rolls back, so does the event) and sealed into the chain once it commits.
    """
    if action not in ACTIONS:
        raise UnknownAction(f"{action!r} is not an audit action; add it to apps/audit/actions.py")
    context = current_actor()
    if isinstance(actor, Actor):
        context, actor = actor, None
    user = actor if actor is not None else _actor_user(context)
    where = tenant_of(tenant if tenant is not None else obj)
    object_type, object_id, object_label = _object_fields(obj, object_type, object_id, object_label)
    if user is not None:
        role = role_of(user, where)
    else:
        role = ActorRole.SYSTEM if context.is_system and actor_email is None else ActorRole.ANONYMOUS
    event = AuditEvent(
        occurred_at=timezone.now(), actor_id=getattr(user, "pk", None), actor_email=(actor_email or getattr(user, "email", "") or "")[:254],
        actor_role=role, company_id=where.company_id, supplier_id=where.supplier_id, action=action,
        object_type=object_type, object_id=object_id, object_label=object_label,
        before=json_safe(before) if before is not None else None, after=json_safe(after) if after is not None else None,
        client_ip=context.client_ip, request_id=context.request_id,
    )
    event.save(force_insert=True)
    _seal_on_commit()
    return event


def _seal_on_commit() -> None:
    """Ask for one seal after the current transaction commits (now, outside one): a transaction
    recording many events seals them in one go."""
    if any(entry[1] is _seal_after_commit for entry in getattr(connection, "run_on_commit", ())):
        return
    transaction.on_commit(_seal_after_commit, robust=True)


def _seal_after_commit() -> None:
    # The change and its event are committed whatever happens here; a failed seal is retried by
    # the beat task, so it must not turn the caller's success into an error.
    try:
        seal_pending()
    except DatabaseError:
        logger.exception("audit: sealing after commit failed; the beat task will seal the pending events")


def seal_pending(*, batch: int = 500) -> int:
    """Chain every committed pending event, oldest (lowest id) first; return how many were sealed.
    Safe to run concurrently and repeatedly (each batch under the chain lock)."""
    sealed = 0
    while True:
        with transaction.atomic():
            with connection.cursor() as cursor:
                # Race: two sealers reading the same head would both chain to it (a fork); the lock
                # makes them take turns, and the second reads the head the first committed.
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])
            head = AuditEvent.objects.filter(seq__isnull=False).order_by("-seq").values_list("seq", "hash").first()
            seq, prev_hash = (int(head[0] or 0), str(head[1])) if head else (0, GENESIS)
            rows = list(AuditEvent.objects.filter(seq__isnull=True).order_by("id")[:batch])
            for row in rows:
                seq += 1
                row.seq, row.prev_hash = seq, prev_hash
                row.hash = prev_hash = row_hash(row)
            if rows:
                AuditEvent.objects.bulk_update(rows, ["seq", "prev_hash", "hash"])
        sealed += len(rows)
        if len(rows) < batch:
            return sealed


# --- reading -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EventFilter:
    """A listing's or an export's filters: the period ``[since, until)`` (aware datetimes), one
    ``action`` or an action prefix ending in ``.`` ("token."), the actor's e-mail (substring,
    case-insensitive), the tenant (``company_id`` / ``supplier_id``)."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    action: str = ""
    actor: str = ""
    company_id: int | None = None
    supplier_id: int | None = None

    def __post_init__(self) -> None:
        for moment in (self.since, self.until):
            if moment is not None and timezone.is_naive(moment):
                raise InvalidExportFilter("the period's bounds must be timezone-aware datetimes")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidExportFilter("the period's start must come before its end")


def company_id_for_slug(slug: str) -> int:
    """The id of the company with ``slug``; ``InvalidExportFilter`` when there is none."""
    found = apps.get_model("accounts", "Company").objects.filter(slug=slug).values_list("pk", flat=True).first()
    if found is None:
        raise InvalidExportFilter(f"no company with slug {slug!r}")
    return found


def events(filters: EventFilter) -> QuerySet[AuditEvent]:
    """The sealed events matching ``filters``, newest first (by ``seq``)."""
    query = Q(seq__isnull=False)
    if filters.since is not None:
        query &= Q(occurred_at__gte=filters.since)
    if filters.until is not None:
        query &= Q(occurred_at__lt=filters.until)
    if filters.action.endswith("."):
        query &= Q(action__startswith=filters.action)
    elif filters.action:
        query &= Q(action=filters.action)
    if filters.actor:
        query &= Q(actor_email__icontains=filters.actor)
    if filters.company_id is not None:
        query &= Q(company_id=filters.company_id)
    if filters.supplier_id is not None:
        query &= Q(supplier_id=filters.supplier_id)
    return AuditEvent.objects.filter(query).order_by("-seq")


@dataclass(frozen=True)
class Page:
    """One page of a listing: ``rows`` (newest first) and the ``seq`` to pass as ``before`` for the
    next (older) page, None on the last page."""

    rows: list[AuditEvent]
    next_before: int | None


def page(filters: EventFilter, *, before: int | None = None, size: int = 50) -> Page:
    """Keyset pagination over ``events(filters)``: up to ``size`` rows with ``seq < before``
    (pending events are sealed first, so none is left out)."""
    if before is None:
        seal_pending()
    queryset = events(filters)
    if before is not None:
        queryset = queryset.filter(seq__lt=before)
    rows = list(queryset[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return Page(rows, rows[-1].seq if more and rows else None)


def batch_after(filters: EventFilter, *, after: int, size: int = 1000) -> list[AuditEvent]:
    """Up to ``size`` events matching ``filters`` with ``seq > after``, oldest first: one step of a
    streamed export (no cursor stays open between steps)."""
    return list(events(filters).filter(seq__gt=after).order_by("seq")[:size])


def iter_events(filters: EventFilter, *, chunk_size: int = 2000) -> Iterator[AuditEvent]:
    """Every event matching ``filters``, oldest first (chain order), read in chunks (for exports);
    pending events are sealed first."""
    seal_pending()
    yield from events(filters).order_by("seq").iterator(chunk_size=chunk_size)


# --- verifying -----------------------------------------------------------------------------------

def verify_chain(*, chunk_size: int = 2000) -> Verification:
    """Seal what is pending, then walk the whole chain in ``seq`` order and return the first broken
    link, if any (see ``chain.walk``). Reads a snapshot: rows sealed meanwhile are not part of it."""
    seal_pending()
    def find_seq_by_hash(value: str) -> int | None:
        return AuditEvent.objects.filter(hash=value).values_list("seq", flat=True).first()

    def run() -> Verification:
        return walk(AuditEvent.objects.filter(seq__isnull=False).order_by("seq").iterator(chunk_size=chunk_size),
                    find_seq_by_hash=find_seq_by_hash)

    if connection.in_atomic_block:  # the caller's transaction is the snapshot
        return run()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return run()


def check_anchor(seq: int, expected_hash: str) -> str | None:
    """None when row ``seq`` still has ``expected_hash`` (an anchor kept outside the database, e.g.
    by a SIEM); else why not — it catches a truncated tail, which the chain alone cannot."""
    found = AuditEvent.objects.filter(seq=seq).values_list("hash", flat=True).first()
    if found is None:
        return f"anchored row seq={seq} is missing: the chain was cut"
    if found != expected_hash:
        return f"anchored row seq={seq} has hash {found}, not {expected_hash}"
    return None
