"""Only staff reach the admin; only the superadmin (or explicit permissions) see its pages."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.urls import reverse

from tests.test_admin_pages import OUR_APPS


def _admin_urls() -> list[str]:
    urls = [reverse("admin:index")]
    for model in admin.site._registry:
        if model._meta.app_label in OUR_APPS:
            urls.append(reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"))
    urls += [reverse("admin:billing_usagerecord_export"), reverse("admin:billing_transfer_export"),
             reverse("admin:providers_price_import"), reverse("admin:providers_model_import")]
    return urls


@pytest.mark.parametrize("persona", ["manager_a", "manager_b", "supplier_user", "outsider", None])
def test_it_sends_non_staff_to_the_admin_login(client, personas, catalog, persona):
    if persona is not None:
        client.force_login(getattr(personas, persona))
    login = reverse("admin:login")
    for url in _admin_urls() + [reverse("admin:proxy_apitoken_change", args=[catalog.token.pk])]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(login + "?next="), url


def test_it_refuses_non_staff_posts_too(client, personas, catalog):
    client.force_login(personas.manager_a)
    response = client.post(reverse("admin:proxy_apitoken_changelist"),
                           {"action": "revoke_tokens", "_selected_action": [catalog.token.pk], "reason": "x"})
    assert response.status_code == 302
    catalog.token.refresh_from_db()
    assert catalog.token.status == "active"


def test_it_forbids_staff_without_permissions(client, personas, catalog, django_user_model):
    staff = django_user_model.objects.create_user("staff@example.com", "x", is_staff=True)
    client.force_login(staff)
    assert client.get(reverse("admin:index")).status_code == 200
    for url in _admin_urls()[1:]:
        assert client.get(url).status_code == 403, url
