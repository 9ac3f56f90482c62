"""The upstreams of the dialect × adapter matrix (``tests/proxy/test_dialect_matrix.py``): one provider
of each kind at its fake (internal, loopback), one supplier key each, a chat model with its price,
and the fake's behaviour that makes its usage interesting (cache reads wherever the provider has them).

``ADAPTERS`` maps an adapter kind to an ``Upstream``: the public model name, the price (per 1M tokens,
micro-units of ``currency``; ``fx`` the micro-rubles per unit) and what to set on the fake before a case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from tests.fakes import anthropic_upstream, gemini_upstream, yandex_upstream
from tests.fakes.gigachat_upstream import DEFAULT_AUTH_KEY, DEFAULT_SCOPE, FakeGigaChat
from tests.proxy.conftest import RUB
from tests.proxy.helpers import expected_cost

USD = 92_500_000  # micro-rubles per dollar in build_world's FxRate
TOOL_NAME = "get_weather"


@dataclass(frozen=True)
class Upstream:
    """One matrix column: how the adapter's provider is configured and how its fake behaves."""

    kind: str
    model: str  # the public name clients use
    upstream_model: str
    currency: str
    price_in: int  # micro-units of currency per 1M tokens
    price_out: int
    price_cached: int
    fx: int  # micro-rubles per unit of currency
    behavior: dict[str, Any] = field(default_factory=dict)  # set on the fake before each case
    tool_behavior: dict[str, Any] = field(default_factory=dict)  # and for the tool round trip
    options: Callable[[Any], dict] = lambda fake: {}
    base_url: Callable[[Any], str] = lambda fake: fake.base_url

    def cost(self, prompt: int, completion: int, cached: int, *, coefficient: str = "1.25") -> int:
        """The exact cost in micro-rubles of this usage at this price (sell at 1.25, buy at 1.10)."""
        return expected_cost(prompt, completion, cached=cached, price_in=self.price_in, price_out=self.price_out,
                             price_cached=self.price_cached, fx=self.fx, coefficient=coefficient)


ADAPTERS: dict[str, Upstream] = {
    # build_world's provider and model (gpt-4o-mini: no cached price → cached input at the input price).
    "openai": Upstream("openai", "gpt-4o-mini", "gpt-4o-mini", "USD", 150_000, 600_000, 150_000, USD,
                       behavior={"cached_tokens": 4}),
    "anthropic": Upstream("anthropic", "claude-sonnet", "claude-sonnet-4-5-20250929", "USD", 3_000_000, 15_000_000, 300_000, USD,
                          behavior={"cache_read": 40, "cache_creation": 200}),  # writes: inside input, billed as input
    "gemini": Upstream("gemini", "gemini-flash", "gemini-2.5-flash", "USD", 300_000, 2_500_000, 30_000, USD,
                       behavior={"cached_tokens": 3}),
    "gigachat": Upstream("gigachat", "giga-max", "GigaChat-2-Max", "RUB", 500 * RUB, 1500 * RUB, 0, RUB,
                         behavior={"precached_tokens": 2},
                         options=lambda fake: {"auth_url": fake.auth_url, "scope": DEFAULT_SCOPE}),
    "yandexgpt": Upstream("yandexgpt", "yandexgpt-lite", "yandexgpt-lite/latest", "RUB", 200 * RUB, 200 * RUB, 200 * RUB, RUB,
                          tool_behavior={"tool_call": {"name": TOOL_NAME, "arguments": {"city": "Москва"}}},
                          options=lambda fake: {"folder_id": yandex_upstream.FOLDER},
                          base_url=lambda fake: fake.native_url),
}

KEYS = {"anthropic": anthropic_upstream.DEFAULT_KEY, "gemini": gemini_upstream.DEFAULT_KEY, "gigachat": DEFAULT_AUTH_KEY,
        "yandexgpt": yandex_upstream.API_KEY}


@pytest.fixture(scope="module")
def fake_gigachat_module():
    """One FakeGigaChat for the module (its package has no session fixture)."""
    with FakeGigaChat() as fake:
        yield fake


@pytest.fixture
def fakes(fake_openai, fake_anthropic, fake_gemini, fake_yandex, fake_gigachat_module) -> dict[str, Any]:
    """Every fake, reset before and after the test, by adapter kind."""
    fake_gigachat_module.reset()
    yield {"openai": fake_openai, "anthropic": fake_anthropic, "gemini": fake_gemini, "gigachat": fake_gigachat_module,
           "yandexgpt": fake_yandex}
    fake_gigachat_module.reset()


@pytest.fixture
def upstreams(world, fakes) -> dict[str, Any]:
    """A provider, key, model and price per adapter other than openai (build_world made that one), at its fake."""
    from apps.providers.models import Model, Price, Provider, SupplierKey

    for kind, up in ADAPTERS.items():
        if kind == "openai":
            continue
        fake = fakes[kind]
        provider = Provider.objects.create(slug=f"matrix-{kind}", kind=kind, base_url=up.base_url(fake), internal=True,
                                           options=up.options(fake))
        key = SupplierKey(supplier=world.supplier, provider=provider, name=f"mx-{kind}", buy_coefficient=Decimal("1.10"))
        key.set_secret(KEYS[kind])
        key.save()
        model = Model.objects.create(name=up.model, provider=provider, upstream_model=up.upstream_model, context_window=100_000,
                                     max_output_tokens=2000)
        Price.objects.create(model=model, currency=up.currency, input_per_1m=up.price_in, output_per_1m=up.price_out,
                             cached_input_per_1m=up.price_cached)
    return fakes
