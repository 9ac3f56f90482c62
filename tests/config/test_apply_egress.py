"""``jetstream_apply``: a provider's ``egress:`` is a list of egress proxies in the order calls try
them; a single slug still works."""

from __future__ import annotations

import pytest

CONFIG = """
egress:
  - {slug: fi-1, country: fi, url: "socks5://user:proxy-pass@10.0.0.5:1080", internal: true}
  - {slug: pl-1, country: pl, url: "http://user:proxy-pass@10.0.0.6:3128", internal: true, probe_url: "https://api.openai.com/v1"}
  - {slug: ee-1, country: ee, url: "https://10.0.0.7:3129", internal: true}
providers:
  - {slug: demo, kind: mock, egress: %s}
"""


def _slugs(provider_slug: str) -> list[str]:
    from apps.providers.models import ProviderEgress

    return list(ProviderEgress.objects.filter(provider__slug=provider_slug).order_by("priority")
                .values_list("egress__slug", flat=True))


def test_the_configuration_takes_a_list_of_egresses_in_order_and_a_single_slug(db, apply_text):
    from apps.providers.models import EgressProxy

    out, _err = apply_text(CONFIG % "[pl-1, fi-1]")
    assert _slugs("demo") == ["pl-1", "fi-1"]
    assert EgressProxy.objects.get(slug="pl-1").probe_url == "https://api.openai.com/v1"
    assert "proxy-pass" not in out
    assert "unchanged: egress proxies 3, providers 1" in apply_text(CONFIG % "[pl-1, fi-1]")[0]

    out, _err = apply_text(CONFIG % "[fi-1, pl-1, ee-1]")
    assert _slugs("demo") == ["fi-1", "pl-1", "ee-1"] and "egress" in out
    apply_text(CONFIG % "ee-1")
    assert _slugs("demo") == ["ee-1"]
    apply_text(CONFIG % "[]")
    assert _slugs("demo") == []


def test_the_configuration_reports_an_unknown_egress_by_its_place(db, apply_text):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError) as error:
        apply_text(CONFIG % "[fi-1, nowhere]")
    assert 'providers[0].egress[1]: unknown egress proxy "nowhere"' in str(error.value)
