"""The node balancer without a network: least outstanding per weight, ties by picks, down and
resting nodes skipped, leases released once, and a node's cost rounded up once."""

from __future__ import annotations

import time

from apps.providers.adapters.base import UpstreamFailure, rejected, unreachable
from apps.providers.models import NodeHealth
from apps.proxy.nodes import NodeBalancer, NodeRoute


def route(node_id: int, *, weight: int = 1, health: str = NodeHealth.UP, cost=(7, 7, 1_000_000)) -> NodeRoute:
    return NodeRoute(node_id, f"n{node_id}", f"http://127.0.0.1:{8000 + node_id}/v1", "", weight, None, *cost, internal=True,
                     health=health)


def test_it_picks_the_least_outstanding_per_unit_of_weight():
    balancer = NodeBalancer()
    a, b = route(1, weight=1), route(2, weight=2)
    leases = [balancer.acquire(balancer.order([a, b])[0]) for _ in range(6)]
    assert balancer.outstanding() == {1: 2, 2: 4}  # b takes twice a's share
    for lease in leases:
        lease.release()
        lease.release()  # twice is once
    assert balancer.outstanding() == {1: 0, 2: 0}


def test_idle_nodes_share_sequential_requests_by_weight():
    balancer = NodeBalancer()
    nodes = [route(1), route(2), route(3, weight=2)]
    picked = []
    for _ in range(8):
        node = balancer.order(nodes)[0]
        picked.append(node.id)
        balancer.acquire(node).release()
    assert sorted(picked.count(i) for i in (1, 2)) == [2, 2] and picked.count(3) == 4


def test_down_and_resting_nodes_are_skipped_and_a_success_ends_the_rest():
    balancer = NodeBalancer(cooldown=30)
    up, down, failing = route(1), route(2, health=NodeHealth.DOWN), route(3)
    balancer.failed(failing, unreachable())
    assert [n.id for n in balancer.order([up, down, failing])] == [1]
    assert 29 < balancer.retry_in([down, failing]) <= 30
    assert balancer.retry_in([down]) is None
    balancer.succeeded(failing)
    assert [n.id for n in balancer.order([up, down, failing])] == [1, 3]


def test_a_failure_about_the_request_does_not_rest_the_node_and_retry_after_is_honoured():
    balancer = NodeBalancer(cooldown=5)
    node = route(1)
    balancer.failed(node, rejected(400, "bad request", code=None))
    assert balancer.order([node]) == [node]
    balancer.failed(node, UpstreamFailure(429, "slow down", code="upstream_rate_limited", failover=True, cooldown=120))
    assert balancer.state(1).cooldown_until - time.monotonic() > 100


def test_cost_is_rounded_up_once():
    per_1m = route(1, cost=(120_000_000, 360_000_000, 1_000_000))
    assert per_1m.cost(1, 0) == 120 and per_1m.cost(17, 33) == 17 * 120 + 33 * 360
    gpu = route(2, cost=(250_000_000, 250_000_000, 1_300_000))
    assert gpu.cost(1, 0) == 193  # 192.307… micro-RUB, up
    assert gpu.cost(13, 0) == 2500  # exactly 13 × 250_000_000 / 1_300_000
    assert gpu.cost(0, 0) == 0
