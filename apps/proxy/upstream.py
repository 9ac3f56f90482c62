"""The upstream call: pooled aiohttp session, key failover, the in-process mock.

Failover happens only before the first byte reaches the client: a connection error, a timeout
before headers, 401/403 (the key is bad), 429 or 5xx from one key → the next key (up to
``MAX_ATTEMPTS``), with the failed key cooled down in this worker.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from apps.providers.adapters import openai as wire
from apps.providers.adapters.mock import generator as mock
from apps.providers.models import ProviderKind

from .errors import ApiError
from .snapshot import KeyRoute, ModelRoute

MAX_ATTEMPTS = 3
OPENAI_WIRE = {ProviderKind.OPENAI, ProviderKind.OPENAI_COMPATIBLE, ProviderKind.DEEPSEEK, ProviderKind.MISTRAL,
               ProviderKind.QWEN, ProviderKind.MOCK}


@dataclass(slots=True)
class Upstream:
    """A started upstream response: a whole body, or a stream of SSE events."""

    key: KeyRoute | None
    body: bytes | None = None
    events: AsyncIterator[list[bytes]] | None = None  # batches of SSE data lines
    response: aiohttp.ClientResponse | None = None

    def close(self) -> None:
        if self.response is not None:
            self.response.release()


def _cooldown(key: KeyRoute, seconds: float) -> None:
    key.cooldown_until = max(key.cooldown_until, time.monotonic() + seconds)


async def _sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[list[bytes]]:
    """The upstream body as batches of SSE ``data:`` lines: one batch per network read, so the
    relay sends the client one chunk per read instead of one per event."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n")
        if end < 0:
            continue
        complete, buffer = buffer[:end], buffer[end + 2:]
        batch = [line for line in complete.split(b"\n") if line.startswith(b"data:")]
        if batch:
            yield batch
    tail = [line for line in buffer.split(b"\n") if line.startswith(b"data:")]
    if tail:
        yield tail


async def _bare_events(events: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """The mock yields wire-ready events ("data: …" + a blank line); the relay takes batches of bare lines."""
    async for event in events:
        yield [event.rstrip(b"\n")]


class UpstreamClient:
    def __init__(self, *, timeout_seconds: int) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds, sock_connect=10)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60,
                                         enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, auto_decompress=True,
                                              skip_auto_headers=("User-Agent",), trust_env=False)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def open(self, *, route: ModelRoute, endpoint: str, body: dict, stream: bool) -> Upstream:
        if route.provider_kind == ProviderKind.MOCK:
            if stream:
                return Upstream(None, events=_bare_events(mock.stream(body, upstream_model=route.upstream_model,
                                                                      options=route.provider_options, kind=endpoint)))
            return Upstream(None, body=await mock.respond(body, upstream_model=route.upstream_model,
                                                          options=route.provider_options, kind=endpoint))
        if route.provider_kind not in OPENAI_WIRE:
            raise ApiError(501, f"Provider kind '{route.provider_kind}' has no adapter yet.", type="api_error",
                             code="provider_not_supported")
        keys = route.pick_keys()
        if not keys:
            raise ApiError(503, "No upstream key is available for this model right now.", type="api_error",
                             code="no_upstream_key")
        payload = wire.request_body(body, upstream_model=route.upstream_model, stream=stream)
        url = wire.request_url(route.base_url, endpoint)
        last_error: ApiError | None = None
        for key in keys[:MAX_ATTEMPTS]:
            try:
                response = await self._session.post(url, data=payload, headers=wire.request_headers(key.secret),
                                                     allow_redirects=False, proxy=route.egress_url)
            except (TimeoutError, aiohttp.ClientError, OSError):
                _cooldown(key, 5)
                last_error = ApiError(502, "The upstream provider could not be reached.", type="api_error",
                                        code="upstream_unreachable")
                continue
            if response.status < 300:
                if stream:
                    return Upstream(key, events=_sse_events(response), response=response)
                try:
                    data = await response.read()
                except (TimeoutError, aiohttp.ClientError):
                    response.release()
                    _cooldown(key, 5)
                    last_error = ApiError(502, "The upstream connection broke.", type="api_error", code="upstream_broken")
                    continue
                response.release()
                return Upstream(key, body=data)
            error_body = await response.read()
            response.release()
            message, _type, code = wire.error_message(error_body, key.secret)
            if response.status in (401, 403):
                _cooldown(key, 300)
                last_error = ApiError(502, "The upstream provider rejected the gateway's credentials.", type="api_error",
                                        code="upstream_auth_failed")
                continue
            if response.status == 429:
                retry_after = response.headers.get("retry-after", "")
                _cooldown(key, float(retry_after) if retry_after.isdigit() else 10)
                last_error = ApiError(429, f"The upstream provider is rate limiting: {message}", type="rate_limit_error",
                                        code="upstream_rate_limited")
                continue
            if response.status >= 500 or response.status in (408, 409):
                _cooldown(key, 5)
                last_error = ApiError(502, f"The upstream provider failed: {message}", type="api_error", code="upstream_error")
                continue
            # Any other 4xx is about the request itself: the same on every key.
            raise ApiError(response.status if response.status in (400, 404, 413, 422) else 400, message,
                             type=_type or "invalid_request_error", code=code or "upstream_rejected")
        raise last_error or ApiError(502, "The upstream provider failed.", type="api_error", code="upstream_error")
