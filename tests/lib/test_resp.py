"""The hot path's pipelined Redis client against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
from django.conf import settings

from lib.resp import Redis, RedisReplyError


def test_a_bad_argument_leaves_the_connection_answering_the_right_callers():
    async def run():
        client = Redis(settings.REDIS_URL)
        try:
            assert await client.execute("PING") == b"PONG"
            with pytest.raises(TypeError):
                await client.execute("ECHO", object())
            # Replies still pair with their commands: nothing was queued for the refused one.
            replies = await asyncio.gather(*(client.execute("ECHO", f"m{i}") for i in range(20)))
            assert replies == [f"m{i}".encode() for i in range(20)]
            with pytest.raises(RedisReplyError):
                await client.execute("NO-SUCH-COMMAND")
            assert await client.execute("ECHO", "after") == b"after"
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(run(), 5))  # a misrouted reply would leave a caller waiting forever
