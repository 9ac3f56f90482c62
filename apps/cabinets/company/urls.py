"""The company cabinet. URL kwargs are named after the object they address (``token_id``,
``department_id``, ``member_id``, ``topup_id``, ``document_id``): the isolation walk
fills them by name."""
from __future__ import annotations

from django.urls import path

from apps.cabinets.company import audit, departments, journal, members, moderation, tokens, views, wallet

app_name = "company"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("tokens/", tokens.token_list, name="tokens"),
    path("tokens/new/", tokens.token_create, name="token_create"),
    path("tokens/<int:token_id>/", tokens.token_detail, name="token_detail"),
    path("tokens/<int:token_id>/edit/", tokens.token_edit, name="token_edit"),
    path("tokens/<int:token_id>/block/", tokens.token_block, name="token_block"),
    path("tokens/<int:token_id>/unblock/", tokens.token_unblock, name="token_unblock"),
    path("tokens/<int:token_id>/revoke/", tokens.token_revoke, name="token_revoke"),
    path("tokens/<int:token_id>/rotate/", tokens.token_rotate, name="token_rotate"),
    path("departments/", departments.department_list, name="departments"),
    path("departments/new/", departments.department_create, name="department_create"),
    path("departments/<int:department_id>/edit/", departments.department_edit, name="department_edit"),
    path("departments/<int:department_id>/delete/", departments.department_delete, name="department_delete"),
    path("members/", members.member_list, name="members"),
    path("members/invite/", members.invitation_create, name="invitation_create"),
    path("members/invitations/<int:invitation_id>/revoke/", members.invitation_revoke, name="invitation_revoke"),
    path("members/<int:member_id>/role/", members.member_role, name="member_role"),
    path("members/<int:member_id>/remove/", members.member_remove, name="member_remove"),
    path("wallet/", wallet.wallet, name="wallet"),
    path("wallet/requisites/", wallet.requisites, name="requisites"),
    path("wallet/top-up/", wallet.topup_request, name="topup_request"),
    path("wallet/top-ups/<int:topup_id>/cancel/", wallet.topup_cancel, name="topup_cancel"),
    path("wallet/documents/<int:document_id>.pdf", wallet.document_pdf, name="document_pdf"),
    path("journal/", journal.journal, name="journal"),
    path("journal/export.csv", journal.journal_export, {"fmt": "csv"}, name="journal_export_csv"),
    path("journal/export.xlsx", journal.journal_export, {"fmt": "xlsx"}, name="journal_export_xlsx"),
    path("moderation/", moderation.moderation, name="moderation"),
    path("audit/", audit.audit_log, name="audit"),
    path("audit/export.<str:fmt>", audit.audit_export, name="audit_export"),
]
