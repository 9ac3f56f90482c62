"""The adapter registry: every provider kind resolves to its adapter, or to none (501 upstream)."""

from __future__ import annotations

import pytest

from apps.providers.adapters import ADAPTERS, adapter_for
from apps.providers.adapters.base import Adapter
from apps.providers.adapters.mock import MockAdapter
from apps.providers.adapters.openai import OpenAIAdapter
from apps.providers.models import ProviderKind

OPENAI_WIRE = [ProviderKind.OPENAI, ProviderKind.OPENAI_COMPATIBLE, ProviderKind.AZURE_OPENAI, ProviderKind.DEEPSEEK,
               ProviderKind.MISTRAL, ProviderKind.QWEN]


@pytest.mark.parametrize("kind", OPENAI_WIRE)
def test_it_serves_openai_wire_kinds_with_the_openai_adapter_or_its_variant(kind):
    adapter = adapter_for(kind)
    assert isinstance(adapter, OpenAIAdapter) and adapter.needs_key
    assert adapter.kind == (ProviderKind.OPENAI if kind == ProviderKind.OPENAI_COMPATIBLE else kind)


def test_it_serves_the_mock_in_process_without_a_key():
    adapter = adapter_for(ProviderKind.MOCK)
    assert isinstance(adapter, MockAdapter) and not adapter.needs_key


def test_it_has_no_adapter_for_an_unknown_kind():
    assert adapter_for("nope") is None


@pytest.mark.parametrize("kind", ProviderKind.values)
def test_every_provider_kind_has_an_adapter(kind):
    assert adapter_for(kind) is not None


def test_it_shares_one_instance_per_kind_and_every_entry_is_an_adapter():
    assert adapter_for(ProviderKind.OPENAI) is adapter_for(ProviderKind.OPENAI)
    for kind in ADAPTERS:
        assert isinstance(adapter_for(kind), Adapter), kind
    assert set(ADAPTERS) <= set(ProviderKind.values)
