"""Bad input and refused requests: OpenAI-shaped errors, the right HTTP codes, no charge, one record each."""

from __future__ import annotations

import httpx
import openai
import pytest

from apps.billing.models import Transfer, UsageRecord

GOOD = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

BAD_INPUT = [
    # (body, expected status, expected code, param)
    (b"{not json", 400, "invalid_json", None),
    (b"", 400, "invalid_json", None),
    (b"[1, 2]", 400, "invalid_json", None),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "missing_required_parameter", "model"),
    ({"model": 42, "messages": [{"role": "user", "content": "hi"}]}, 400, "invalid_type", "model"),
    ({"model": "gpt-4o-mini"}, 400, "missing_required_parameter", "messages"),
    ({"model": "gpt-4o-mini", "messages": "hi"}, 400, "invalid_type", "messages"),
    ({"model": "gpt-4o-mini", "messages": []}, 400, "invalid_type", "messages"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "invalid_value", "messages[0].role"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 5}]}, 400, "invalid_type", "messages[0].content"),
    ({**GOOD, "max_tokens": "ten"}, 400, "invalid_value", "max_tokens"),
    ({**GOOD, "max_tokens": -1}, 400, "invalid_value", "max_tokens"),
    ({**GOOD, "max_tokens": 10_000_000}, 400, "max_tokens_too_large", "max_tokens"),
    ({**GOOD, "max_completion_tokens": 5000}, 400, "max_tokens_too_large", "max_completion_tokens"),
    ({**GOOD, "n": 0}, 400, "invalid_value", "n"),
    ({**GOOD, "stream": "yes"}, 400, "invalid_type", "stream"),
    ({**GOOD, "stream_options": {"include_usage": True}}, 400, "invalid_request", "stream_options"),
    ({**GOOD, "temperature": 3}, 400, "invalid_value", "temperature"),
    ({**GOOD, "stop": [1, 2]}, 400, "invalid_type", "stop"),
    ({**GOOD, "model": "no-such-model"}, 404, "model_not_found", "model"),
    ({**GOOD, "model": "text-embedding-3-small"}, 422, "unsupported_model_for_endpoint", "model"),
]


def post(gateway, body, *, path="/chat/completions", secret=None, headers=None):
    raw = body if isinstance(body, bytes) else httpx.Request("POST", "http://x", json=body).content
    return httpx.post(gateway.base_url + path, content=raw, timeout=10,
                      headers={"Authorization": f"Bearer {secret or gateway.world.secret}", "Content-Type": "application/json",
                               **(headers or {})})


@pytest.mark.parametrize(("body", "status", "code", "param"), BAD_INPUT)
def test_it_refuses_bad_input_with_an_openai_error_and_no_charge(gateway, fake_openai, body, status, code, param):
    response = post(gateway, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["param"] == param and error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert response.headers["x-jetstream-cost"] == "0.000000" and response.headers["x-request-id"]
    assert fake_openai.requests == []
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert (record.http_status, record.sell_cost, record.error_code) == (status, 0, code)
    assert not Transfer.objects.filter(kind="usage").exists()


def test_it_refuses_a_body_over_the_size_limit(gateway, settings):
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * (settings.JETSTREAM["MAX_BODY_BYTES"] + 10)}]}
    response = post(gateway, big)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_it_refuses_a_prompt_beyond_the_context_window(gateway):
    model = gateway.world.model
    model.context_window = 50
    model.max_output_tokens = 40
    model.save()
    gateway.wait_config()
    response = post(gateway, {**GOOD, "messages": [{"role": "user", "content": "word " * 100}]})
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(("headers", "code"), [
    ({}, "invalid_api_key"),
    ({"Authorization": "Bearer js-unknown-0123456789abcdef0123456789abcdef"}, "invalid_api_key"),
    ({"Authorization": "Basic abc"}, "invalid_api_key"),
    ({"Authorization": "Bearer sk-not-ours"}, "invalid_api_key"),
])
def test_it_refuses_missing_or_unknown_keys(gateway, headers, code):
    response = httpx.post(gateway.base_url + "/chat/completions", json=GOOD, headers=headers)
    assert response.status_code == 401 and response.json()["error"]["code"] == code
    gateway.drain(expect=1)
    assert UsageRecord.objects.get().status == "rejected"


def test_it_accepts_the_key_in_x_api_key(gateway):
    response = httpx.post(gateway.base_url + "/chat/completions", json={**GOOD, "model": "demo-chat"},
                          headers={"x-api-key": gateway.world.secret})
    assert response.status_code == 200


def test_it_maps_refusals_to_the_sdk_exceptions(gateway):
    with pytest.raises(openai.AuthenticationError):
        gateway.client(secret="js-wrong-0123456789abcdef0123456789abcdef").chat.completions.create(**GOOD)
    with pytest.raises(openai.NotFoundError):
        gateway.client().chat.completions.create(model="nope", messages=GOOD["messages"])
    with pytest.raises(openai.BadRequestError):
        gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[])


def test_it_answers_unknown_paths_and_methods_in_the_same_shape(gateway):
    response = httpx.get(gateway.base_url + "/nothing-here", headers={"Authorization": f"Bearer {gateway.world.secret}"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_endpoint"
    response = httpx.get(gateway.base_url + "/chat/completions", headers={"Authorization": f"Bearer {gateway.world.secret}"})
    assert response.status_code == 405


def test_upstream_errors_never_leak_the_supplier_key_or_url(gateway, fake_openai):
    leak = f"key {fake_openai.api_key} at {fake_openai.base_url} is over quota"
    fake_openai.behavior(status=500, error_body={"error": {"message": leak, "type": "server_error", "code": None}})
    response = post(gateway, GOOD)
    assert response.status_code == 502
    text = response.text
    assert fake_openai.api_key not in text and "127.0.0.1" not in text and "sk-" not in text
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.status == "upstream_error" and record.sell_cost == 0
    assert not Transfer.objects.filter(kind="usage").exists()


def test_it_fails_over_to_the_next_key(gateway, fake_openai):
    fake_openai.behavior(status=503, fail_times=1)
    completion = gateway.client().chat.completions.create(**GOOD)
    assert completion.choices[0].message.content
    assert len(fake_openai.requests) == 2
    gateway.drain(expect=1)
    assert UsageRecord.objects.get().status == "ok"


def test_a_request_error_from_upstream_is_passed_on_without_failover(gateway, fake_openai):
    fake_openai.behavior(status=400, error_body={"error": {"message": "Unsupported parameter: 'foo'", "type": "invalid_request_error",
                                                           "param": "foo", "code": "unsupported_parameter"}})
    response = post(gateway, GOOD)
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_parameter"
    assert len(fake_openai.requests) == 1


def test_it_counts_tokens_itself_when_upstream_reports_no_usage(gateway, fake_openai):
    fake_openai.behavior(omit_usage=True)
    completion = gateway.client().chat.completions.create(**GOOD)
    assert completion.usage is None
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.usage_counted_locally and record.input_tokens > 0 and record.output_tokens > 0 and record.sell_cost > 0


def test_it_bills_cached_input_tokens_at_the_cached_price(gateway, fake_openai):
    from apps.providers.models import Price

    Price.objects.create(model=gateway.world.model, currency="USD", input_per_1m=150_000, output_per_1m=600_000,
                         cached_input_per_1m=75_000)
    gateway.wait_config()
    fake_openai.behavior(cached_tokens=6)
    completion = gateway.client().chat.completions.create(**GOOD)
    gateway.drain(expect=1)
    from tests.proxy.test_chat import expected_cost

    assert UsageRecord.objects.get().sell_cost == expected_cost(completion.usage.prompt_tokens, completion.usage.completion_tokens,
                                                                cached=6, price_cached=75_000)
    assert UsageRecord.objects.get().cached_tokens == 6


def test_a_charge_never_exceeds_the_reservation_even_if_upstream_overshoots(gateway, fake_openai):
    # The upstream ignores max_tokens (reports 500 output tokens for max_tokens=5): the company pays
    # at most what was reserved for 5 output tokens; the supplier is still owed the real cost.
    overshoot = {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "long " * 500}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 8, "completion_tokens": 500, "total_tokens": 508}}
    fake_openai.behavior(response_body=overshoot)
    completion = gateway.client().chat.completions.create(**GOOD, max_tokens=5)
    assert completion.usage.completion_tokens == 500
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    from lib import tokenizer
    from tests.proxy.test_chat import expected_cost

    reserved = expected_cost(tokenizer.count_chat_prompt(GOOD["messages"]), 5)
    assert record.sell_cost == reserved
    assert record.buy_cost == expected_cost(completion.usage.prompt_tokens, completion.usage.completion_tokens, coefficient="1.10")
