"""The company cabinet's members: who works in the company and in which role; owners and
managers change roles, remove people and invite new ones by email (``apps.accounts.services``;
only an owner touches an owner's place, and a company keeps at least one owner)."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST

from apps.accounts import services as accounts
from apps.accounts.exceptions import InvitationError
from apps.accounts.models import Invitation, Membership
from apps.cabinets.access import COMPANY_MANAGERS, company_object, company_view
from apps.cabinets.company.forms import InvitationForm, MemberRoleForm, RemoveMemberForm
from apps.cabinets.company.helpers import in_company_time_zone
from apps.cabinets.rendering import render_page
from apps.proxy import services as tokens


def _member(request: HttpRequest, member_id: int) -> Membership:
    return company_object(request, Membership.objects.select_related("user", "company"), pk=member_id)


def _members_page(request: HttpRequest, form: InvitationForm | None = None, *, status: int = 200) -> HttpResponse:
    company = request.company  # type: ignore[attr-defined]
    can_manage = request.membership.role in COMPANY_MANAGERS  # type: ignore[attr-defined]
    members = list(Membership.objects.filter(company=company).select_related("user").order_by("user__email"))
    owned = tokens.tokens_owned(company=company)
    context = {"rows": [(m, MemberRoleForm(initial={"role": m.role}, prefix=f"m{m.pk}"), owned.get(m.user_id, 0)) for m in members],
               "can_manage": can_manage, "me": request.membership,  # type: ignore[attr-defined]
               "invitations": accounts.pending_invitations(company=company).select_related("invited_by") if can_manage else [],
               "invite_form": form or (InvitationForm() if can_manage else None)}
    return render_page(request, "cabinets/company/members.html", context, status=status)


@company_view()
@in_company_time_zone
def member_list(request: HttpRequest) -> HttpResponse:
    """The company's members with their roles and the tokens each owns; for owners and managers, the
    pending invitations and the form to invite someone."""
    return _members_page(request)


@company_view(*COMPANY_MANAGERS)
@require_POST
def member_role(request: HttpRequest, member_id: int) -> HttpResponse:
    """Change a member's role."""
    membership = _member(request, member_id)
    form = MemberRoleForm(request.POST, prefix=f"m{membership.pk}")
    if not form.is_valid():
        messages.error(request, _("Choose one of the roles."))
        return redirect("cabinets:company:members")
    try:
        accounts.change_member_role(membership=membership, role=form.cleaned_data["role"], by=request.membership)  # type: ignore[attr-defined]
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, _("%(email)s is now: %(role)s.") % {
            "email": membership.user.email, "role": Membership(role=form.cleaned_data["role"]).get_role_display()})
    return redirect("cabinets:company:members")


@company_view(*COMPANY_MANAGERS)
@require_POST
def member_remove(request: HttpRequest, member_id: int) -> HttpResponse:
    """Remove a member (optionally revoking the tokens they own)."""
    membership = _member(request, member_id)
    form = RemoveMemberForm(request.POST)
    revoke = form.is_valid() and form.cleaned_data["revoke_tokens"]
    try:
        revoked = tokens.remove_company_member(membership=membership, by=request.membership, revoke_tokens=revoke)  # type: ignore[attr-defined]
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("cabinets:company:members")
    messages.success(request, _("%(email)s no longer works in the company.") % {"email": membership.user.email})
    if revoked:
        messages.info(request, ngettext("%(n)d token revoked.", "%(n)d tokens revoked.", revoked) % {"n": revoked})
    if membership.user_id == request.user.pk:
        return redirect("/")
    return redirect("cabinets:company:members")


@company_view(*COMPANY_MANAGERS)
@require_POST
def invitation_create(request: HttpRequest) -> HttpResponse:
    """Invite a person by email with a role (the email carries the link; a manager cannot invite an
    owner). Errors: the members page again, with the form's errors."""
    form = InvitationForm(request.POST)
    if form.is_valid():
        try:
            issued = accounts.invite(email=form.cleaned_data["email"], role=form.cleaned_data["role"], invited_by=request.user,
                                     company=request.company,  # type: ignore[attr-defined]
                                     site_url=request.build_absolute_uri("/").rstrip("/"))
        except ValidationError as exc:
            form.add_error("email", exc)
        except InvitationError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("An invitation is sent to %(email)s.") % {"email": issued.invitation.email})
            return redirect("cabinets:company:members")
    return _members_page(request, form, status=400)


@company_view(*COMPANY_MANAGERS)
@require_POST
def invitation_revoke(request: HttpRequest, invitation_id: int) -> HttpResponse:
    """Revoke a pending invitation (its link stops working at once)."""
    invitation = company_object(request, Invitation.objects.all(), pk=invitation_id)
    accounts.revoke_invitation(invitation=invitation)
    messages.success(request, _("The invitation to %(email)s is revoked.") % {"email": invitation.email})
    return redirect("cabinets:company:members")
