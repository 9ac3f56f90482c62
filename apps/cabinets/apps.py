from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class CabinetsConfig(AppConfig):
    """The company, supplier and operator cabinets."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.cabinets"
    label = "cabinets"
    verbose_name = _("Cabinets")
