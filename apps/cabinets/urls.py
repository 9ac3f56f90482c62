"""The cabinets' URLs: ``/company/``, ``/supplier/``, ``/operator/`` and the sign-in steps they share."""

from __future__ import annotations

from django.urls import include, path

from apps.cabinets import mfa

app_name = "cabinets"

urlpatterns = [
    path("mfa/", mfa.verify, name="mfa"),
    path("company/", include("apps.cabinets.company.urls")),
    path("supplier/", include("apps.cabinets.supplier.urls")),
    path("operator/", include("apps.cabinets.operator.urls")),
]
