"""A real gateway for the proxy tests: uvicorn on loopback serving the ASGI app, a real
PostgreSQL test database, real Redis, and FakeOpenAI as the upstream. The official `openai`
SDK is the client.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from dataclasses import dataclass
from decimal import Decimal

import openai
import pytest
import redis as redis_lib
import uvicorn
from django.conf import settings
from django.utils import timezone

from tests.fakes.openai_upstream import DEFAULT_KEY, fake_openai, fake_openai_server  # noqa: F401 - fixtures

SECRET = "js-acme-ci-0123456789abcdef0123456789abcdef"
RUB = 1_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flush_gateway_keys() -> None:
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter("js:*", count=1000):
        client.delete(key)
    client.close()


class ServerThread:
    """uvicorn in a background thread (its own event loop), like a real worker."""

    def __init__(self, app, port: int) -> None:
        self.port = port
        config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio", lifespan="on", log_level="warning",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class World:
    company: object
    token: object
    secret: str
    provider: object
    key: object
    key2: object
    model: object
    mock_model: object
    embed_model: object
    supplier: object


def build_world(fake, *, top_up: int = 1000 * RUB, **token_fields) -> World:
    from apps.accounts.models import Company, Supplier
    from apps.billing import services as ledger
    from apps.billing.models import FxRate
    from apps.providers.models import Model, Price, Provider, SupplierKey
    from apps.proxy.models import ApiToken

    supplier = Supplier.objects.create(slug="north-keys", name="North Keys LLC")
    provider = Provider.objects.create(slug="openai-main", kind="openai", base_url=fake.base_url, internal=True)
    key = SupplierKey(supplier=supplier, provider=provider, name="nk-1", weight=2, buy_coefficient=Decimal("1.10"))
    key.set_secret(DEFAULT_KEY)
    key.save()
    key2 = SupplierKey(supplier=supplier, provider=provider, name="nk-2", weight=1, priority=1, buy_coefficient=Decimal("1.10"))
    key2.set_secret(DEFAULT_KEY)
    key2.save()
    model = Model.objects.create(name="gpt-4o-mini", provider=provider, upstream_model="gpt-4o-mini", max_output_tokens=4096)
    Price.objects.create(model=model, currency="USD", input_per_1m=150_000, output_per_1m=600_000)
    embed = Model.objects.create(name="text-embedding-3-small", provider=provider, upstream_model="text-embedding-3-small",
                                 modality="embedding")
    Price.objects.create(model=embed, currency="USD", input_per_1m=20_000, output_per_1m=0)
    FxRate.objects.create(currency="USD", rub_per_unit=92_500_000, valid_from=timezone.now() - dt.timedelta(days=1))
    mock = Provider.objects.create(slug="demo", kind="mock")
    mock_model = Model.objects.create(name="demo-chat", provider=mock, upstream_model="demo-chat", max_output_tokens=4096)
    Price.objects.create(model=mock_model, currency="RUB", input_per_1m=10 * RUB, output_per_1m=20 * RUB)
    company = Company.objects.create(slug="acme", name="Acme", sell_coefficient=Decimal("1.25"))
    if top_up:
        ledger.top_up(company=company, amount=top_up, idempotency_id=f"test-top-up-{company.pk}")
    token = ApiToken(company=company, name="ci", **token_fields)
    token.set_secret(SECRET)
    token.save()
    return World(company, token, SECRET, provider, key, key2, model, mock_model, embed, supplier)


class Gateway:
    def __init__(self, world: World, server: ServerThread) -> None:
        self.world = world
        self.server = server
        self.url = f"http://127.0.0.1:{server.port}"
        self.base_url = f"{self.url}/v1"

    def client(self, secret: str | None = None, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=secret or self.world.secret, max_retries=0, **kwargs)

    def async_client(self, secret: str | None = None, **kwargs) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=secret or self.world.secret, max_retries=0, **kwargs)

    def drain(self, *, expect: int | None = None, timeout: float = 10.0) -> int:
        """Run the meter writer until the stream is empty (and, if given, `expect` records exist)."""
        from apps.billing.models import UsageRecord
        from apps.proxy.metering import MeterWriter

        writer = MeterWriter(block_ms=50, consumer="test")
        writer.ensure_group()
        deadline = time.monotonic() + timeout
        while True:
            writer.run_once()
            done = writer.redis.xpending(writer_stream(), "meter")["pending"] == 0 and writer.run_once() == 0
            if done and (expect is None or UsageRecord.objects.count() >= expect):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"records did not arrive: {UsageRecord.objects.count()} of {expect}")
        writer.redis.close()
        return UsageRecord.objects.count()

    def wait_config(self) -> None:
        """Config changes reach workers by polling (≤ 0.2 s); wait for one poll cycle."""
        time.sleep(0.5)


def writer_stream() -> str:
    from apps.proxy import redis_scripts

    return redis_scripts.STREAM_KEY


@pytest.fixture
def world(transactional_db, fake_openai):  # noqa: F811
    flush_gateway_keys()
    yield build_world(fake_openai)
    flush_gateway_keys()


@pytest.fixture
def gateway(world):
    from apps.proxy.pipeline.app import ProxyApp
    from jetstream.asgi import build_application

    with ServerThread(build_application(ProxyApp()), free_port()) as server:
        yield Gateway(world, server)
