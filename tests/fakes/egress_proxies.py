"""Egress proxies for tests: a small HTTP proxy (CONNECT tunnels and absolute-form forwarding) and a
small SOCKS5 proxy, each an asyncio server on an ephemeral loopback port in a background thread.

- ``FakeHttpProxy``: RFC 9110 §9.3.6 ``CONNECT host:port`` (answers ``200 Connection established``
  and pipes bytes), or an absolute-form request (``POST http://host:port/path``, RFC 9112 §3.2.2)
  forwarded to that host with the ``Proxy-Authorization`` header removed. With ``credentials`` a
  request without ``Proxy-Authorization: Basic base64(user:password)`` gets ``407``.
- ``FakeSocks5Proxy``: RFC 1928 (``CONNECT`` only, IPv4 / domain / IPv6 addresses) with RFC 1929
  username/password authentication when ``credentials`` is set (method 0x02, else 0x00).

Both resolve host names through ``hosts`` (name → address) first — so a test can give a provider an
unresolvable public-looking name that only the proxy knows — and record every onward target in
``targets`` ((host, port), as asked) and every accepted client connection in ``connections``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import struct
import threading
from collections.abc import Mapping


class _ProxyThread:
    """An asyncio server on 127.0.0.1:<ephemeral> in its own thread; subclasses implement ``_handle``."""

    scheme = ""

    def __init__(self, *, credentials: tuple[str, str] | None = None, hosts: Mapping[str, str] | None = None) -> None:
        self.credentials = credentials
        self.hosts = dict(hosts or {})
        self.targets: list[tuple[str, int]] = []
        self.connections = 0
        self.refused_auth = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The proxy's URL, credentials included."""
        auth = f"{self.credentials[0]}:{self.credentials[1]}@" if self.credentials else ""
        return f"{self.scheme}://{auth}127.0.0.1:{self.port}"

    def start(self) -> _ProxyThread:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-{self.scheme}-proxy", daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        """Close the listening socket: new connections are refused (a dead egress); the port is kept."""
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def close() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = self._server = None

    def __enter__(self) -> _ProxyThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _address_of(self, host: str) -> str:
        return self.hosts.get(host, host)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError, asyncio.CancelledError):
            pass  # a client that left, or ``stop``
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _splice(client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                  upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    await asyncio.gather(_pipe(client[0], upstream[1]), _pipe(upstream[0], client[1]))


class FakeHttpProxy(_ProxyThread):
    """An HTTP forward proxy: ``CONNECT`` tunnels (counted in ``tunnels``) and absolute-form requests
    (see the module docstring)."""

    scheme = "http"
    tunnels = 0

    def _authorized(self, head: list[str]) -> bool:
        if self.credentials is None:
            return True
        wanted = "Basic " + base64.b64encode(f"{self.credentials[0]}:{self.credentials[1]}".encode()).decode()
        return any(line.split(":", 1)[0].strip().lower() == "proxy-authorization" and line.split(":", 1)[1].strip() == wanted
                   for line in head[1:])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = await reader.readuntil(b"\r\n\r\n")
        head = raw.decode("latin-1").split("\r\n")[:-2]
        method, target, _version = head[0].split(" ", 2)
        if not self._authorized(head):
            self.refused_auth += 1
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"fake\"\r\n"
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        if method == "CONNECT":
            self.tunnels += 1
            host, _, port = target.rpartition(":")
            self.targets.append((host.strip("[]"), int(port)))
            upstream = await asyncio.open_connection(self._address_of(host.strip("[]")), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _splice((reader, writer), upstream)
            return
        authority = target.split("://", 1)[1].split("/", 1)[0]
        host, _, port = authority.rpartition(":") if authority.count(":") == 1 else (authority, "", "80")
        self.targets.append((host, int(port)))
        upstream = await asyncio.open_connection(self._address_of(host), int(port))
        kept = [line for line in head if line.split(":", 1)[0].strip().lower() != "proxy-authorization"]
        upstream[1].write(("\r\n".join(kept) + "\r\n\r\n").encode("latin-1"))
        await upstream[1].drain()
        await _splice((reader, writer), upstream)


class FakeSocks5Proxy(_ProxyThread):
    """A SOCKS5 proxy (RFC 1928, ``CONNECT``; RFC 1929 username/password when ``credentials``)."""

    scheme = "socks5"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        wanted = 0x02 if self.credentials else 0x00
        if version != 5 or wanted not in methods:
            writer.write(b"\x05\xff")
            await writer.drain()
            return
        writer.write(bytes([5, wanted]))
        await writer.drain()
        if self.credentials and not await self._authenticate(reader, writer):
            return
        _version, command, _reserved, kind = await reader.readexactly(4)
        host = await self._read_address(reader, kind)
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        if command != 1:
            writer.write(b"\x05\x07\x00\x01" + bytes(6))  # command not supported
            await writer.drain()
            return
        self.targets.append((host, port))
        try:
            upstream = await asyncio.open_connection(self._address_of(host), port)
        except OSError:
            writer.write(b"\x05\x05\x00\x01" + bytes(6))  # connection refused
            await writer.drain()
            return
        writer.write(b"\x05\x00\x00\x01" + bytes(6))
        await writer.drain()
        await _splice((reader, writer), upstream)

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        assert self.credentials is not None
        _version, length = await reader.readexactly(2)
        user = (await reader.readexactly(length)).decode()
        (length,) = await reader.readexactly(1)
        password = (await reader.readexactly(length)).decode()
        ok = (user, password) == self.credentials
        writer.write(b"\x01\x00" if ok else b"\x01\x01")
        await writer.drain()
        if not ok:
            self.refused_auth += 1
        return ok

    @staticmethod
    async def _read_address(reader: asyncio.StreamReader, kind: int) -> str:
        if kind == 1:
            return str(ipaddress.IPv4Address(await reader.readexactly(4)))
        if kind == 4:
            return str(ipaddress.IPv6Address(await reader.readexactly(16)))
        (length,) = await reader.readexactly(1)
        return (await reader.readexactly(length)).decode()


def dead_proxy_url(scheme: str = "http") -> str:
    """The URL of a loopback port nothing listens on (connections are refused at once)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"{scheme}://dead:proxy-pass@127.0.0.1:{port}"
