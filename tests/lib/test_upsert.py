"""lib/upsert.py: stage, save_staged, find_for_update and Outcome, on a real model."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from lib.upsert import CREATED, UNCHANGED, UPDATED, Outcome, find_for_update, model_default, save_staged, stage


@pytest.fixture
def supplier_model():
    from apps.accounts.models import Supplier

    return Supplier


def test_it_creates_a_new_instance_and_reports_it(db, supplier_model):
    supplier = supplier_model(slug="north")
    outcome = save_staged(supplier, stage(supplier, {"name": "North"}), dry_run=False)

    assert outcome == Outcome(supplier, CREATED)
    assert outcome.changed
    assert supplier_model.objects.get(slug="north").name == "North"


def test_it_writes_nothing_on_a_dry_run_but_reports_the_same(db, supplier_model):
    supplier = supplier_model(slug="north")
    outcome = save_staged(supplier, stage(supplier, {"name": "North"}), dry_run=True)

    assert outcome.action == CREATED
    assert not supplier_model.objects.exists()


def test_it_names_the_changed_fields_and_leaves_equal_ones_alone(db, supplier_model):
    supplier_model.objects.create(slug="north", name="North")
    supplier = find_for_update(supplier_model.objects, dry_run=False, slug="north")

    assert stage(supplier, {"name": "North"}) == []
    assert save_staged(supplier, [], dry_run=False) == Outcome(supplier, UNCHANGED)
    changed = stage(supplier, {"name": "North Keys"})
    outcome = save_staged(supplier, changed, dry_run=False)

    assert outcome == Outcome(supplier, UPDATED, ("name",))
    assert supplier_model.objects.get(slug="north").name == "North Keys"


def test_it_validates_before_saving(db, supplier_model):
    supplier = supplier_model(slug="not a slug")
    with pytest.raises(ValidationError):
        save_staged(supplier, stage(supplier, {"name": "North"}), dry_run=True)


def test_it_finds_nothing_for_an_unknown_key(db, supplier_model):
    assert find_for_update(supplier_model.objects, dry_run=True, slug="nobody") is None


def test_it_reads_a_models_default(supplier_model):
    assert model_default(supplier_model, "is_active") is True
