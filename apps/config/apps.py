from __future__ import annotations

from django.apps import AppConfig


class ConfigConfig(AppConfig):
    """Declarative configuration (``jetstream_apply``, ``jetstream_demo``); no models of its own."""

    name = "apps.config"
    label = "config"
    default_auto_field = "django.db.models.BigAutoField"
