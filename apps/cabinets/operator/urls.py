from __future__ import annotations

from django.urls import path

from apps.cabinets.operator import moderation, views

app_name = "operator"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("moderation/", moderation.moderation, name="moderation"),
]
