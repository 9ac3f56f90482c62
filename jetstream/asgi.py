"""ASGI entry point: a Channels ProtocolTypeRouter.

HTTP under /v1/ goes to the proxy app (no Django middleware on the hot path); everything
else is Django. Runs under uvicorn (production default) and daphne.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jetstream.settings")

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

django_app = get_asgi_application()

application = ProtocolTypeRouter({"http": django_app})
