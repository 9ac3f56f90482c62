"""The supplier cabinet."""
from __future__ import annotations

from django.urls import path

from apps.cabinets.supplier import views

app_name = "supplier"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("keys/", views.keys, name="keys"),
    path("keys/add/", views.key_add, name="key_add"),
    path("keys/<int:key_id>/", views.key_detail, name="key"),
    path("keys/<int:key_id>/cap/", views.key_cap, name="key_cap"),
    path("keys/<int:key_id>/rotate/", views.key_rotate, name="key_rotate"),
    path("keys/<int:key_id>/disable/", views.key_disable, name="key_disable"),
    path("keys/<int:key_id>/enable/", views.key_enable, name="key_enable"),
    path("statement/", views.statement, name="statement"),
    path("statement/export/", views.statement_export, name="statement_export"),
    path("withdrawals/", views.withdrawals, name="withdrawals"),
    path("withdrawals/request/", views.withdrawal_request, name="withdrawal_request"),
    path("withdrawals/<int:withdrawal_id>/", views.withdrawal_detail, name="withdrawal"),
    path("payout-details/", views.payout_details, name="payout_details"),
]
