"""Local nodes' health (the periodic check) and load (what the proxy workers publish), for the admin
and for routing.

``check_nodes`` is what the Celery task ``apps.providers.tasks.check_local_nodes`` runs: a ``GET``
of every active node's health URL — the node's origin (scheme, host, port of ``base_url``) plus
its ``health_path`` (``/health`` for vLLM and TGI, ``/v1/models`` for Ollama and llama.cpp) — with
the node's API key as ``Authorization: Bearer`` when it has one, no redirects followed, every
address checked against SSRF at connect time unless the node is ``internal``. A 2xx within
``timeout`` seconds is *up*, anything else *down*; the state, the check's latency (ms) and the
last error (scrubbed, short) are written to the node. A change of state is saved through the model
(which bumps the proxy's config version: every worker reloads its routes within a poll and stops
or resumes using the node); a check that changes nothing else updates the row without a bump.

Load: each proxy worker writes its outstanding requests per node to the hash
``js:nodes:load:<host>:<pid>`` about once a second (``apps/proxy/nodes.py``), expiring after
``LOAD_TTL_MS``; ``outstanding_by_node`` sums them — approximate by a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import redis
from django.conf import settings
from django.utils import timezone

from lib.scrub import scrub
from lib.ssrf import GuardedResolver, guarded_socket

from .models import LocalNode, NodeHealth

logger = logging.getLogger(__name__)

LOAD_PREFIX = "js:nodes:load:"
LOAD_TTL_MS = 15_000
CHECK_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One node's check: ``up``, ``latency_ms`` (to the answer's headers; None when none came) and ``error`` ("" when up)."""

    node_id: int
    up: bool
    latency_ms: int | None
    error: str


def health_url(node: LocalNode) -> str:
    """The node's origin (``scheme://host:port`` of its base URL) followed by its ``health_path``."""
    parts = urlsplit(node.base_url)
    return f"{parts.scheme}://{parts.netloc}{node.health_path}"


async def _check(session: aiohttp.ClientSession, node: LocalNode, secret: str, timeout: float) -> CheckResult:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            async with session.get(health_url(node), headers=headers, allow_redirects=False) as response:
                latency = int((time.monotonic() - started) * 1000)
                if 200 <= response.status < 300:
                    return CheckResult(node.pk, True, latency, "")
                body = (await response.read())[:2000].decode("utf-8", "replace")
                return CheckResult(node.pk, False, latency, scrub(f"HTTP {response.status}: {body}", [secret] if secret else [])[:300])
    except TimeoutError:
        return CheckResult(node.pk, False, None, f"no answer within {timeout:g} s")
    except (aiohttp.ClientError, OSError) as exc:
        return CheckResult(node.pk, False, None, scrub(f"{type(exc).__name__}: {exc}", [secret] if secret else [])[:300])


async def _check_all(nodes: list[tuple[LocalNode, str]], timeout: float) -> list[CheckResult]:
    guard = GuardedResolver(None)
    guarded = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=guard, socket_factory=guarded_socket),
                                    trust_env=False)
    internal = aiohttp.ClientSession(trust_env=False)
    try:
        return list(await asyncio.gather(*(_check(internal if node.internal else guarded, node, secret, timeout)
                                           for node, secret in nodes)))
    finally:
        await guarded.close()
        await internal.close()
        await guard.close()


def _record(node: LocalNode, result: CheckResult) -> None:
    state = NodeHealth.UP if result.up else NodeHealth.DOWN
    fields = {"health_latency_ms": result.latency_ms, "health_error": result.error, "health_checked_at": timezone.now()}
    if node.health != state:
        # Through the model: its save bumps the proxy's config version (apps/proxy/signals.py).
        for name, value in {**fields, "health": state}.items():
            setattr(node, name, value)
        node.save(update_fields=[*fields, "health"])
        logger.warning("local node %s is now %s%s", node, state, f" ({result.error})" if result.error else "")
    else:
        LocalNode.objects.filter(pk=node.pk).update(**fields)


def check_nodes(*, node_ids: Iterable[int] | None = None, timeout: float = CHECK_TIMEOUT_SECONDS) -> list[CheckResult]:
    """Check every active node (or those of ``node_ids``) of an active provider, all at once, and
    record each result (module docstring). Returns the results. A node whose key cannot be
    decrypted is recorded down."""
    query = LocalNode.objects.select_related("provider").filter(is_active=True, provider__is_active=True)
    if node_ids is not None:
        query = query.filter(pk__in=list(node_ids))
    found = {node.pk: node for node in query}
    nodes: list[tuple[LocalNode, str]] = []
    results: list[CheckResult] = []
    for node in found.values():
        try:
            nodes.append((node, node.reveal_secret()))
        except Exception:  # an undecryptable key: the proxy skips the node too
            results.append(CheckResult(node.pk, False, None, "the node's API key cannot be decrypted"))
    if nodes:
        results += asyncio.run(_check_all(nodes, timeout))
    for result in results:
        _record(found[result.node_id], result)
    return results


def outstanding_by_node() -> dict[int, int]:
    """Outstanding requests per node id summed over the proxy workers that published in the last
    ``LOAD_TTL_MS`` ({} when Redis is unreachable: the admin shows no figure rather than failing)."""
    totals: dict[int, int] = {}
    try:
        client = redis.Redis.from_url(settings.REDIS_URL)
        try:
            for key in client.scan_iter(match=f"{LOAD_PREFIX}*", count=100):
                for node_id, count in client.hgetall(key).items():
                    totals[int(node_id)] = totals.get(int(node_id), 0) + int(count)
        finally:
            client.close()
    except (redis.RedisError, ValueError):
        logger.warning("could not read the local nodes' load from Redis")
        return {}
    return totals
