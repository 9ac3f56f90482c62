"""FakeFeed: a real HTTP server on loopback that serves price and FX documents, for tests.

aiohttp in a background thread on 127.0.0.1 (ephemeral port). ``serve(path, body, status=200,
content_type=...)`` publishes bytes at a path; every GET is recorded. The Bank of Russia's
``/scripts/XML_daily.asp`` is served as ``application/xml; charset=windows-1251`` like the real one.

    with FakeFeed() as feed:
        feed.serve("/scripts/XML_daily.asp", cbr_daily(date(2026, 11, 28), usd="79,5000"))
        update_fx_rates(source=feed.url("/scripts/XML_daily.asp"))

``cbr_daily`` builds a document in the real shape: windows-1251, comma decimals, ``Nominal``
(CNY at 10 and JPY at 100 here, so per-unit conversion is exercised), ``VunitRate``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading

import pytest
from aiohttp import web

CBR_PATH = "/scripts/XML_daily.asp"


def cbr_daily(date: dt.date, *, usd: str = "79,0000", eur: str = "92,1234", cny_per_10: str = "109,1234",
              jpy_per_100: str = "52,3456", vunit: bool = True, extra: str = "") -> bytes:
    """A Bank of Russia XML_daily document for ``date`` (``Value`` strings as the bank writes them)."""
    def valute(vid: str, num: str, code: str, nominal: int, name: str, value: str) -> str:
        per_unit = f"<VunitRate>{_per_unit(value, nominal)}</VunitRate>" if vunit else ""
        return (f'<Valute ID="{vid}"><NumCode>{num}</NumCode><CharCode>{code}</CharCode><Nominal>{nominal}</Nominal>'
                f"<Name>{name}</Name><Value>{value}</Value>{per_unit}</Valute>")
    body = "".join([
        valute("R01010", "036", "AUD", 1, "Австралийский доллар", "51,7003"),
        valute("R01235", "840", "USD", 1, "Доллар США", usd),
        valute("R01239", "978", "EUR", 1, "Евро", eur),
        valute("R01375", "156", "CNY", 10, "Китайских юаней", cny_per_10),
        valute("R01820", "392", "JPY", 100, "Японских иен", jpy_per_100),
    ])
    text = (f'<?xml version="1.0" encoding="windows-1251"?>\n'
            f'<ValCurs Date="{date:%d.%m.%Y}" name="Foreign Currency Market">{body}{extra}</ValCurs>')
    return text.encode("windows-1251")


def _per_unit(value: str, nominal: int) -> str:
    from decimal import Decimal

    per_unit = (Decimal(value.replace(",", ".")) / nominal).normalize()
    return format(per_unit, "f").replace(".", ",")


class FakeFeed:
    """A loopback HTTP server publishing documents at paths (404 elsewhere)."""

    def __init__(self) -> None:
        self._documents: dict[str, tuple[int, bytes, str]] = {}
        self.requests: list[str] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = CBR_PATH) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes, *, status: int = 200, content_type: str | None = None) -> str:
        """Publish ``body`` at ``path``; returns its URL."""
        if content_type is None:
            content_type = "application/xml; charset=windows-1251" if path == CBR_PATH else "application/json"
        self._documents[path] = (status, body, content_type)
        return self.url(path)

    def reset(self) -> None:
        self._documents.clear()
        self.requests.clear()

    def start(self) -> FakeFeed:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fake-feed", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake feed did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeFeed:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        if request.path not in self._documents:
            return web.Response(status=404, text="not found")
        status, body, content_type = self._documents[request.path]
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})


@pytest.fixture(scope="session")
def fake_feed_server():
    with FakeFeed() as feed:
        yield feed


@pytest.fixture
def fake_feed(fake_feed_server: FakeFeed):
    fake_feed_server.reset()
    yield fake_feed_server
    fake_feed_server.reset()
