"""Local nodes end to end: three FakeOpenAI servers on loopback as the nodes of one
``openai_compatible`` provider, the real gateway, the official ``openai`` SDK — where each request
went (least outstanding), failover past a dead node, the health task taking a node out of every
worker's routing, and what each request cost (both cost forms, to the micro-ruble) and to whom
it accrued."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from apps.billing.models import Account, AccountKind, Transfer, TransferKind, UsageRecord
from tests.fakes.openai_upstream import DEFAULT_KEY, FakeOpenAI, leaky_error
from tests.proxy.conftest import RUB, Gateway, ServerThread, free_port
from tests.proxy.helpers import expected_cost

MODEL = "local-llama"
PROMPT = [{"role": "user", "content": "Tell me about the northern lights"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
# Node a: 120 RUB / 1M input, 360 RUB / 1M output, owned by the supplier. Node b: 250 RUB per
# GPU-hour at 1.3M tokens/hour, the platform's own. Node c: 7 RUB / 1M both ways, the platform's own.
COST_A = (120 * RUB, 360 * RUB, 1_000_000)
COST_B = (250 * RUB, 250 * RUB, 1_300_000)
COST_C = (7 * RUB, 7 * RUB, 1_000_000)


@pytest.fixture(scope="module")
def fakes():
    servers = [FakeOpenAI(), FakeOpenAI(), FakeOpenAI()]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


@dataclass
class Nodes:
    gateway: Gateway
    fakes: list[FakeOpenAI]
    nodes: list  # LocalNode a, b, c
    provider: object
    app: object  # the gateway's ProxyApp (its worker's node counters)

    def reload(self) -> None:
        """After a change made with update() (no signal): bump the config version, wait for the poll."""
        from apps.proxy.snapshot import bump_config_version

        bump_config_version()
        self.gateway.wait_config()


def make_node(provider, name, base_url, *, supplier=None, cost=COST_C, gpu=False, weight=1, health_path="/v1/models"):
    from apps.providers.models import LocalNode

    node = LocalNode(provider=provider, name=name, base_url=base_url, internal=True, supplier=supplier, weight=weight,
                     health_path=health_path)
    if gpu:
        node.cost_mode, node.gpu_hour, node.tokens_per_hour = "gpu_hour", cost[0], cost[2]
    else:
        node.input_per_1m, node.output_per_1m = cost[0], cost[1]
    node.set_secret(DEFAULT_KEY)
    node.full_clean()
    node.save()
    return node


@pytest.fixture
def local(world, fakes):
    """Provider ``local`` (openai_compatible) with nodes a (supplier's, per 1M), b (own, per GPU-hour)
    and c (own, per 1M), each on its own fake; model ``local-llama`` priced in RUB; then the gateway."""
    from apps.providers.models import Model, Price, Provider
    from apps.proxy.pipeline.app import ProxyApp
    from jetstream.asgi import build_application

    for fake in fakes:
        fake.reset()
    provider = Provider.objects.create(slug="local", kind="openai_compatible", base_url=fakes[0].base_url, internal=True)
    nodes = [make_node(provider, "a", fakes[0].base_url, supplier=world.supplier, cost=COST_A),
             make_node(provider, "b", fakes[1].base_url, cost=COST_B, gpu=True),
             make_node(provider, "c", fakes[2].base_url, cost=COST_C)]
    model = Model.objects.create(name=MODEL, provider=provider, upstream_model="llama3.1:8b", max_output_tokens=4096)
    Price.objects.create(model=model, currency="RUB", input_per_1m=1000 * RUB, output_per_1m=2000 * RUB)
    app = ProxyApp()
    with ServerThread(build_application(app), free_port()) as server:
        yield Nodes(Gateway(world, server), fakes, nodes, provider, app)
    for fake in fakes:
        fake.reset()


def served(fakes) -> list[int]:
    return [sum(1 for r in fake.requests if r.path == "/v1/chat/completions") for fake in fakes]


def node_cost(cost, input_tokens, output_tokens) -> int:
    numerator = input_tokens * cost[0] + output_tokens * cost[1]
    return -(-numerator // cost[2])


def test_a_request_reaches_a_node_with_its_key_and_model(local):
    completion = local.gateway.client().chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=30)
    assert completion.model == MODEL and completion.choices[0].message.content
    (fake,) = [f for f in local.fakes if f.requests]
    request = fake.last_request
    assert request.headers["authorization"] == f"Bearer {DEFAULT_KEY}" and request.body["model"] == "llama3.1:8b"
    local.gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.node_id == local.nodes[local.fakes.index(fake)].pk and record.supplier_key_id is None
    assert record.attempts == [{"key": None, "node": record.node_id, "status": 200, "code": "", "ms": record.attempts[0]["ms"]}]


def test_idle_nodes_share_sequential_requests_evenly(local):
    client = local.gateway.client()
    for _ in range(6):
        client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=10)
    assert served(local.fakes) == [2, 2, 2]


def test_concurrent_slow_requests_go_to_the_least_outstanding_node(local):
    slow, fast1, fast2 = local.fakes
    slow.behavior(latency_ms=2500)
    fast1.behavior(latency_ms=200)
    fast2.behavior(latency_ms=200)
    client = local.gateway.async_client()

    def create():
        return asyncio.ensure_future(client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=10))

    async def scenario():
        first = [create() for _ in range(3)]
        while sum(task.done() for task in first) < 2:  # the fast nodes answered; the slow one still works
            await asyncio.sleep(0.02)
        assert served(local.fakes) == [1, 1, 1]  # one each: every node had nothing outstanding
        # The slow node still has its request; the fast ones are free: six more, two at a time, avoid it
        # (round-robin would have sent it two of them).
        for _ in range(3):
            await asyncio.gather(*(create() for _ in range(2)))
        assert served(local.fakes)[0] == 1
        await asyncio.gather(*first)

    asyncio.run(scenario())
    counts = served(local.fakes)
    assert counts[0] == 1 and counts[1] + counts[2] == 8 and min(counts[1:]) >= 3


def test_a_dead_node_is_skipped_and_the_request_succeeds(local):
    client = local.gateway.client()
    for _ in range(3):  # a, b, c once each
        client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=10)
    dead = make_node(local.provider, "dead", f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
    local.gateway.wait_config()
    for _ in range(4):  # the idle node picked least so far — the dead one — is tried first, once
        completion = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=10)
        assert completion.choices[0].message.content
    local.gateway.drain(expect=7)
    records = list(UsageRecord.objects.order_by("started_at"))
    assert all(r.status == "ok" and r.node_id != dead.pk for r in records)
    failed = [a for r in records for a in r.attempts if a["status"] != 200]
    assert [(a["node"], a["code"]) for a in failed] == [(dead.pk, "upstream_unreachable")]
    assert len(records[3].attempts) == 2  # the failover happened inside the request, before its first byte
    assert served(local.fakes) == [3, 2, 2]  # after its failure the dead node rests in the worker: not tried again


def test_the_health_task_marks_a_node_down_and_workers_stop_using_it(local):
    from apps.providers.models import LocalNode, NodeHealth
    from apps.providers.node_health import check_nodes

    extra = FakeOpenAI().start()
    try:
        node = make_node(local.provider, "d", extra.base_url)
        results = {r.node_id: r for r in check_nodes()}
        assert all(r.up for r in results.values()) and len(results) == 4
        assert LocalNode.objects.get(pk=node.pk).health == NodeHealth.UP
        assert [r.path for r in extra.requests] == ["/v1/models"]
        assert extra.requests[0].headers["authorization"] == f"Bearer {DEFAULT_KEY}"
        local.gateway.wait_config()
        client = local.gateway.client()
        for _ in range(4):
            client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=10)
        assert served([extra]) == [1]
    finally:
        extra.stop()
    results = {r.node_id: r for r in check_nodes()}
    assert not results[node.pk].up and all(r.up for pk, r in results.items() if pk != node.pk)
    node.refresh_from_db()
    assert node.health == NodeHealth.DOWN and node.health_error and node.health_checked_at is not None
    local.gateway.wait_config()
    for _ in range(6):
        client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=10)
    local.gateway.drain(expect=10)
    later = UsageRecord.objects.order_by("-started_at")[:6]
    assert all(len(r.attempts) == 1 and r.node_id != node.pk for r in later)  # never tried: not even a failed attempt


def test_every_node_down_answers_503_and_bills_nothing(local):
    from apps.providers.models import LocalNode, NodeHealth

    for node in LocalNode.objects.all():
        node.health = NodeHealth.DOWN
        node.save(update_fields=["health"])
    local.gateway.wait_config()
    from openai import APIStatusError

    with pytest.raises(APIStatusError) as caught:
        local.gateway.client().chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=10)
    assert caught.value.status_code == 503 and caught.value.body["code"] == "no_upstream_node"
    assert served(local.fakes) == [0, 0, 0]
    local.gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert (record.sell_cost, record.buy_cost) == (0, 0)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_record_carries_the_nodes_cost_to_the_micro_ruble(local, index):
    from apps.providers.models import LocalNode

    LocalNode.objects.exclude(pk=local.nodes[index].pk).update(is_active=False)
    local.reload()
    local.fakes[index].behavior(cached_tokens=4)
    completion = local.gateway.client().chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=40)
    usage = completion.usage
    local.gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    cost = (COST_A, COST_B, COST_C)[index]
    assert (record.input_tokens, record.output_tokens, record.cached_tokens) == (usage.prompt_tokens, usage.completion_tokens, 4)
    assert record.buy_cost == node_cost(cost, usage.prompt_tokens, usage.completion_tokens) > 0
    assert record.sell_cost == expected_cost(usage.prompt_tokens, usage.completion_tokens, price_in=1000 * RUB,
                                             price_out=2000 * RUB, fx=RUB, cached=4, price_cached=1000 * RUB)


def test_gpu_hour_cost_is_the_hour_shared_by_its_tokens(local):
    """250 RUB per GPU-hour at 1.3M tokens/hour: a request of i + o tokens costs
    ceil((i + o) × 250_000_000 / 1_300_000) micro-RUB — about 192.31 micro-RUB per token."""
    from apps.providers.models import LocalNode

    LocalNode.objects.exclude(pk=local.nodes[1].pk).update(is_active=False)
    local.reload()
    local.fakes[1].behavior(words=50)
    completion = local.gateway.client().chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=200)
    local.gateway.drain(expect=1)
    total = completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert UsageRecord.objects.get().buy_cost == -(-total * 250_000_000 // 1_300_000)
    assert LocalNode.objects.get(pk=local.nodes[1].pk).rate_per_1m == (192_307_693, 192_307_693)


def test_a_supplier_nodes_cost_accrues_to_its_payable_and_an_own_nodes_to_platform_hardware(local, world):
    from apps.billing import services as ledger
    from apps.providers.models import LocalNode

    client = local.gateway.client()
    for _ in range(3):  # one per node
        client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=20)
    local.gateway.drain(expect=3)
    by_node = {r.node_id: r for r in UsageRecord.objects.all()}
    assert set(by_node) == {n.pk for n in local.nodes}
    supplier_record = by_node[local.nodes[0].pk]
    payable = ledger.supplier_payable(world.supplier)
    buy = Transfer.objects.get(idempotency_id=f"usage:{supplier_record.request_id}:buy")
    assert (buy.credit_account_id, buy.amount, buy.kind) == (payable.pk, supplier_record.buy_cost, TransferKind.USAGE_COST)
    assert Account.objects.get(pk=payable.pk).posted_credits == supplier_record.buy_cost
    hardware = Account.objects.get(kind=AccountKind.PLATFORM_HARDWARE)
    own = [by_node[local.nodes[1].pk], by_node[local.nodes[2].pk]]
    assert hardware.posted_credits == sum(r.buy_cost for r in own) > 0
    upstream = Account.objects.get(kind=AccountKind.UPSTREAM_COST)
    assert upstream.posted_debits == sum(r.buy_cost for r in by_node.values())
    assert LocalNode.objects.filter(supplier=world.supplier).count() == 1


def test_streaming_through_a_node_with_the_sdk(local):
    client = local.gateway.client()
    chunks = list(client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=40, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None
    local.gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.stream and record.node_id is not None and record.output_tokens == chunks[-1].usage.completion_tokens
    index = [n.pk for n in local.nodes].index(record.node_id)
    assert record.buy_cost == node_cost((COST_A, COST_B, COST_C)[index], record.input_tokens, record.output_tokens)


def test_finished_requests_release_their_nodes(local):
    """Streams and whole answers alike give their node back when done: every count returns to 0."""
    client = local.gateway.client()
    for _ in range(4):
        list(client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=10, stream=True))
        client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=10)
    local.fakes[0].behavior(drop_after_chunks=1)  # a stream that breaks mid-way releases its node too
    for _ in range(3):
        try:
            list(client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=10, stream=True))
        except Exception:
            pass
    balancer = local.app.snapshots.nodes
    assert sum(served(local.fakes)) == 11
    assert balancer.outstanding() == {n.pk: 0 for n in local.nodes}


def test_outstanding_requests_are_published_for_the_admin(local):
    from apps.providers.node_health import outstanding_by_node

    for fake in local.fakes:
        fake.behavior(latency_ms=2500)
    client = local.gateway.async_client()

    async def scenario():
        running = [asyncio.ensure_future(client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=10))
                   for _ in range(4)]
        await asyncio.sleep(1.6)  # workers publish about once a second
        during = await asyncio.to_thread(outstanding_by_node)
        await asyncio.gather(*running)
        return during

    during = asyncio.run(scenario())
    assert sorted(during.get(n.pk, 0) for n in local.nodes) == [1, 1, 2]
    time.sleep(1.3)
    assert all(outstanding_by_node().get(n.pk, 0) == 0 for n in local.nodes)


def test_async_client_and_tools_through_a_node(local):
    client = local.gateway.async_client()

    async def call():
        return await client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=40, tools=TOOLS)

    completion = asyncio.run(call())
    assert completion.model == MODEL
    (fake,) = [f for f in local.fakes if f.requests]
    assert fake.last_request.body["tools"] == TOOLS


def test_a_careless_nodes_error_is_scrubbed_and_fails_over(local):
    from openai import APIStatusError

    local.fakes[0].behavior(status=500, error_body=leaky_error())
    client = local.gateway.client()
    for _ in range(3):
        client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=10)
    local.gateway.drain(expect=3)
    failed = [a for r in UsageRecord.objects.all() for a in r.attempts if a["status"] != 200]
    assert [a["node"] for a in failed] == [local.nodes[0].pk]  # once: then it rests
    # Every node failing with the leak: the client sees the gateway's words, never the key or the URL.
    for fake in local.fakes:
        fake.behavior(status=500, error_body=leaky_error())
    with pytest.raises(APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=10)
    text = str(caught.value.body) + str(caught.value.response.headers)
    assert caught.value.status_code >= 500
    assert DEFAULT_KEY not in text and "127.0.0.1" not in text and "sk-" not in text
