"""The policy redesign keeps each old policy's meaning."""

from __future__ import annotations

import pytest


@pytest.mark.django_db(transaction=True)
def test_the_migration_carries_the_old_mode_and_flags_into_actions():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("moderation", "0001_initial")], [("moderation", "0002_policy_per_category_and_token")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        from apps.accounts.models import Company  # the accounts tables are at their latest state

        Policy = executor.loader.project_state(before).apps.get_model("moderation", "Policy")
        a, b, c = (Company.objects.create(slug=slug, name=slug.upper()).pk for slug in "abc")
        masking = Policy.objects.create(company_id=a, mode="mask", detect_email=True, detect_phone=False,
                                        detect_person_name=True, blocked_words="Сириус\nОрион")
        Policy.objects.create(company_id=b, mode="off")
        Policy.objects.create(company_id=c, mode="monitor")

        executor = MigrationExecutor(connection)
        executor.migrate(after)
        new = executor.loader.project_state(after).apps.get_model("moderation", "Policy")
        row = new.objects.get(pk=masking.pk)
        assert row.mode == "enforce"
        prompt = row.actions["prompt"]
        assert (prompt["email"], prompt["person"], prompt["phone"], prompt["custom_dictionary"]) == ("mask", "mask", "allow", "block")
        assert row.dictionary == "Сириус\nОрион"
        assert set(row.actions["response"].values()) == {"allow"}
        modes = dict(new.objects.values_list("company__slug", "mode"))
        assert modes == {"a": "enforce", "b": "off", "c": "enforce"}
        assert new.objects.get(company__slug="c").actions["prompt"]["email"] == "log"
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
