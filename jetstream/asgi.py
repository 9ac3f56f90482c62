"""ASGI entry point: a Channels ProtocolTypeRouter.

HTTP under /v1/ goes straight to the proxy app (no Django middleware on the hot path);
everything else is Django (cabinets, admin, REST API). Runs under uvicorn (the measured
production default, see docs/benchmarks.md) and under daphne.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jetstream.settings")

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

django_app = get_asgi_application()

from apps.proxy.pipeline.app import ProxyApp  # noqa: E402  (needs the apps loaded)


def build_application(proxy: ProxyApp) -> ProtocolTypeRouter:
    async def http_router(scope, receive, send):
        path = scope["path"]
        if path.startswith("/v1/") or path == "/v1":
            await proxy(scope, receive, send)
        else:
            await django_app(scope, receive, send)

    return ProtocolTypeRouter({"http": http_router, "lifespan": proxy.lifespan})


application = build_application(ProxyApp())
