"""Admission: bad input, keys, token state, model and address rules — OpenAI-shaped refusals, no charge, one record each."""

from __future__ import annotations

import datetime as dt

import httpx
import openai
import pytest
from django.utils import timezone

from apps.billing.models import Transfer, UsageRecord
from tests.proxy.helpers import GOOD, chat, post

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


def test_the_model_allow_and_deny_lists_are_enforced(gateway):
    token = gateway.world.token
    token.models_allow = ["gpt-4o-mini"]
    token.save()
    gateway.wait_config()
    response = chat(gateway)
    assert response.status_code == 403 and response.json()["error"]["code"] == "model_not_allowed"
    token.models_allow, token.models_deny = [], ["demo-chat"]
    token.save()
    gateway.wait_config()
    assert chat(gateway).json()["error"]["code"] == "model_not_allowed"


def test_blocked_revoked_and_expired_tokens_are_refused(gateway):
    token = gateway.world.token
    token.status, token.status_reason = "blocked", "suspicious traffic"
    token.save()
    gateway.wait_config()
    blocked = chat(gateway)
    assert blocked.status_code == 403 and blocked.json()["error"]["code"] == "token_blocked"
    assert "suspicious traffic" in blocked.json()["error"]["message"]
    token.status = "revoked"
    token.save()
    gateway.wait_config()
    assert chat(gateway).json()["error"]["code"] == "token_revoked"
    token.status, token.expires_at = "active", timezone.now() - dt.timedelta(seconds=1)
    token.save()
    gateway.wait_config()
    assert chat(gateway).json()["error"]["code"] == "token_expired"


def test_the_ip_allow_list_is_enforced(gateway):
    token = gateway.world.token
    token.ip_allow = ["10.0.0.0/8"]
    token.save()
    gateway.wait_config()
    refused = chat(gateway)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "ip_not_allowed"
    token.ip_allow = ["10.0.0.0/8", "127.0.0.1/32"]
    token.save()
    gateway.wait_config()
    assert chat(gateway).status_code == 200


@pytest.fixture
def gateway_behind_proxy(world, settings):
    from apps.proxy.pipeline.app import ProxyApp
    from jetstream.asgi import build_application
    from tests.proxy.conftest import Gateway, ServerThread, free_port

    settings.JETSTREAM = {**settings.JETSTREAM, "TRUSTED_PROXY_HEADER": "X-Forwarded-For"}
    with ServerThread(build_application(ProxyApp()), free_port()) as server:
        yield Gateway(world, server)


def test_the_distinct_ip_cap_uses_the_trusted_proxy_header(gateway_behind_proxy):
    gateway = gateway_behind_proxy
    token = gateway.world.token
    token.max_distinct_ips, token.ip_allow = 2, ["203.0.113.0/24"]
    token.save()
    gateway.wait_config()

    def from_ip(ip):
        return chat(gateway, headers={"X-Forwarded-For": f"198.51.100.7, {ip}"})

    assert from_ip("203.0.113.1").status_code == 200
    assert from_ip("203.0.113.2").status_code == 200
    assert from_ip("203.0.113.1").status_code == 200  # a known address is always fine
    refused = from_ip("203.0.113.3")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "too_many_client_ips"
    assert from_ip("198.51.100.9").json()["error"]["code"] == "ip_not_allowed"
    gateway.drain(expect=5)
    assert set(UsageRecord.objects.values_list("client_ip", flat=True)) == {"203.0.113.1", "203.0.113.2", "203.0.113.3", "198.51.100.9"}
