"""The operator cabinet."""
from __future__ import annotations

from django.urls import path

from apps.cabinets.operator import audit, moderation, views

app_name = "operator"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("approvals/", views.approvals, name="approvals"),
    path("top-ups/<int:topup_id>/invoice/", views.top_up_invoice, name="top_up_invoice"),
    path("top-ups/<int:topup_id>/confirm/", views.top_up_confirm, name="top_up_confirm"),
    path("top-ups/<int:topup_id>/cancel/", views.top_up_cancel, name="top_up_cancel"),
    path("withdrawals/<int:withdrawal_id>/approve/", views.withdrawal_approve, name="withdrawal_approve"),
    path("withdrawals/<int:withdrawal_id>/reject/", views.withdrawal_reject, name="withdrawal_reject"),
    path("catalog/", views.catalog, name="catalog"),
    path("coefficients/", views.coefficients, name="coefficients"),
    path("coefficients/<int:company_id>/<int:model_id>/", views.coefficient_set, name="coefficient_set"),
    path("health/", views.health, name="health"),
    path("turnover/", views.turnover, name="turnover"),
    path("moderation/", moderation.moderation, name="moderation"),
    path("audit/", audit.audit_log, name="audit"),
    path("audit/export.<str:fmt>", audit.audit_export, name="audit_export"),
]
