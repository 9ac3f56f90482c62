"""The cabinets' URLs: ``/company/``, ``/supplier/``, ``/operator/`` and the sign-in steps they share."""

from __future__ import annotations

from django.urls import include, path

from apps.cabinets import mfa, signin

app_name = "cabinets"

urlpatterns = [
    path("mfa/", mfa.verify, name="mfa"),
    path("mfa/devices/", mfa.devices, name="mfa_devices"),
    path("mfa/recovery-codes/", mfa.regenerate_recovery_codes, name="mfa_recovery"),
    path("mfa/replace/", mfa.replace_authenticator, name="mfa_replace"),
    path("reauth/", signin.reauth, name="reauth"),
    path("company/", include("apps.cabinets.company.urls")),
    path("supplier/", include("apps.cabinets.supplier.urls")),
    path("operator/", include("apps.cabinets.operator.urls")),
]
