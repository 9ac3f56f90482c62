"""/v1/models and /v1/key."""

from __future__ import annotations

import httpx

from tests.proxy.conftest import RUB


def test_it_lists_only_the_models_the_token_may_use(gateway):
    token = gateway.world.token
    assert {m.id for m in gateway.client().models.list()} == {"gpt-4o-mini", "text-embedding-3-small", "demo-chat"}
    token.models_allow = ["gpt-4o-mini", "demo-chat"]
    token.models_deny = ["demo-chat"]
    token.save()
    gateway.wait_config()
    assert [m.id for m in gateway.client().models.list()] == ["gpt-4o-mini"]
    assert gateway.client().models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"


def test_it_reports_the_key_like_openrouter(gateway):
    token = gateway.world.token
    token.limit_total, token.limit_monthly, token.rpm = 100 * RUB, 50 * RUB, 600
    token.save()
    gateway.wait_config()
    gateway.client().chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "hi"}])
    info = httpx.get(f"{gateway.base_url}/key", headers={"Authorization": f"Bearer {gateway.world.secret}"}).json()["data"]
    spent = info["limits"]["total"]["spent"]
    assert info["label"] == "ci" and info["limit"] == "100.000000" and spent != "0.000000"
    assert info["limits"]["monthly"]["limit"] == "50.000000" and info["limits"]["monthly"]["resets_at"].endswith("+03:00")
    assert info["rate_limit"]["requests_per_minute"] == 600 and info["rate_limit"]["requests_remaining"] == 599
    from decimal import Decimal

    assert Decimal(info["company_balance"]["available"]) == Decimal(1000) - Decimal(spent)
    assert Decimal(info["limit_remaining"]) == Decimal(100) - Decimal(spent)
