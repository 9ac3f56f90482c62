"""Providers: the base URL is checked against SSRF (the model's clean()) when saved from the admin."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.providers.models import Provider


def _provider_form(**overrides) -> dict:
    data = {"slug": "openai", "name": "OpenAI", "kind": "openai", "base_url": "https://8.8.8.8/v1",
            "options": "{}", "is_active": "on", "_save": "Save",
            "egress_links-TOTAL_FORMS": "0", "egress_links-INITIAL_FORMS": "0"}
    data.update(overrides)
    return {k: v for k, v in data.items() if v != ""}


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://10.1.2.3/v1", "http://169.254.169.254/latest",
                                 "http://[::1]:11434/v1", "https://user:pw@8.8.8.8/v1"])
def test_it_refuses_unsafe_base_urls(superadmin_client, catalog, url):
    response = superadmin_client.post(reverse("admin:providers_provider_add"), _provider_form(base_url=url))
    assert response.status_code == 200
    assert "base_url" in response.context["adminform"].form.errors, url
    assert not Provider.objects.filter(slug="openai").exists()


def test_it_accepts_a_public_address_and_an_internal_one_marked_internal(superadmin_client, catalog):
    assert superadmin_client.post(reverse("admin:providers_provider_add"), _provider_form()).status_code == 302
    response = superadmin_client.post(reverse("admin:providers_provider_add"), _provider_form(
        slug="vllm", kind="openai_compatible", base_url="http://127.0.0.1:8000/v1", internal="on"))
    assert response.status_code == 302
    assert Provider.objects.get(slug="vllm").internal is True


def test_it_needs_a_base_url_except_for_the_mock_kind(superadmin_client, catalog):
    missing = superadmin_client.post(reverse("admin:providers_provider_add"), _provider_form(base_url=""))
    assert "base_url" in missing.context["adminform"].form.errors
    mock = superadmin_client.post(reverse("admin:providers_provider_add"), _provider_form(slug="mock-2", kind="mock", base_url=""))
    assert mock.status_code == 302
