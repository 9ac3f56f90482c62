from __future__ import annotations

from django.urls import path

from apps.cabinets.company import moderation, views

app_name = "company"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("moderation/", moderation.moderation, name="moderation"),
]
