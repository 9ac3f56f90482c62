"""Upsert mechanics every app's services share: find (locked), stage, save.

An upsert service reads the row with ``find_for_update`` (or builds a new instance), assigns the
wanted values with ``stage`` (which names the fields that changed) and ends with
``save_staged``, which validates and saves — or, with ``dry_run``, only validates — and returns
an ``Outcome`` saying what was (or would be) done. ``jetstream_apply --dry-run`` builds its plan
with the very code that later applies it this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import models
from django.db.models.fields.mixins import FieldCacheMixin

CREATED = "created"
UPDATED = "updated"
UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Outcome:
    """What an upsert did (or, with ``dry_run``, would do) to one object.

    ``obj`` is the model instance (unsaved on a dry run that would create it), ``action`` one of
    CREATED, UPDATED, UNCHANGED, and ``fields`` the names of the changed fields (for UPDATED).
    """

    obj: Any
    action: str  # CREATED, UPDATED or UNCHANGED
    fields: tuple[str, ...] = ()  # what changed, for UPDATED

    @property
    def changed(self) -> bool:
        """Whether the object was (or, dry, would be) created or updated."""
        return self.action != UNCHANGED


def _field(model: type[models.Model] | models.Model, name: str) -> models.Field[Any, Any]:
    """The model's own field ``name``; the reverse side of a relation has no value or default here."""
    field = model._meta.get_field(name)
    if not isinstance(field, models.Field):
        raise TypeError(f"{model._meta.label}.{name} is the reverse side of a relation, not a field")
    return field


def model_default(model: type[models.Model], field_name: str) -> Any:
    """The model field's default, so services do not restate it."""
    return _field(model, field_name).get_default()


def find_for_update(
    queryset: models.Manager[Any] | models.QuerySet[Any], *, dry_run: bool, **lookup: Any
) -> Any:
    """The matching row or None; locked (SELECT … FOR UPDATE) unless this is a dry run.

    ``queryset`` may be a model's manager (``Model.objects``) or any queryset of it.
    """
    if not dry_run:
        queryset = queryset.select_for_update()
    return queryset.filter(**lookup).first()


def _differs(instance: models.Model, name: str, value: Any) -> bool:
    field = _field(instance, name)
    if field.many_to_one or field.one_to_one:
        if value is not None and value.pk is None:
            return True  # points at an object this run has yet to create
        return getattr(instance, field.attname) != (value.pk if value is not None else None)
    return getattr(instance, name) != value


def stage(instance: models.Model, values: dict[str, Any]) -> list[str]:
    """Assign ``values`` (field name → value) to ``instance``; return the names of the fields that changed."""
    changed = [name for name, value in values.items() if _differs(instance, name, value)]
    for name, value in values.items():
        if instance._state.adding or name in changed:
            setattr(instance, name, value)
    return changed


def _unsaved_relations(instance: models.Model) -> list[str]:
    names = []
    for field in instance._meta.concrete_fields:
        # Concrete relations (FK, one-to-one) cache their target; FieldCacheMixin is where that lives.
        if field.is_relation and isinstance(field, FieldCacheMixin) and field.is_cached(instance):
            target = field.get_cached_value(instance)
            if target is not None and target.pk is None:
                names.append(field.name)
    return names


def save_staged(instance: models.Model, changed: list[str], *, dry_run: bool) -> Outcome:
    """Validate and save a new or changed instance (validate only on a dry run).

    ``changed`` is what ``stage`` returned. Callers hold the row lock (``find_for_update``), so
    a full save cannot overwrite a concurrent writer's change. On a dry run, relations to
    objects the run would create cannot be checked yet and are left out of validation.
    """
    if instance._state.adding:
        action = CREATED
    elif changed:
        action = UPDATED
    else:
        return Outcome(instance, UNCHANGED)
    instance.full_clean(exclude=_unsaved_relations(instance))
    if not dry_run:
        instance.save()
    return Outcome(instance, action, tuple(changed) if action == UPDATED else ())
