from __future__ import annotations

from django.urls import path

from apps.cabinets.operator import views

app_name = "operator"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
]
