from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ConfigConfig(AppConfig):
    """Declarative configuration (``jetstream_apply``, ``jetstream_demo``); no models of its own."""

    name = "apps.config"
    label = "config"
    verbose_name = _("Configuration")
    default_auto_field = "django.db.models.BigAutoField"
