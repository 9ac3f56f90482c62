from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class InvoicingConfig(AppConfig):
    name = "apps.invoicing"
    label = "invoicing"
    verbose_name = _("Top-ups and documents")
    default_auto_field = "django.db.models.BigAutoField"
