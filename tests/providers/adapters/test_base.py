"""The adapter seam's authentication: a static key, and a key exchanged for a cached token."""

from __future__ import annotations

import asyncio
import time

from apps.providers.adapters.base import Auth, CachedTokenAuth, Credential, UpstreamFailure


class CountingExchange(CachedTokenAuth):
    """Like GigaChat's OAuth or Yandex's IAM exchange, without the network: counts exchanges."""

    def __init__(self, *, lifetime: float = 1800.0, fail: bool = False) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.lifetime = lifetime
        self.fail = fail

    async def exchange(self, credential, http):
        self.calls.append(credential.key_id)
        await asyncio.sleep(0.01)
        if self.fail:
            raise UpstreamFailure(502, "The upstream provider rejected the gateway's credentials.", code="upstream_auth_failed",
                                  failover=True)
        return f"access-{credential.key_id}-{len(self.calls)}", time.time() + self.lifetime


def test_a_static_key_is_sent_as_a_bearer_token():
    headers = asyncio.run(Auth().headers(Credential(1, "sk-abc"), None))
    assert headers == {"Authorization": "Bearer sk-abc"}


def test_concurrent_requests_share_one_exchange_per_key_and_reuse_the_token():
    auth = CountingExchange()

    async def run():
        first = await asyncio.gather(*(auth.headers(Credential(7, "secret"), None) for _ in range(20)))
        other = await auth.headers(Credential(8, "secret-2"), None)
        again = await auth.headers(Credential(7, "secret"), None)
        return first, other, again

    first, other, again = asyncio.run(run())
    assert auth.calls == [7, 8]
    assert {h["Authorization"] for h in first} == {"Bearer access-7-1"} == {again["Authorization"]}
    assert other == {"Authorization": "Bearer access-8-2"}


def test_a_token_near_its_expiry_is_exchanged_again_and_a_forgotten_one_too():
    auth = CountingExchange(lifetime=30.0)  # inside the 60 s refresh margin: never reused

    async def run():
        await auth.headers(Credential(1, "s"), None)
        await auth.headers(Credential(1, "s"), None)

    asyncio.run(run())
    assert auth.calls == [1, 1]
    fresh = CountingExchange()
    asyncio.run(fresh.headers(Credential(1, "s"), None))
    fresh.forget(1)
    asyncio.run(fresh.headers(Credential(1, "s"), None))
    assert fresh.calls == [1, 1]


def test_a_failed_exchange_reaches_every_waiter_and_the_next_request_tries_again():
    auth = CountingExchange(fail=True)

    async def run():
        return await asyncio.gather(*(auth.headers(Credential(3, "s"), None) for _ in range(5)), return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, UpstreamFailure) for r in results) and auth.calls == [3]
    auth.fail = False
    assert asyncio.run(auth.headers(Credential(3, "s"), None)) == {"Authorization": "Bearer access-3-2"}


def test_a_caller_that_gives_up_does_not_cancel_the_exchange_others_wait_for():
    # The first caller's own time limit fires mid-exchange: the others still get the token.
    auth = CountingExchange()

    async def run():
        first = asyncio.ensure_future(auth.headers(Credential(7, "secret"), None))
        await asyncio.sleep(0)
        others = [asyncio.ensure_future(auth.headers(Credential(7, "secret"), None)) for _ in range(3)]
        await asyncio.sleep(0)
        first.cancel()
        return first, await asyncio.gather(*others)

    first, others = asyncio.run(run())
    assert first.cancelled() and auth.calls == [7]
    assert {h["Authorization"] for h in others} == {"Bearer access-7-1"}


def test_an_exchange_that_never_answers_times_out_for_everyone_and_is_tried_anew():
    class Hanging(CountingExchange):
        exchange_timeout = 0.05

        async def exchange(self, credential, http):
            self.calls.append(credential.key_id)
            if len(self.calls) == 1:
                await asyncio.sleep(10)
            return "fresh", time.time() + 60

    auth = Hanging()

    async def run():
        results = await asyncio.gather(*(auth.headers(Credential(7, "s"), None) for _ in range(3)), return_exceptions=True)
        return results, await auth.headers(Credential(7, "s"), None)

    results, later = asyncio.run(run())
    assert all(isinstance(r, UpstreamFailure) and r.code == "upstream_timeout" for r in results)
    assert later == {"Authorization": "Bearer fresh"} and auth.calls == [7, 7]


def test_a_supplier_key_never_shows_in_a_repr():
    from apps.proxy.snapshot import KeyRoute

    assert "sk-abc-secret" not in repr(Credential(1, "sk-abc-secret"))
    assert "sk-abc-secret" not in repr(KeyRoute(1, 2, "sk-abc-secret", 1, 0, 10_000))
