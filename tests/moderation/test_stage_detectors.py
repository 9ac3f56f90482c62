"""The stage with the real detectors (``apps.moderation.scan``) and a company policy from the
database: a Russian name and a phone number never reach the provider and come back restored, and a
layer that fails under a fail-closed policy refuses the call without a traceback's worth of detail."""

from __future__ import annotations

import anthropic
import pytest

from apps.moderation.models import Policy, PolicyMode
from tests.moderation.stage_fixtures import fake_openai, fake_openai_server, world  # noqa: F401 - fixtures
from tests.proxy.conftest import Gateway, ServerThread, free_port

PROMPT = "Позвоните Ивану Петрову по номеру +7 912 345-67-89, он ждёт звонка."


@pytest.fixture
def gateway(world):  # noqa: F811
    from apps.proxy.pipeline.app import ProxyApp
    from jetstream.asgi import build_application

    Policy.objects.create(company=world.company, mode=PolicyMode.ENFORCE)  # a new policy's actions: names and phones masked
    with ServerThread(build_application(ProxyApp()), free_port()) as server:
        yield Gateway(world, server)


@pytest.mark.parametrize("stream", [False, True])
def test_a_name_and_a_phone_are_masked_by_the_detectors_and_restored(gateway, fake_openai, stream):  # noqa: F811
    fake_openai.behavior(echo=True, chunk_chars=2)
    client = gateway.client()
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], stream=True) if c.choices)
    else:
        text = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]).choices[0].message.content
    assert text == PROMPT
    sent = fake_openai.last_request.body["messages"][0]["content"]
    assert "Петров" not in sent and "912" not in sent
    assert "[PERSON_1]" in sent and "[PHONE_1]" in sent


def test_the_anthropic_sdk_gets_the_originals_back(gateway, fake_openai):  # noqa: F811
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.world.secret, max_retries=0) as client:
        message = client.messages.create(model="gpt-4o-mini", max_tokens=200, messages=[{"role": "user", "content": PROMPT}])
    assert message.content[0].text == PROMPT
    assert "912" not in fake_openai.last_request.raw_body.decode()


def test_a_failed_layer_under_a_fail_closed_policy_refuses_naming_the_layer():
    import time
    from types import SimpleNamespace

    from apps.moderation.exceptions import ScanFailed
    from apps.proxy.exceptions import ApiError
    from apps.proxy.pipeline.moderate import Moderated, PromptScan, StageRules

    def failing(text, policy, direction, *, content_type="text"):
        raise ScanFailed("llm", "no answer within 3 s")

    policy = SimpleNamespace(fail_closed=True)
    state = Moderated(policy, StageRules.of(policy))
    with pytest.raises(ApiError) as caught:
        PromptScan(state, failing, time.monotonic() + 5).body("chat", {"messages": [{"role": "user", "content": PROMPT}]})
    assert caught.value.type == "moderation_blocked" and caught.value.code == "moderation_unavailable"
    assert "llm" in caught.value.message and "912" not in caught.value.message
