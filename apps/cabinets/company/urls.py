from __future__ import annotations

from django.urls import path

from apps.cabinets.company import audit, views

app_name = "company"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("audit/", audit.audit_log, name="audit"),
    path("audit/export.<str:fmt>", audit.audit_export, name="audit_export"),
]
