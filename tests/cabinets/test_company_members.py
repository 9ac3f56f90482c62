"""The company cabinet's members: roles, removal, the owner rules — own company only."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.accounts.models import CompanyRole, Membership
from apps.proxy.models import ApiToken, TokenStatus
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def team(personas, django_user_model):
    def member(email, role, company=personas.company_a):
        user = django_user_model.objects.create_user(email, PASSWORD)
        return Membership.objects.create(user=user, company=company, role=role)

    return member


def test_it_lists_the_members_with_roles_and_tokens_owned(personas, signed_in, team, catalog):
    team("viewer@example.com", CompanyRole.VIEWER)
    team("b-person@example.com", CompanyRole.VIEWER, company=personas.company_b)
    page = signed_in(personas.manager_a).get(reverse("cabinets:company:members"))
    body = page.content.decode()
    assert page.status_code == 200 and "viewer@example.com" in body and "manager-a@example.com" in body
    assert "b-person@example.com" not in body and "manager-b@example.com" not in body
    owned = {member.user.email: n for member, _form, n in page.context["rows"]}
    assert owned["manager-a@example.com"] == 1  # the catalog's token


def test_it_changes_a_role(personas, signed_in, team):
    viewer = team("viewer@example.com", CompanyRole.VIEWER)
    response = signed_in(personas.manager_a).post(reverse("cabinets:company:member_role", kwargs={"member_id": viewer.pk}),
                                                  {f"m{viewer.pk}-role": "manager"})
    assert response.status_code == 302
    viewer.refresh_from_db()
    assert viewer.role == CompanyRole.MANAGER


def test_only_an_owner_touches_an_owners_place_and_one_owner_stays(personas, signed_in, team):
    owner = team("owner@example.com", CompanyRole.OWNER)
    manager = signed_in(personas.manager_a)
    manager.post(reverse("cabinets:company:member_role", kwargs={"member_id": owner.pk}), {f"m{owner.pk}-role": "viewer"})
    me = Membership.objects.get(user=personas.manager_a)
    manager.post(reverse("cabinets:company:member_role", kwargs={"member_id": me.pk}), {f"m{me.pk}-role": "owner"})
    manager.post(reverse("cabinets:company:member_remove", kwargs={"member_id": owner.pk}))
    owner.refresh_from_db()
    me.refresh_from_db()
    assert (owner.role, me.role) == (CompanyRole.OWNER, CompanyRole.MANAGER)
    # The last owner can neither step down nor leave.
    as_owner = signed_in(owner.user)
    as_owner.post(reverse("cabinets:company:member_role", kwargs={"member_id": owner.pk}), {f"m{owner.pk}-role": "manager"})
    as_owner.post(reverse("cabinets:company:member_remove", kwargs={"member_id": owner.pk}))
    owner.refresh_from_db()
    assert owner.role == CompanyRole.OWNER
    # An owner makes another owner; then the first may step down.
    as_owner.post(reverse("cabinets:company:member_role", kwargs={"member_id": me.pk}), {f"m{me.pk}-role": "owner"})
    as_owner.post(reverse("cabinets:company:member_role", kwargs={"member_id": owner.pk}), {f"m{owner.pk}-role": "viewer"})
    owner.refresh_from_db()
    me.refresh_from_db()
    assert (owner.role, me.role) == (CompanyRole.VIEWER, CompanyRole.OWNER)


def test_it_removes_a_member_and_revokes_their_tokens_when_asked(personas, signed_in, team):
    leaver = team("leaver@example.com", CompanyRole.MANAGER)
    stays = ApiToken(company=personas.company_a, name="kept", owner=leaver.user)
    stays.set_secret()
    stays.save()
    manager = signed_in(personas.manager_a)
    response = manager.post(reverse("cabinets:company:member_remove", kwargs={"member_id": leaver.pk}), {"revoke_tokens": "on"})
    assert response.status_code == 302 and not Membership.objects.filter(pk=leaver.pk).exists()
    stays.refresh_from_db()
    assert (stays.status, stays.owner) == (TokenStatus.REVOKED, None)


def test_a_removed_members_tokens_keep_working_without_an_owner(personas, signed_in, team):
    leaver = team("leaver@example.com", CompanyRole.VIEWER)
    token = ApiToken(company=personas.company_a, name="kept", owner=leaver.user)
    token.set_secret()
    token.save()
    signed_in(personas.manager_a).post(reverse("cabinets:company:member_remove", kwargs={"member_id": leaver.pk}))
    token.refresh_from_db()
    assert (token.status, token.owner) == (TokenStatus.ACTIVE, None)


def test_a_viewer_changes_nothing(personas, signed_in, team):
    viewer = team("viewer@example.com", CompanyRole.VIEWER)
    me = Membership.objects.get(user=personas.manager_a)
    client = signed_in(viewer.user)
    assert client.get(reverse("cabinets:company:members")).status_code == 200
    assert client.post(reverse("cabinets:company:member_role", kwargs={"member_id": me.pk}), {f"m{me.pk}-role": "viewer"}).status_code == 403
    assert client.post(reverse("cabinets:company:member_remove", kwargs={"member_id": me.pk})).status_code == 403


def test_another_companys_member_is_404(personas, signed_in):
    other = Membership.objects.get(user=personas.manager_b)
    manager = signed_in(personas.manager_a)
    assert manager.post(reverse("cabinets:company:member_role", kwargs={"member_id": other.pk}), {f"m{other.pk}-role": "viewer"}).status_code == 404
    assert manager.post(reverse("cabinets:company:member_remove", kwargs={"member_id": other.pk})).status_code == 404
    assert Membership.objects.filter(pk=other.pk, role=CompanyRole.MANAGER).exists()
