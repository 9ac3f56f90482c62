from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jetstream.settings")

app = Celery("jetstream")
# All Celery settings live in jetstream/settings.py as CELERY_*; the beat schedule too.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
