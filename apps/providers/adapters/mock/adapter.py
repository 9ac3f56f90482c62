"""``MockAdapter``: the ``mock`` kind answers in-process, in OpenAI's wire format, with no key.

Like any upstream it is asked for the usage chunk of a stream (``stream_options.include_usage``),
so a stream is billed from the same counts as the same request unstreamed; the relay hides the
chunk again from a client that did not ask for it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from apps.providers.adapters.base import CanonicalRequest, Credential, Target, UpstreamResponse
from apps.providers.adapters.mock import generator
from apps.providers.adapters.openai import OpenAIAdapter

logger = logging.getLogger("jetstream.providers")


class LocalResponse:
    """The mock's answer behind the ``UpstreamResponse`` protocol: always 200."""

    __slots__ = ("_request", "_target", "headers", "status")

    def __init__(self, request: CanonicalRequest, target: Target) -> None:
        if request.stream:
            body = dict(request.body, stream_options={**(request.body.get("stream_options") or {}), "include_usage": True})
            request = CanonicalRequest(request.endpoint, request.model, body, stream=True, include_usage=request.include_usage,
                                       max_tokens=request.max_tokens, n=request.n)
        self._request = request
        self._target = target
        if target.options.get("echo") is True:  # the demo's echo mock shows what a provider would receive
            logger.info("mock %s received: %s", target.upstream_model, generator.last_user_text(request.body.get("messages"))[:500])
        self.status = 200
        self.headers: Mapping[str, str] = {}

    async def read(self) -> bytes:
        """See ``UpstreamResponse.read``: the generator's whole answer for the request."""
        return await generator.respond(self._request.body, upstream_model=self._target.upstream_model,
                                       options=dict(self._target.options), kind=self._request.endpoint)

    def chunks(self) -> AsyncIterator[bytes]:
        """See ``UpstreamResponse.chunks``: the generator's SSE stream for the request."""
        return generator.stream(self._request.body, upstream_model=self._target.upstream_model,
                                options=dict(self._target.options), kind=self._request.endpoint)

    def release(self) -> None:
        """See ``UpstreamResponse.release``: nothing to give back."""
        pass


class MockAdapter(OpenAIAdapter):
    """The in-process upstream (see ``generator``); parsed and decoded as OpenAI's format."""

    kind = "mock"
    needs_key = False

    async def open(self, http: aiohttp.ClientSession | Any, request: CanonicalRequest, target: Target,
                   credential: Credential | None, *, proxy: str | None) -> UpstreamResponse:
        """See ``Adapter.open``: answers in-process (no HTTP; ``credential`` and ``proxy`` unused)."""
        return LocalResponse(request, target)
