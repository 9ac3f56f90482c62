"""Failover between providers: fallback chains, routing strategies, data residency, outages ramping back.

The requested model is ``gpt-4o-mini`` on the fake OpenAI upstream; its fallback is ``demo-chat`` on
the in-process mock provider (priced in RUB), so which one answered shows in the answer, the
headers, the usage record's model and its price.
"""

from __future__ import annotations

import pytest

from apps.billing.models import UsageRecord
from apps.providers.models import Model, Price, Provider
from apps.proxy.pipeline.context import Candidate
from apps.proxy.pipeline.routing import ProviderHealth
from apps.proxy.pipeline.spend import price
from apps.proxy.snapshot import ModelRoute
from tests.proxy.helpers import GOOD, post


def fall_back_to_demo(gateway, **fields) -> None:
    model = gateway.world.model
    model.fallbacks = ["demo-chat"]
    for name, value in fields.items():
        setattr(model, name, value)
    model.save()
    gateway.wait_config()


def test_a_failing_model_falls_back_to_the_next_one_in_its_chain(gateway, fake_openai):
    fall_back_to_demo(gateway)
    fake_openai.behavior(status=500)

    response = post(gateway, {**GOOD, "max_tokens": 20})

    assert response.status_code == 200, response.text
    assert response.json()["model"] == "demo-chat"
    assert (response.headers["x-jetstream-model"], response.headers["x-jetstream-provider"]) == ("demo-chat", "demo")
    assert len(fake_openai.requests) == 2  # both supplier keys of the first provider were tried first
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    world = gateway.world
    assert (record.status, record.model_id, record.provider_id, record.supplier_key_id) == \
        ("ok", world.mock_model.pk, world.mock_model.provider_id, None)
    # Priced at the mock's RUB price (10 / 20 RUB per 1M) × the company's 1.25, not gpt-4o-mini's.
    expected = (record.input_tokens * 10_000_000 + record.output_tokens * 20_000_000) * 125 // 100 // 1_000_000
    assert abs(record.sell_cost - expected) <= 1 and record.sell_cost > 0


def test_a_stream_falls_back_and_names_the_model_that_answered(gateway, fake_openai):
    fall_back_to_demo(gateway)
    fake_openai.behavior(status=503)

    chunks = list(gateway.client().chat.completions.create(**GOOD, max_tokens=20, stream=True))

    assert chunks and {chunk.model for chunk in chunks} == {"demo-chat"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    gateway.drain(expect=1)
    assert UsageRecord.objects.get().model_id == gateway.world.mock_model.pk


def test_a_request_error_is_answered_without_trying_the_fallback(gateway, fake_openai):
    fall_back_to_demo(gateway)
    fake_openai.behavior(status=400, error_body={"error": {"message": "Unsupported parameter: 'foo'", "type": "invalid_request_error",
                                                           "param": "foo", "code": "unsupported_parameter"}})
    response = post(gateway, GOOD)
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_parameter"
    assert "x-jetstream-model" not in response.headers


def test_a_healthy_model_answers_itself_and_says_so(gateway, fake_openai):
    fall_back_to_demo(gateway)
    response = post(gateway, GOOD)
    assert response.status_code == 200
    assert (response.json()["model"], response.headers["x-jetstream-model"], response.headers["x-jetstream-provider"]) == \
        ("gpt-4o-mini", "gpt-4o-mini", "openai-main")


def test_a_tokens_chain_overrides_the_companys_which_overrides_the_models(gateway, fake_openai):
    world = gateway.world
    Model.objects.create(name="other-demo", provider=world.mock_model.provider, upstream_model="demo-chat", max_output_tokens=4096)
    Price.objects.create(model=Model.objects.get(name="other-demo"), currency="RUB", input_per_1m=1, output_per_1m=1)
    fall_back_to_demo(gateway)
    world.company.fallbacks = {"gpt-4o-mini": ["other-demo"]}
    world.company.save()
    gateway.wait_config()
    fake_openai.behavior(status=500)
    assert post(gateway, GOOD).json()["model"] == "other-demo"

    world.token.fallbacks = {"gpt-4o-mini": ["demo-chat"]}
    world.token.save()
    gateway.wait_config()
    assert post(gateway, GOOD).json()["model"] == "demo-chat"


def test_a_fallback_the_token_may_not_use_is_skipped(gateway, fake_openai):
    fall_back_to_demo(gateway)
    world = gateway.world
    world.token.models_deny = ["demo-chat"]
    world.token.save()
    gateway.wait_config()
    fake_openai.behavior(status=500)
    response = post(gateway, GOOD)
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_error"


def test_the_reservation_covers_the_most_expensive_candidate(gateway, fake_openai):
    # With a balance that covers gpt-4o-mini's maximum but not the fallback's, the call is refused
    # up front: whichever model answers must fit what was held.
    fall_back_to_demo(gateway)
    Price.objects.create(model=gateway.world.mock_model, currency="RUB", input_per_1m=10**14, output_per_1m=10**14)  # 100 RUB a token
    gateway.wait_config()
    response = post(gateway, {**GOOD, "max_tokens": 50})
    assert response.status_code == 402, response.text
    assert len(fake_openai.requests) == 0


def test_russian_residency_refuses_a_foreign_model_and_says_what_to_do(gateway, fake_openai):
    world = gateway.world
    world.company.data_residency = "ru"
    world.company.save()
    gateway.wait_config()
    response = post(gateway, GOOD)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "data_residency" and "Russia" in error["message"] and "gpt-4o-mini" in error["message"]
    assert len(fake_openai.requests) == 0


def test_russian_residency_goes_straight_to_a_russian_hosted_fallback(gateway, fake_openai):
    world = gateway.world
    Provider.objects.filter(pk=world.mock_model.provider_id).update(country="RU")
    world.company.data_residency = "ru"
    world.company.save()
    fall_back_to_demo(gateway)
    response = post(gateway, GOOD)
    assert response.status_code == 200 and response.json()["model"] == "demo-chat"
    assert len(fake_openai.requests) == 0  # no byte went to the foreign provider


def test_cheapest_first_routes_to_the_cheaper_fallback_without_trying_the_dearer_model(gateway, fake_openai):
    fall_back_to_demo(gateway, routing="cheapest")  # demo-chat: 10/20 RUB per 1M; gpt-4o-mini: 0.15/0.60 USD ≈ 13.9/55.5 RUB
    response = post(gateway, {**GOOD, "max_tokens": 200})
    assert response.status_code == 200 and response.json()["model"] == "demo-chat"
    assert len(fake_openai.requests) == 0


def test_cheapest_compares_the_companys_per_model_coefficients_not_its_own(gateway, fake_openai):
    # demo-chat is the cheaper at list price (10/20 RUB vs ≈13.9/55.5 RUB per 1M), but this company
    # pays 5× for it and 1.25× (its own coefficient) for gpt-4o-mini: gpt-4o-mini is cheaper for it.
    from decimal import Decimal

    from apps.accounts.models import CompanyModelCoefficient

    world = gateway.world
    CompanyModelCoefficient.objects.create(company=world.company, model=world.mock_model, sell_coefficient=Decimal("5"))
    fall_back_to_demo(gateway, routing="cheapest")
    response = post(gateway, {**GOOD, "max_tokens": 200})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "gpt-4o-mini" and len(fake_openai.requests) == 1


def test_a_provider_that_failed_goes_to_the_back_of_the_line_for_a_while(gateway, fake_openai):
    fall_back_to_demo(gateway)
    fake_openai.behavior(status=500)
    assert post(gateway, GOOD).json()["model"] == "demo-chat"
    tried = len(fake_openai.requests)
    fake_openai.reset()  # healthy again, but within PROVIDER_DOWN_SECONDS it is not asked first
    assert post(gateway, GOOD).json()["model"] == "demo-chat"
    assert tried == 2 and len(fake_openai.requests) == 0


# --- the order, without a server ---------------------------------------------------------------

def route(id_: int, provider_id: int, *, price: int = 1_000_000) -> ModelRoute:
    return ModelRoute(id=id_, name=f"m{id_}", modality="chat", upstream_model=f"m{id_}", context_window=1000, max_output_tokens=100,
                      created=0, provider_id=provider_id, provider_kind="mock", provider_slug=f"p{provider_id}", base_url="",
                      provider_options={}, egress_url=None, price_id=1, price_input=price, price_output=price, price_cached=price,
                      fx_micro=1_000_000)


def AT_LIST_PRICE(candidate: Candidate) -> int:  # noqa: N802 - a constant-like cost function
    return price(candidate.route, candidate.input_tokens, candidate.max_output_tokens, 0, 10_000)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_provider_ramps_back_10_then_50_then_100_percent():
    clock, draws = Clock(), iter([0.05, 0.2, 0.3, 0.7])
    health = ProviderHealth(down_seconds=10, step_seconds=30, clock=clock, rng=lambda: next(draws))
    a, b = Candidate(route(1, provider_id=1), 10, 10), Candidate(route(2, provider_id=2), 10, 10)
    health.failed(1)
    assert health.share(1) == 0.0 and health.order([a, b], "ordered", AT_LIST_PRICE) == [b, a]
    clock.now += 10
    assert health.share(1) == 0.1
    assert health.order([a, b], "ordered", AT_LIST_PRICE) == [a, b]  # draw 0.05 < 0.1: leads
    assert health.order([a, b], "ordered", AT_LIST_PRICE) == [b, a]  # draw 0.2: behind
    clock.now += 30
    assert health.share(1) == 0.5
    assert health.order([a, b], "ordered", AT_LIST_PRICE) == [a, b]  # 0.3 < 0.5
    assert health.order([a, b], "ordered", AT_LIST_PRICE) == [b, a]  # 0.7
    clock.now += 30
    assert health.share(1) == 1.0 and health.order([a, b], "ordered", AT_LIST_PRICE) == [a, b]


def test_a_failure_while_ramping_sends_the_provider_down_again():
    clock = Clock()
    health = ProviderHealth(down_seconds=10, step_seconds=30, clock=clock, rng=lambda: 0.0)
    health.failed(1)
    clock.now += 15
    assert health.share(1) == 0.1
    health.failed(1)
    assert health.share(1) == 0.0


@pytest.mark.parametrize(("routing", "expected"), [("ordered", [1, 2, 3]), ("cheapest", [3, 2, 1]), ("fastest", [2, 3, 1])])
def test_the_strategies_order_the_candidates(routing, expected):
    health = ProviderHealth()
    routes = [route(1, 1, price=3_000_000), route(2, 2, price=2_000_000), route(3, 3, price=1_000_000)]
    health.answered(routes[0], 0.9)
    health.answered(routes[1], 0.1)
    health.answered(routes[2], 0.5)
    ordered = health.order([Candidate(r, 100, 10) for r in routes], routing, AT_LIST_PRICE)
    assert [c.route.id for c in ordered] == expected


def test_every_dialect_names_the_fallback_that_answered(gateway, fake_openai):
    import anthropic

    fall_back_to_demo(gateway)
    fake_openai.behavior(status=500)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.world.secret, max_retries=0)
    message = claude.messages.create(model="gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert message.model == "demo-chat" and message.content[0].text
    response = gateway.client().responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=20)
    assert response.model == "demo-chat" and response.output_text
