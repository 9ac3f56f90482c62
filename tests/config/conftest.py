"""Helpers for the configuration-command tests: run a command, snapshot the database."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import translation

EXAMPLE = Path(__file__).with_name("example.yaml")


@pytest.fixture(autouse=True)
def english():
    # Assertions read the messages; Russian is the default LANGUAGE_CODE.
    with translation.override("en"):
        yield


@pytest.fixture
def example_text() -> str:
    return EXAMPLE.read_text()


def run_command(name: str, *args: str) -> tuple[str, str]:
    """Run a management command in-process; return (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    call_command(name, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def apply_text(tmp_path):
    """Write YAML text to a file and run jetstream_apply on it; return (stdout, stderr)."""
    counter = iter(range(1000))

    def apply(text: str, *args: str) -> tuple[str, str]:
        path = tmp_path / f"config-{next(counter)}.yaml"
        path.write_text(text)
        return run_command("jetstream_apply", str(path), *args)

    return apply


def database_state() -> dict[str, list[dict]]:
    """Every row of every table configuration touches, in full: any write shows up here."""
    from apps.accounts.models import Company, Department, Supplier
    from apps.billing.models import Account, FxRate, Transfer
    from apps.moderation.models import Policy
    from apps.providers.models import EgressProxy, Model, Price, Provider, SupplierKey
    from apps.proxy.models import ApiToken

    tables = (Supplier, EgressProxy, Provider, SupplierKey, Model, Price, FxRate, Company, Department, Policy,
              ApiToken, Account, Transfer)
    return {table.__name__: list(table.objects.order_by("pk").values()) for table in tables}
