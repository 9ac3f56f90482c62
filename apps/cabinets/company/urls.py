"""The company cabinet."""
from __future__ import annotations

from django.urls import path

from apps.cabinets.company import journal, views

app_name = "company"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("journal/", journal.journal, name="journal"),
    path("journal/export.csv", journal.journal_export, {"fmt": "csv"}, name="journal_export_csv"),
    path("journal/export.xlsx", journal.journal_export, {"fmt": "xlsx"}, name="journal_export_xlsx"),
]
