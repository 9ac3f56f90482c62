from __future__ import annotations

from django.urls import path

from apps.cabinets.supplier import views

app_name = "supplier"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
]
