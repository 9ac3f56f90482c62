"""FakeOpenAI whose behaviour may differ per supplier key, for the balancer's tests.

A real upstream answers each key on its own account: one key is rate limited or revoked while its
sibling answers. ``KeyedFakeOpenAI.key_behavior(secret, **changes)`` sets a ``Behavior`` for the
requests presenting that key (``fail_times`` and ``slow_times`` count down per key); requests with
any other accepted key get the shared ``behavior``. Everything else is ``FakeOpenAI``'s.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest
from aiohttp import web

from tests.fakes.openai_upstream import Behavior, FakeOpenAI, RecordedRequest

KEY_A = "sk-balancer-key-a-0123456789"
KEY_B = "sk-balancer-key-b-0123456789"
KEY_C = "sk-balancer-key-c-0123456789"


class KeyedFakeOpenAI(FakeOpenAI):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._per_key: dict[str, Behavior] = {}
        self._presented: str | None = None

    def key_behavior(self, key: str, **changes: Any) -> Behavior:
        """Change how requests presenting ``key`` are answered (fields of ``Behavior``)."""
        with self._lock:
            behavior = dataclasses.replace(self._per_key.get(key, Behavior()), **changes)
            self._per_key[key] = behavior
            return behavior

    def reset(self) -> None:
        """``FakeOpenAI.reset`` and no per-key behaviour."""
        super().reset()
        with self._lock:
            self._per_key.clear()

    def keys_used(self) -> list[str]:
        """The key each recorded request presented, oldest first."""
        return [r.headers.get("Authorization", "").removeprefix("Bearer ").strip() for r in self.requests]

    def key_counts(self) -> Counter:
        return Counter(self.keys_used())

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        # The base class takes its behaviour synchronously, before its first await: the key seen here
        # is the one ``_take_behavior`` reads (one event loop serves every request).
        self._presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return await super()._answer(request, record)

    def _take_behavior(self) -> tuple[Behavior, bool]:
        key = self._presented
        with self._lock:
            own = self._per_key.get(key) if key is not None else None
            if own is None:
                shared = None
            else:
                shared, self._behavior = self._behavior, own
        if shared is None:
            return super()._take_behavior()
        try:
            return super()._take_behavior()  # counts down the key's own fail_times / slow_times
        finally:
            with self._lock:
                self._per_key[key], self._behavior = self._behavior, shared  # type: ignore[index]


@pytest.fixture(scope="session")
def keyed_fake_server():
    with KeyedFakeOpenAI(expected_keys=(KEY_A, KEY_B, KEY_C)) as fake:
        yield fake


@pytest.fixture
def keyed_fake(keyed_fake_server: KeyedFakeOpenAI):
    keyed_fake_server.reset()
    yield keyed_fake_server
    keyed_fake_server.reset()
