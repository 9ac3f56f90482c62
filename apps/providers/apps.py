from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ProvidersConfig(AppConfig):
    name = "apps.providers"
    label = "providers"
    verbose_name = _("Providers")
    default_auto_field = "django.db.models.BigAutoField"
