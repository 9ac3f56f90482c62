"""Local nodes: which node of an ``openai_compatible`` provider serves a call, and what a node's
failure does in this worker.

A provider with active nodes (``apps.providers.models.LocalNode``) sends its models' calls to
them instead of its own base URL (``pipeline/upstream.py``, ``UpstreamClient._open_nodes``).

Order (``NodeBalancer.order``): least outstanding requests per unit of weight — a node of weight 2
takes a second request when a node of weight 1 has one — counted **in this worker only** (an
in-process counter per node, no Redis call per request: with W workers the global balance is
W independent least-outstanding balancers, which converges to the same spread under load). Ties
go to the node picked least often per unit of weight, so idle nodes share sequential traffic by
weight. Skipped: nodes the health task (``apps/providers/node_health.py``) last saw down — workers
learn it on the config poll they already make — and nodes that failed a request in this worker
within ``cooldown`` seconds (``NODE_COOLDOWN_SECONDS``, or the upstream's ``Retry-After`` when
longer). A request that is still open counts until its answer is read (a stream: until the relay
releases it).

Outstanding counts are published for the admin (``publish``) about once a second, one
``HSET`` + ``PEXPIRE`` per worker, only when the routing table has nodes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from apps.providers.adapters.base import Credential, Target, UpstreamFailure, UpstreamResponse
from apps.providers.models import NodeHealth
from apps.providers.node_health import LOAD_PREFIX, LOAD_TTL_MS

logger = logging.getLogger("jetstream.proxy")

NODE_COOLDOWN_SECONDS = 10.0


@dataclass(slots=True)
class NodeRoute:
    """One active local node as the hot path sees it (``LocalNode``'s routing fields), frozen per load.

    ``secret`` the decrypted API key ("" = none); ``supplier_id`` the owner (None = the platform);
    ``cost_input`` / ``cost_output`` / ``cost_denominator`` the cost fraction (``LocalNode.cost_fraction``:
    micro-RUB = ceil((input × cost_input + output × cost_output) / cost_denominator)); ``health`` a
    ``NodeHealth`` value."""

    id: int
    name: str
    base_url: str
    secret: str = field(repr=False)  # never in a log line or a traceback's repr
    weight: int
    supplier_id: int | None
    cost_input: int
    cost_output: int
    cost_denominator: int
    internal: bool = False
    health: str = NodeHealth.UNKNOWN

    @property
    def credential(self) -> Credential | None:
        """The node's API key for the adapter (its id negated: never a supplier key's cache slot), or None."""
        return Credential(-self.id, self.secret) if self.secret else None

    def target(self, upstream_model: str, options: Mapping) -> Target:
        """Where a call to ``upstream_model`` goes on this node."""
        return Target(self.base_url, upstream_model, options)

    def cost(self, input_tokens: int, output_tokens: int) -> int:
        """Micro-RUB this node's hardware costs for these tokens (cached input counts as input), rounded up once."""
        units = input_tokens * self.cost_input + output_tokens * self.cost_output
        return -(-units // max(1, self.cost_denominator))


@dataclass(slots=True)
class _NodeState:
    outstanding: int = 0
    picks: int = 0
    cooldown_until: float = 0.0  # time.monotonic()
    last_error: str = ""


@dataclass(slots=True)
class Lease:
    """One outstanding request on a node; ``release`` ends it (safe to call twice)."""

    balancer: NodeBalancer
    node_id: int
    released: bool = False

    def release(self) -> None:
        """End the request's count on its node (once)."""
        if not self.released:
            self.released = True
            state = self.balancer.state(self.node_id)
            state.outstanding = max(0, state.outstanding - 1)


class LeasedResponse:
    """An ``UpstreamResponse`` whose ``release`` also ends its node's lease (the relay releases a
    stream's response when it is done with it)."""

    __slots__ = ("_lease", "_response", "headers", "status")

    def __init__(self, response: UpstreamResponse, lease: Lease) -> None:
        self._response = response
        self._lease = lease
        self.status = response.status
        self.headers = response.headers

    async def read(self) -> bytes:
        """See ``UpstreamResponse.read``."""
        return await self._response.read()

    def chunks(self) -> AsyncIterator[bytes]:
        """See ``UpstreamResponse.chunks``."""
        return self._response.chunks()

    def release(self) -> None:
        """Give the connection back and end the node's lease."""
        try:
            self._response.release()
        finally:
            self._lease.release()


@dataclass
class NodeBalancer:
    """This worker's per-node counters (outstanding requests, picks, cooldowns) by node id: they
    outlive route reloads. ``cooldown`` seconds a failing node rests in this worker."""

    cooldown: float = NODE_COOLDOWN_SECONDS
    states: dict[int, _NodeState] = field(default_factory=dict)
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def state(self, node_id: int) -> _NodeState:
        """The node's counters (created at zero)."""
        found = self.states.get(node_id)
        if found is None:
            found = self.states[node_id] = _NodeState()
        return found

    def usable(self, node: NodeRoute, now: float | None = None) -> bool:
        """Whether ``node`` may be tried: not seen down by the health task, not resting here."""
        now = time.monotonic() if now is None else now
        return node.health != NodeHealth.DOWN and self.state(node.id).cooldown_until <= now

    def order(self, nodes: Sequence[NodeRoute]) -> list[NodeRoute]:
        """The usable ``nodes``, least outstanding per unit of weight first (module docstring); []
        when none is usable."""
        now = time.monotonic()
        usable = [node for node in nodes if self.usable(node, now)]

        def load(node: NodeRoute) -> tuple[float, float, int]:
            state = self.state(node.id)
            return state.outstanding / node.weight, state.picks / node.weight, node.id

        return sorted(usable, key=load)

    def acquire(self, node: NodeRoute) -> Lease:
        """Count a request on ``node`` until the returned lease is released."""
        state = self.state(node.id)
        state.outstanding += 1
        state.picks += 1
        return Lease(self, node.id)

    def failed(self, node: NodeRoute, failure: UpstreamFailure) -> None:
        """Rest ``node`` in this worker after a failure about the node or the moment (it fails over):
        ``cooldown`` seconds, or the upstream's own (``Retry-After``) when longer."""
        if not failure.failover:
            return
        state = self.state(node.id)
        rest = max(self.cooldown, failure.cooldown or 0.0)
        state.cooldown_until = max(state.cooldown_until, time.monotonic() + rest)
        state.last_error = failure.code
        logger.warning("local node %s (%s) failed (%s); resting it for %.0f s in this worker", node.id, node.name,
                       failure.code, rest)

    def succeeded(self, node: NodeRoute) -> None:
        """``node`` answered: any rest it had in this worker ends."""
        state = self.state(node.id)
        state.cooldown_until = 0.0
        state.last_error = ""

    def retry_in(self, nodes: Sequence[NodeRoute]) -> float | None:
        """Seconds until the first node resting in this worker may be tried; None when every node is down."""
        now = time.monotonic()
        waits = [self.state(node.id).cooldown_until - now for node in nodes if node.health != NodeHealth.DOWN]
        return max(0.0, min(waits)) if waits else None

    def outstanding(self) -> dict[int, int]:
        """Outstanding requests per node id, in this worker."""
        return {node_id: state.outstanding for node_id, state in self.states.items()}

    async def publish(self, redis, node_ids: Sequence[int]) -> None:
        """Write this worker's outstanding counts of ``node_ids`` to ``js:nodes:load:<worker>`` (a hash
        node id → count, expiring after ``LOAD_TTL_MS`` so a dead worker's counts vanish). Raises the
        Redis client's errors."""
        if not node_ids:
            return
        key = f"{LOAD_PREFIX}{self.worker}"
        args: list[str | int] = []
        for node_id in node_ids:
            args += [str(node_id), self.state(node_id).outstanding]
        await redis.execute("HSET", key, *args)
        await redis.execute("PEXPIRE", key, LOAD_TTL_MS)
