"""A stale FX rate through the real gateway: a model priced in that currency is refused with 503
``fx_rate_stale`` naming the currency and the rate's date, never priced at the old rate; a fresh
(or restated) rate lets it through again, priced at that rate."""

from __future__ import annotations

import datetime as dt

import openai
import pytest
from django.utils import timezone

from apps.billing import fx
from apps.billing.models import FxRate, UsageRecord
from lib.money import cost_micro
from tests.proxy.helpers import chat


@pytest.fixture
def stale_gateway(request, settings, world):
    # The world's USD rate is a day old; 12 hours is the limit here. Set before the gateway loads its routes.
    settings.JETSTREAM_FX_MAX_AGE_HOURS = 12
    return request.getfixturevalue("gateway")


def test_a_model_priced_in_a_currency_with_a_stale_rate_is_refused(stale_gateway, fake_openai):
    rate_date = timezone.localdate(FxRate.objects.get(currency="USD").valid_from).isoformat()

    with pytest.raises(openai.APIStatusError) as caught:
        stale_gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

    assert caught.value.status_code == 503
    error = caught.value.body
    assert error["code"] == "fx_rate_stale"
    assert "USD" in error["message"] and rate_date in error["message"] and "gpt-4o-mini" in error["message"]
    assert fake_openai.requests == []  # never sent upstream, so never priced at the old rate
    assert chat(stale_gateway, model="demo-chat").status_code == 200  # a ruble-priced model is unaffected
    stale_gateway.drain(expect=2)
    refused = UsageRecord.objects.get(model_name="gpt-4o-mini")
    assert (refused.http_status, refused.error_code, refused.sell_cost) == (503, "fx_rate_stale", 0)


def test_a_restated_or_new_rate_lets_it_through_at_that_rate(stale_gateway, fake_openai, world):
    # The source restates the same rate today: no new version, but no longer stale.
    outcome = fx.set_fx_rate(currency="USD", rub_per_unit=92_500_000, valid_from=timezone.now())
    assert not outcome.changed and FxRate.objects.count() == 1
    stale_gateway.wait_config()

    first = stale_gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert first.choices[0].message.content

    fx.set_fx_rate(currency="USD", rub_per_unit=80_000_000, valid_from=timezone.now() - dt.timedelta(seconds=1))
    stale_gateway.wait_config()
    stale_gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

    stale_gateway.drain(expect=2)
    records = list(UsageRecord.objects.filter(model_name="gpt-4o-mini").order_by("started_at"))
    assert [r.fx_rub_per_unit for r in records] == [92_500_000, 80_000_000]
    for record in records:
        expected = cost_micro(tokens_by_price=[(record.input_tokens - record.cached_tokens, 150_000), (record.cached_tokens, 150_000),
                                               (record.output_tokens, 600_000)],
                              fx_micro=record.fx_rub_per_unit, coefficient=world.company.sell_coefficient)
        assert record.status == "ok" and record.sell_cost == expected > 0
