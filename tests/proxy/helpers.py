"""Shared helpers of the /v1 tests: raw posts, a priced chat call, expected costs."""

from __future__ import annotations

import httpx

from lib.money import cost_micro
from tests.proxy.conftest import RUB

GOOD = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


PROMPT = [{"role": "user", "content": "Count the coins in the vault"}]


def post(gateway, body, *, path="/chat/completions", secret=None, headers=None):
    raw = body if isinstance(body, bytes) else httpx.Request("POST", "http://x", json=body).content
    return httpx.post(gateway.base_url + path, content=raw, timeout=10,
                      headers={"Authorization": f"Bearer {secret or gateway.world.secret}", "Content-Type": "application/json",
                               **(headers or {})})


def chat(gateway, *, model="demo-chat", max_tokens=100, secret=None, headers=None, messages=PROMPT, timeout=30):
    return httpx.post(gateway.base_url + "/chat/completions", timeout=timeout,
                      json={"model": model, "messages": messages, "max_tokens": max_tokens},
                      headers={"Authorization": f"Bearer {secret or gateway.world.secret}", **(headers or {})})


def exact_mock(gateway):
    """Make the mock always write to max_tokens, so the actual cost equals the reservation."""
    provider = gateway.world.mock_model.provider
    provider.options = {"words": 2000}
    provider.save()
    gateway.wait_config()


def reservation_for(gateway, max_tokens=100) -> int:
    from decimal import Decimal

    from lib import tokenizer
    from lib.money import cost_micro

    prompt = tokenizer.count_chat_prompt(PROMPT)
    return cost_micro(tokens_by_price=[(prompt, 10 * RUB), (max_tokens, 20 * RUB)], fx_micro=RUB, coefficient=Decimal("1.25"))


def expected_cost(prompt_tokens: int, completion_tokens: int, *, price_in=150_000, price_out=600_000, fx=92_500_000,
                  coefficient="1.25", cached=0, price_cached=150_000) -> int:
    from decimal import Decimal

    return cost_micro(tokens_by_price=[(prompt_tokens - cached, price_in), (cached, price_cached), (completion_tokens, price_out)],
                      fx_micro=fx, coefficient=Decimal(coefficient))
