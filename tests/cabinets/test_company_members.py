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


# --- invitations (the accounts app's invitation service) ------------------------------------------

def test_it_invites_by_email_and_lists_the_pending_invitation(personas, signed_in, mailoutbox, django_capture_on_commit_callbacks):
    from apps.accounts.models import Invitation

    manager = signed_in(personas.manager_a)
    with django_capture_on_commit_callbacks(execute=True):  # the email leaves on commit
        response = manager.post(reverse("cabinets:company:invitation_create"), {"email": "New.Person@Example.com", "role": "viewer"})
    assert response.status_code == 302
    invitation = Invitation.objects.get(company=personas.company_a)
    assert (invitation.email, invitation.role, invitation.invited_by) == ("new.person@example.com", "viewer", personas.manager_a)
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["new.person@example.com"] and "http://testserver/" in mailoutbox[0].body
    page = manager.get(reverse("cabinets:company:members"))
    assert "new.person@example.com" in page.content.decode()


def test_it_refuses_a_bad_invitation_with_a_clear_error(personas, signed_in, team):
    from apps.accounts.models import Invitation

    team("member@example.com", CompanyRole.VIEWER)
    manager = signed_in(personas.manager_a)
    for data in ({"email": "not-an-email", "role": "viewer"}, {"email": "member@example.com", "role": "viewer"},
                 {"email": "boss@example.com", "role": "owner"}):  # a manager cannot invite an owner
        response = manager.post(reverse("cabinets:company:invitation_create"), data)
        assert response.status_code == 400 and response.context["invite_form"].errors, data
    assert not Invitation.objects.exists()


def test_it_revokes_an_invitation_and_another_companys_is_404(personas, signed_in):
    from apps.accounts import services
    from apps.accounts.models import InvitationStatus

    mine = services.invite(email="x@example.com", role="viewer", invited_by=personas.manager_a, company=personas.company_a).invitation
    theirs = services.invite(email="y@example.com", role="viewer", invited_by=personas.manager_b, company=personas.company_b).invitation
    manager = signed_in(personas.manager_a)
    assert manager.post(reverse("cabinets:company:invitation_revoke", kwargs={"invitation_id": theirs.pk})).status_code == 404
    manager.post(reverse("cabinets:company:invitation_revoke", kwargs={"invitation_id": mine.pk}))
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert (mine.status, theirs.status) == (InvitationStatus.REVOKED, InvitationStatus.PENDING)


def test_a_viewer_cannot_invite(personas, signed_in, team):
    viewer = team("viewer@example.com", CompanyRole.VIEWER)
    client = signed_in(viewer.user)
    assert client.post(reverse("cabinets:company:invitation_create"), {"email": "z@example.com", "role": "viewer"}).status_code == 403
    assert client.get(reverse("cabinets:company:members")).context["invite_form"] is None
