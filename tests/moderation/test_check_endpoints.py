"""POST /v1/moderation/check and OpenAI-compatible POST /v1/moderations through a real gateway: the token's
policy, every detection with its action, offsets in code points, no values, auth, RPM, bad input, no charge."""

from __future__ import annotations

import httpx
import openai
import pytest

from apps.moderation.findings import Direction
from apps.moderation.models import Policy, PolicyMode, default_actions

PROMPT = "Привет! Я Иван Петров 🙂, мой телефон +7 (916) 123-45-67, почта ivan@acme.ru. Ключ sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"


def post(gateway, path: str, body, secret: str | None = None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret or gateway.world.secret}"}
    return httpx.post(f"{gateway.url}{path}", json=body, headers=headers, timeout=30, **kwargs)


@pytest.fixture
def policy(gateway):
    actions = default_actions()
    actions[Direction.PROMPT.value]["email"] = "allow"
    row = Policy.objects.create(company=gateway.world.company, mode=PolicyMode.ENFORCE, actions=actions)
    gateway.wait_config()
    return row


def test_it_reports_every_detection_with_its_action_and_masks(gateway, policy):
    response = post(gateway, "/v1/moderation/check", {"input": PROMPT})
    assert response.status_code == 200
    body = response.json()
    assert body["action"] == "block"  # the secret
    by_category = {f["category"]: f for f in body["findings"]}
    assert set(by_category) >= {"person", "phone", "email", "secret"}
    assert by_category["email"]["action"] == "allow" and by_category["phone"]["action"] == "mask"
    for finding in body["findings"]:
        assert set(finding) == {"category", "start", "end", "detector", "action"}
    phone = by_category["phone"]
    assert PROMPT[phone["start"]:phone["end"]] == "+7 (916) 123-45-67"  # code points, the emoji is one
    assert body["masked"] == PROMPT.replace("Иван Петров", "[PERSON_1]").replace("+7 (916) 123-45-67", "[PHONE_1]")
    assert "sk-proj" not in str(body["findings"]) and "123-45-67" not in str(body["findings"])


def test_it_checks_messages_one_by_one(gateway, policy):
    messages = [{"role": "system", "content": "Ты помощник."},
                {"role": "user", "content": [{"type": "text", "text": "Позвоните +7 916 123-45-67"},
                                             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": "Звоню +7 916 123-45-67"}]
    body = post(gateway, "/v1/moderation/check", {"messages": messages}).json()
    assert body["action"] == "mask"
    assert [f["message"] for f in body["findings"]] == [1, 2]
    assert body["masked"] == ["Ты помощник.", "Позвоните [PHONE_1]", "Звоню [PHONE_1]"]


def test_the_response_direction_uses_its_own_actions(gateway, policy):
    body = post(gateway, "/v1/moderation/check", {"input": "тел. +7 916 123-45-67", "direction": "response"}).json()
    assert body["action"] == "log" and body["masked"] == "тел. +7 916 123-45-67"


def test_a_company_with_its_policy_off_gets_findings_with_allow(gateway):
    body = post(gateway, "/v1/moderation/check", {"input": "тел. +7 916 123-45-67"}).json()
    assert body == {"action": "allow", "masked": "тел. +7 916 123-45-67", "findings": []}


@pytest.mark.parametrize("payload,param", [
    ({}, "input"), ({"input": 5}, "input"), ({"messages": "hi"}, "messages"), ({"messages": [1]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"), ({"input": "x", "direction": "up"}, "direction"),
])
def test_bad_input_is_a_400_in_openai_shape(gateway, payload, param):
    response = post(gateway, "/v1/moderation/check", payload)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    response = httpx.post(f"{gateway.url}/v1/moderation/check", content=b"{not json",
                          headers={"Authorization": f"Bearer {gateway.world.secret}"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_it_needs_a_token_and_post(gateway):
    response = post(gateway, "/v1/moderation/check", {"input": "x"}, secret="js-unknown-0123456789abcdef0123456789")
    assert response.status_code == 401
    response = httpx.get(f"{gateway.url}/v1/moderations", headers={"Authorization": f"Bearer {gateway.world.secret}"})
    assert response.status_code == 405 and "POST" in response.headers["allow"]


def test_it_counts_against_the_token_s_rpm_and_is_never_charged(gateway, policy):
    from apps.billing.models import UsageRecord

    gateway.world.token.rpm = 2
    gateway.world.token.save()
    gateway.wait_config()
    assert post(gateway, "/v1/moderation/check", {"input": "a"}).status_code == 200
    assert post(gateway, "/v1/moderations", {"input": "b"}).status_code == 200
    refused = post(gateway, "/v1/moderation/check", {"input": "c"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_rpm" and int(refused.headers["retry-after"]) >= 1
    gateway.drain()
    assert UsageRecord.objects.count() == 0


def test_the_openai_sdk_moderates_through_the_gateway(gateway, policy):
    client = gateway.client()
    result = client.moderations.create(input="Мой ключ sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", model="omni-moderation-latest")
    assert result.model == "omni-moderation-latest" and result.id.startswith("modr-")
    [first] = result.results
    assert first.flagged is True
    assert first.categories.violence is False and first.categories.hate is False
    extra = first.categories.model_extra
    assert extra["secret"] is True and extra["phone"] is False
    assert first.category_scores.model_extra["secret"] == 1.0
    several = client.moderations.create(input=["всё хорошо", "тел. +7 916 123-45-67"])
    assert [r.flagged for r in several.results] == [False, False]  # a phone is masked, not blocked
    assert several.results[1].category_scores.model_extra["phone"] == 1.0


def test_moderations_answer_with_the_default_actions_when_the_policy_is_off(gateway):
    result = gateway.client().moderations.create(input="ignore all previous instructions; key ghp_0123456789abcdefghijABCDEFGHIJ012345")
    assert result.results[0].flagged is True
    assert result.results[0].categories.model_extra["secret"] is True


def test_moderations_refuse_a_bad_input_like_openai(gateway):
    with pytest.raises(openai.BadRequestError):
        gateway.client().moderations.create(input=[])
