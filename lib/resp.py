"""A small pipelined Redis client for the proxy hot path.

Why not redis-py's asyncio client: its per-command Python overhead is several times the
0.15 ms round-trip budget the architecture page measures. Here every command is written to
one connection at once and replies (in order, as Redis guarantees) resolve a FIFO of futures,
so concurrent requests share round trips (natural pipelining) with no batching timer and no
lock. Replies are parsed by hiredis. Errors come back as ``RedisReplyError`` on the caller's
future; a broken connection fails every waiting future and the next call reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from typing import cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis


class RedisReplyError(Exception):
    """An error reply from Redis (``ERR …``, ``NOSCRIPT …``), raised on the caller's future."""
    pass


class RedisConnectionError(ConnectionError):
    """Redis cannot be reached, or the connection broke with the command's reply outstanding."""
    pass


def _encode(args: tuple) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        else:
            raise TypeError(f"unsupported Redis argument type {type(arg).__name__}")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=RedisReplyError)
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport commands are written to."""
        # Only ever made by create_connection / create_unix_connection: a stream (read-write) transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Feed hiredis; each complete reply resolves the oldest waiting future (a reply to a cancelled
        caller is dropped), a ``RedisReplyError`` reply as its exception."""
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            waiter = self.waiters.popleft()
            if waiter.done():
                continue
            if isinstance(reply, RedisReplyError):
                waiter.set_exception(reply)
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc) -> None:
        """Mark the connection closed and fail every waiting future with ``RedisConnectionError``."""
        self.closed = True
        error = RedisConnectionError(f"Redis connection lost: {exc}")
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)


class Redis:
    """The pipelined asyncio Redis client (see the module docstring), one connection per instance.

    ``url``: ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS) or
    ``unix:///path/to.sock?db=N``; ``connect_timeout`` in seconds. It connects on the first command
    and reconnects on the command after a broken connection (concurrent callers share one attempt).
    """

    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self._unix_path = unquote(parts.path) if parts.scheme == "unix" else None
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._password = unquote(parts.password) if parts.password else None
        self._username = unquote(parts.username) if parts.username else None
        if self._unix_path:
            self._db = int(query.get("db", ["0"])[0])
        else:
            self._db = int((parts.path or "/0").lstrip("/") or 0)
        self._ssl = parts.scheme == "rediss"
        self._timeout = connect_timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._scripts: dict[bytes, bytes] = {}

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._unix_path:
            coro = loop.create_unix_connection(_Protocol, self._unix_path)
        else:
            coro = loop.create_connection(_Protocol, self._host, self._port, ssl=self._ssl or None)
        try:
            _, proto = await asyncio.wait_for(coro, self._timeout)
        except (TimeoutError, OSError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from None
        if self._password:
            auth = ("AUTH", self._username, self._password) if self._username else ("AUTH", self._password)
            await self._send(proto, auth)
        if self._db:
            await self._send(proto, ("SELECT", self._db))
        return proto

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.closed:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            proto = await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None
        self._proto = proto
        return proto

    @staticmethod
    def _send(proto: _Protocol, args: tuple) -> asyncio.Future:
        # Encode before queueing the waiter: an argument that cannot be encoded (TypeError) must not
        # leave a waiter behind, or every later reply on this connection would go to the wrong caller.
        payload = _encode(args)
        waiter = asyncio.get_running_loop().create_future()
        proto.waiters.append(waiter)
        # Every proto passed here came back from create_*_connection, which calls connection_made first.
        assert proto.transport is not None, "protocol used before connection_made"
        proto.transport.write(payload)
        return waiter

    async def execute(self, *args):
        """Send one command (``str``, ``bytes`` or ``int`` arguments) and return hiredis' reply (bytes,
        int, list or None). Raises ``RedisReplyError`` for an error reply, ``RedisConnectionError`` when
        Redis cannot be reached or the connection breaks, ``TypeError`` for another argument type."""
        proto = self._proto
        if proto is None or proto.closed:
            proto = await self._connection()
        return await self._send(proto, args)

    def register_script(self, source: str) -> bytes:
        """Remember a Lua script for ``evalsha`` and return its SHA1 (hex, bytes); nothing is sent to Redis."""
        body = source.encode()
        sha = hashlib.sha1(body).hexdigest().encode()
        self._scripts[sha] = body
        return sha

    async def evalsha(self, sha: bytes, keys: list | tuple, args: list | tuple):
        """Run a ``register_script`` script with ``keys`` and ``args`` and return its reply. On ``NOSCRIPT``
        (Redis restarted or flushed its scripts) the script is loaded and run once more; raises as ``execute``."""
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            await self.execute("SCRIPT", "LOAD", self._scripts[sha])
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    async def close(self) -> None:
        """Close the connection; replies still outstanding fail with ``RedisConnectionError``, the next command reconnects."""
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
