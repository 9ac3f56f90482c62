"""The cabinets' access rule: sign-in, then TOTP, then a membership (404 otherwise), then a role."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db

DASHBOARDS = ["cabinets:company:dashboard", "cabinets:supplier:dashboard", "cabinets:operator:dashboard"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_it_sends_a_visitor_to_sign_in(name):
    response = Client().get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login") + "?next=")


@pytest.mark.parametrize("name", DASHBOARDS)
def test_it_asks_for_the_totp_step_before_any_cabinet(personas, password_only, name):
    client = password_only(personas.superadmin)
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("cabinets:mfa") + "?next=")


def test_it_opens_each_cabinet_to_its_persona_only(personas, signed_in):
    owners = {"cabinets:company:dashboard": personas.manager_a, "cabinets:supplier:dashboard": personas.supplier_user,
              "cabinets:operator:dashboard": personas.superadmin}
    for name, owner in owners.items():
        page = signed_in(owner).get(reverse(name))
        assert page.status_code == 200, name
        for other in (personas.outsider, personas.manager_b if owner != personas.manager_a else personas.supplier_user):
            if name == "cabinets:company:dashboard" and other == personas.manager_b:
                continue  # manager B has a company cabinet of their own
            assert signed_in(other).get(reverse(name)).status_code == 404, (name, other)


def test_it_shows_a_managers_own_company_not_another(personas, signed_in):
    page = signed_in(personas.manager_b).get(reverse("cabinets:company:dashboard"))
    assert personas.company_b.name.encode() in page.content
    assert personas.company_a.name.encode() not in page.content


def test_it_sends_each_persona_home_to_their_cabinet(personas, signed_in):
    assert signed_in(personas.superadmin).get("/")["Location"] == reverse("cabinets:operator:dashboard")
    assert signed_in(personas.manager_a).get("/")["Location"] == reverse("cabinets:company:dashboard")
    assert signed_in(personas.supplier_user).get("/")["Location"] == reverse("cabinets:supplier:dashboard")
    assert signed_in(personas.outsider).get("/").status_code == 200
