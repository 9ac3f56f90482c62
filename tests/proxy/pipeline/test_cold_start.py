"""A cold worker: concurrent first requests of one token share one load of its spend counters."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.conf import settings

from apps.proxy.pipeline.spend import SpendCounters
from apps.proxy.snapshot import SnapshotCache, _load_token
from lib.resp import Redis


class CountingSnapshots(SnapshotCache):
    """The real snapshot cache and loader thread, counting the loads it runs."""

    def __init__(self, redis) -> None:
        super().__init__(redis)
        self.loads: list[str] = []

    async def run_in_loader(self, func, *args):
        self.loads.append(func.__name__)
        return await super().run_in_loader(func, *args)


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_first_requests_seed_the_counters_once(world):
    token = _load_token(world.token.key_hash)

    async def run():
        redis = Redis(settings.REDIS_URL)
        snapshots = CountingSnapshots(redis)
        counters = SpendCounters(redis, snapshots, reservation_ttl=60)
        keys = counters.keys_for(token, time.time())
        try:
            await asyncio.gather(*(counters.seed(token, keys) for _ in range(50)))
            values = await redis.execute("HMGET", keys.co, "cr", "db", "out")
            total = await redis.execute("GET", keys.total)
            await counters.seed(token, keys)  # a later miss loads again (nothing stays cached in the worker)
        finally:
            await snapshots.stop()  # closes the loader thread's database connection
            await redis.close()
        return snapshots.loads, values, total

    loads, (credits, debits, out), total = asyncio.run(run())
    assert loads == ["load_initial_counters", "load_initial_counters"]
    assert int(credits) == 1000 * 1_000_000 and int(debits) == 0 and int(out) == 0 and int(total) == 0


def test_the_routes_name_the_tokenizer_tables_a_worker_loads_at_start():
    from types import SimpleNamespace

    from apps.proxy.snapshot import encodings_for
    from lib import tokenizer

    routes = [SimpleNamespace(modality="chat", upstream_model="gpt-4o-mini"), SimpleNamespace(modality="chat", upstream_model="bench-chat")]
    assert encodings_for(routes) == {tokenizer.O200K, tokenizer.CL100K}
    assert encodings_for([SimpleNamespace(modality="chat", upstream_model="gpt-5")]) == {tokenizer.O200K}
    assert encodings_for([SimpleNamespace(modality="embedding", upstream_model="text-embedding-3-small")]) == {tokenizer.CL100K}
    assert encodings_for([]) == set()
