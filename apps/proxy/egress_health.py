"""The egress proxies' health check (run by ``apps.proxy.tasks.check_egress_health``).

``check_egresses`` (Celery beat, every ``JETSTREAM_EGRESS_CHECK_SECONDS``) requests each active
egress proxy's probe URL through it (``apps.proxy.egress.probe``: any HTTP answer within
``JETSTREAM_EGRESS_PROBE_TIMEOUT_SECONDS`` means up) and records the health, the time, the latency and
the scrubbed error on the ``EgressProxy`` row. Rows are written with ``update()`` (no save signal):
the proxy workers reload their routes only when a proxy's up/down state changed, through the config
version they already poll (``apps.proxy.snapshot.bump_config_version``) — so a worker learns that an
egress is down without any Redis call per request, and a latency change costs nothing.
"""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.providers.models import EgressHealth, EgressProxy, ProviderEgress
from apps.proxy.egress import EgressRoute, probe
from apps.proxy.snapshot import bump_config_version

logger = logging.getLogger(__name__)


def probe_url_of(egress: EgressProxy) -> str | None:
    """What the check requests through ``egress``: its ``probe_url``, else the base URL of the first
    active provider that lists it (by priority), else None (nothing to check against)."""
    if egress.probe_url:
        return egress.probe_url
    link = (ProviderEgress.objects.select_related("provider").filter(egress=egress, provider__is_active=True)
            .exclude(provider__base_url="").order_by("priority", "provider__slug").first())
    return link.provider.base_url if link is not None else None


async def _probe_all(targets: list[tuple[EgressProxy, str]], timeout: float) -> list:
    routes = [EgressRoute(egress.pk, egress.slug, egress.reveal_url(), internal=egress.internal) for egress, _url in targets]
    return await asyncio.gather(*(probe(route, url, timeout=timeout) for route, (_egress, url) in zip(routes, targets, strict=True)))


def check_egresses(*, timeout: float | None = None) -> dict[str, str]:
    """Probe every active egress proxy that has a probe URL, concurrently, and record what was found.
    Returns slug → health ("up" / "down"). Bumps the proxies' config version (on commit) when any
    proxy's up/down state changed. ``timeout`` seconds per probe (default the setting)."""
    timeout = timeout or float(settings.JETSTREAM["EGRESS_PROBE_TIMEOUT_SECONDS"])
    targets = []
    for egress in EgressProxy.objects.filter(is_active=True):
        url = probe_url_of(egress)
        if url is None:
            logger.info("egress proxy %s: no probe URL and no provider uses it; not checked", egress.slug)
            continue
        targets.append((egress, url))
    results = asyncio.run(_probe_all(targets, timeout)) if targets else []
    found: dict[str, str] = {}
    changed = False
    now = timezone.now()
    with transaction.atomic():
        for (egress, _url), result in zip(targets, results, strict=True):
            health = EgressHealth.UP if result.up else EgressHealth.DOWN
            changed |= health != egress.health
            EgressProxy.objects.filter(pk=egress.pk).update(
                health=health, health_checked_at=now, health_latency_ms=result.latency_ms,
                health_error="" if result.up else result.error)
            found[egress.slug] = str(health)
            if not result.up:
                logger.warning("egress proxy %s is down: %s", egress.slug, result.error)
        if changed:
            transaction.on_commit(bump_config_version)
    return found
