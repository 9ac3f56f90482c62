"""The moderation stage through a real gateway, with the official SDKs as clients and an upstream
that echoes what it receives: the upstream never sees a masked value, the client gets it back —
whole answers, streams split into pieces of one to a few characters, tool-call arguments — in every
dialect; blocks in each dialect's error shape, free; the stage off changes nothing."""

from __future__ import annotations

import anthropic
import httpx
import openai
import orjson
import pytest
import redis as redis_lib
from django.conf import settings

from apps.billing.models import UsageRecord, UsageStatus
from apps.moderation.findings import Action, Category
from apps.moderation.report_models import ModerationReport
from apps.moderation.reports import METRICS_KEY, category_counts, write_report_batch
from tests.moderation.stage_fixtures import *  # noqa: F403 - the moderated gateway's fixtures
from tests.moderation.stage_fixtures import NAME, OTHER_PHONE, PHONE, StagePolicy

PROMPT = f"Перезвоните {NAME} по номеру {PHONE}, пожалуйста. Повторяю: {PHONE}."


def upstream_text(fake) -> str:
    """Everything the upstream received (its raw request bodies), decoded."""
    return "".join(r.raw_body.decode() for r in fake.requests)


def assert_upstream_saw_no_value(fake) -> None:
    seen = upstream_text(fake)
    assert fake.requests, "the upstream was not called"
    assert NAME not in seen and PHONE not in seen and "912" not in seen
    assert "[PERSON_1]" in seen and "[PHONE_1]" in seen


def anthropic_client(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.world.secret, max_retries=0)


def test_it_masks_the_prompt_and_restores_a_whole_answer_openai(gateway, fake_openai):
    answer = gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    assert answer.choices[0].message.content == PROMPT
    assert_upstream_saw_no_value(fake_openai)
    sent = fake_openai.last_request.body["messages"][0]["content"]
    assert sent == "Перезвоните [PERSON_1] по номеру [PHONE_1], пожалуйста. Повторяю: [PHONE_1]."


@pytest.mark.parametrize("chunk_chars", [1, 2, 3, 5])
def test_it_restores_a_stream_whose_placeholders_are_split_anywhere_openai(gateway, fake_openai, chunk_chars):
    fake_openai.behavior(echo=True, chunk_chars=chunk_chars)
    stream = gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}],
                                                      stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == PROMPT
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert_upstream_saw_no_value(fake_openai)


def test_the_same_value_has_one_placeholder_across_system_history_and_tool_results(gateway, fake_openai):
    messages = [
        {"role": "system", "content": f"Клиент: {NAME}."},
        {"role": "user", "content": f"Найди телефон {NAME}"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "lookup", "arguments": orjson.dumps({"who": NAME}).decode()}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": f"{NAME}: {PHONE}, {OTHER_PHONE}"},
        {"role": "user", "content": [{"type": "text", "text": f"Позвони {NAME} на {PHONE}"}]},
    ]
    answer = gateway.client().chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert answer.choices[0].message.content == f"Позвони {NAME} на {PHONE}"
    sent = fake_openai.last_request.body["messages"]
    assert sent[0]["content"] == "Клиент: [PERSON_1]."
    assert sent[1]["content"] == "Найди телефон [PERSON_1]"
    assert orjson.loads(sent[2]["tool_calls"][0]["function"]["arguments"]) == {"who": "[PERSON_1]"}
    assert sent[3]["content"] == "[PERSON_1]: [PHONE_1], [PHONE_2]"
    assert sent[4]["content"] == [{"type": "text", "text": "Позвони [PERSON_1] на [PHONE_1]"}]
    assert OTHER_PHONE not in upstream_text(fake_openai)


TOOL = {"type": "function", "function": {"name": "remember", "parameters": {"type": "object", "properties": {"echo": {"type": "string"}}}}}


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_arguments_are_restored_as_valid_json(gateway, fake_openai, stream):
    fake_openai.behavior(echo=True, chunk_chars=2)
    prompt = 'Запомни: Anna "Q" Smith, ' + PHONE
    kwargs = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "tools": [TOOL],
              "tool_choice": {"type": "function", "function": {"name": "remember"}}}
    if stream:
        arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                            for c in gateway.client().chat.completions.create(stream=True, **kwargs)
                            if c.choices and c.choices[0].delta.tool_calls)
    else:
        arguments = gateway.client().chat.completions.create(**kwargs).choices[0].message.tool_calls[0].function.arguments
    assert orjson.loads(arguments) == {"echo": prompt}
    assert "Smith" not in upstream_text(fake_openai) and "912" not in upstream_text(fake_openai)


@pytest.mark.parametrize("stream", [False, True])
def test_it_masks_and_restores_through_the_anthropic_sdk(gateway, fake_openai, stream):
    fake_openai.behavior(echo=True, chunk_chars=3)
    with anthropic_client(gateway) as client:
        if stream:
            with client.messages.stream(model="gpt-4o-mini", max_tokens=200, system=f"Звонит {NAME}",
                                        messages=[{"role": "user", "content": PROMPT}]) as events:
                text = "".join(events.text_stream)
        else:
            message = client.messages.create(model="gpt-4o-mini", max_tokens=200, system=f"Звонит {NAME}",
                                             messages=[{"role": "user", "content": PROMPT}])
            text = message.content[0].text
    assert text == PROMPT
    assert_upstream_saw_no_value(fake_openai)
    assert fake_openai.last_request.body["messages"][0]["content"] == "Звонит [PERSON_1]"


@pytest.mark.parametrize("stream", [False, True])
def test_it_masks_and_restores_through_the_responses_api(gateway, fake_openai, stream):
    fake_openai.behavior(echo=True, chunk_chars=4)
    client = gateway.client()
    if stream:
        events = list(client.responses.create(model="gpt-4o-mini", input=PROMPT, stream=True))
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert events[-1].response.output_text == PROMPT
    else:
        text = client.responses.create(model="gpt-4o-mini", input=PROMPT).output_text
    assert text == PROMPT
    assert_upstream_saw_no_value(fake_openai)


def blocked_policy() -> StagePolicy:
    return StagePolicy(prompt={Category.PHONE: Action.BLOCK, Category.PERSON: Action.MASK})


def test_a_prompt_side_block_is_moderation_blocked_free_and_never_sent_openai(gateway, fake_openai, policies):
    policies.set(blocked_policy())
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    error = caught.value
    assert error.status_code == 400
    assert error.body["type"] == "moderation_blocked" and error.body["code"] == "phone"
    assert "phone numbers" in error.body["message"] and "912" not in error.body["message"]
    assert error.response.headers["x-should-retry"] == "false"
    assert fake_openai.requests == []
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert (record.status, record.http_status, record.error_code, record.sell_cost) == (UsageStatus.REJECTED, 400, "phone", 0)


def test_a_prompt_side_block_has_the_anthropic_error_shape(gateway, fake_openai, policies):
    policies.set(blocked_policy())
    with anthropic_client(gateway) as client, pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": PROMPT}])
    body = caught.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "moderation_blocked" and body["error"]["code"] == "phone"
    assert "912" not in orjson.dumps(body).decode()
    assert fake_openai.requests == []


def test_a_prompt_side_block_has_the_responses_error_shape(gateway, fake_openai, policies):
    policies.set(blocked_policy())
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().responses.create(model="gpt-4o-mini", input=PROMPT, stream=True)
    assert caught.value.body["type"] == "moderation_blocked" and caught.value.body["code"] == "phone"


def response_block_policy() -> StagePolicy:
    # The prompt's phone is only logged (so it reaches the echo upstream as it is); on the way back it is refused.
    return StagePolicy(prompt={Category.PHONE: Action.LOG}, response={Category.PHONE: Action.BLOCK})


def test_a_response_side_block_refuses_a_whole_answer(gateway, fake_openai, policies):
    policies.set(response_block_policy())
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"Echo {OTHER_PHONE}"}])
    assert caught.value.body["code"] == "phone" and "answer" in caught.value.body["message"]
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.status == UsageStatus.REJECTED and record.sell_cost > 0  # the upstream generated it: billed


def test_a_response_side_block_stops_a_stream_with_an_error_event_before_the_value(gateway, fake_openai, policies):
    policies.set(response_block_policy())
    # A pause between events, so the answer arrives in many reads (one coalesced read would be refused
    # before anything was written, which is right but not what this test shows).
    fake_openai.behavior(echo=True, chunk_chars=4, chunk_delay_ms=2)
    prefix = "Это длинное вступление, чтобы ответ начался до номера телефона и ушёл к клиенту. " * 2
    response = httpx.post(gateway.base_url + "/chat/completions", timeout=10, headers={"Authorization": f"Bearer {gateway.world.secret}"},
                          json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": prefix + OTHER_PHONE + " конец"}]})
    assert response.status_code == 200
    body = response.text
    assert "495" not in body  # the value never reached the client: it was held back and refused
    assert '"moderation_blocked"' in body and '"code":"phone"' in body
    assert body.rstrip().endswith("data: [DONE]")
    streamed = "".join(orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                       for line in body.splitlines() if line.startswith("data: {") and '"choices":[{' in line)
    assert streamed.startswith(prefix[:60])  # what came before the value was streamed


def test_a_response_side_block_in_an_anthropic_stream_is_an_error_event(gateway, fake_openai, policies):
    policies.set(response_block_policy())
    fake_openai.behavior(echo=True, chunk_chars=4)
    prefix = "Вступление, достаточно длинное, чтобы часть ответа ушла клиенту раньше номера телефона. " * 2
    with anthropic_client(gateway) as client, pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(model="gpt-4o-mini", max_tokens=300,
                                    messages=[{"role": "user", "content": prefix + OTHER_PHONE}]) as events:
            for _ in events.text_stream:
                pass
    assert caught.value.body["error"]["type"] == "moderation_blocked"


def test_a_response_side_mask_hides_a_value_the_model_wrote(gateway, fake_openai, policies):
    policies.set(StagePolicy(prompt={}, response={Category.PHONE: Action.MASK}))
    fake_openai.behavior(echo=True, chunk_chars=3)
    stream = gateway.client().chat.completions.create(model="gpt-4o-mini", stream=True,
                                                      messages=[{"role": "user", "content": f"Номер: {OTHER_PHONE}."}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Номер: [PHONE_1]."
    whole = gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"Номер: {OTHER_PHONE}."}])
    assert whole.choices[0].message.content == "Номер: [PHONE_1]."


def test_the_clients_own_restored_values_are_not_refused_on_the_way_back(gateway, fake_openai, policies):
    policies.set(StagePolicy(response={Category.PHONE: Action.BLOCK, Category.PERSON: Action.BLOCK}))
    answer = gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    assert answer.choices[0].message.content == PROMPT


def test_with_the_stage_off_the_upstream_gets_the_clients_bytes_and_the_client_the_upstreams(gateway, fake_openai, policies):
    policies.set(None)
    fake_openai.behavior(echo=True, chunk_chars=3)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    response = httpx.post(gateway.base_url + "/chat/completions", json=body, timeout=10,
                          headers={"Authorization": f"Bearer {gateway.world.secret}"})
    sent = fake_openai.last_request.body
    assert sent["messages"] == body["messages"]
    text = "".join(orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in response.text.splitlines() if line.startswith("data: {") and '"choices":[{' in line)
    assert text == PROMPT


def test_a_prompt_policy_that_finds_nothing_changes_no_byte_of_the_request_or_the_answer(gateway, fake_openai, policies):
    # (A policy that scans answers holds each streamed text's last characters back, so its events are
    # cut differently; their text is the same.)
    policies.set(StagePolicy(scans_responses=False))
    fake_openai.behavior(echo=True, chunk_chars=3)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Просто текст без данных"}], "stream": True}

    def run() -> tuple[bytes, list[dict]]:
        response = httpx.post(gateway.base_url + "/chat/completions", json=body, timeout=10,
                              headers={"Authorization": f"Bearer {gateway.world.secret}"})
        events = [orjson.loads(line[6:]) for line in response.text.split("\n\n") if line.startswith("data: {")]
        return fake_openai.last_request.raw_body, [e | {"id": "", "created": 0} for e in events]

    with_policy = run()
    policies.set(None)
    assert run() == with_policy


def test_every_mask_and_block_is_reported_with_masked_snippets_and_counted(gateway, fake_openai, policies):
    gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    policies.set(blocked_policy())
    with pytest.raises(openai.BadRequestError):
        gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    try:
        assert write_report_batch(client) == 6  # 3 + 3 findings: a name and a phone twice, in each request
        assert write_report_batch(client) == 0
        counts = category_counts(client)
        client.delete(METRICS_KEY)
    finally:
        client.close()
    rows = list(ModerationReport.objects.order_by("created_at", "position"))
    assert {(r.category, r.action) for r in rows[:3]} == {("person", "mask"), ("phone", "mask")}
    assert {(r.category, r.action) for r in rows[3:]} == {("person", "mask"), ("phone", "block")}
    assert all(r.company_id == gateway.world.company.pk and r.token_id == gateway.world.token.pk for r in rows)
    assert all(NAME not in r.snippet and "912" not in r.snippet for r in rows)
    assert "[PHONE]" in rows[0].snippet and rows[0].detector in ("pattern", "ner")
    assert counts["phone"] == {"mask": 2, "block": 2} and counts["person"] == {"mask": 2}


def test_a_kept_mapping_is_sealed_in_the_report(gateway, fake_openai, policies):
    from apps.moderation.masking import Masker

    policies.set(StagePolicy(keep_mapping=True))
    gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    try:
        write_report_batch(client)
        client.delete(METRICS_KEY)
    finally:
        client.close()
    first = ModerationReport.objects.get(position=0)
    assert NAME not in first.sealed_mapping and first.sealed_mapping.startswith("v1:")
    assert Masker.unseal(first.sealed_mapping).values == {"[PERSON_1]": NAME, "[PHONE_1]": PHONE}
    assert not ModerationReport.objects.exclude(position=0).exclude(sealed_mapping="").exists()


def test_a_sensitive_request_goes_to_a_russian_hosted_model_instead_of_being_blocked(gateway, fake_openai, policies):
    world = gateway.world
    world.mock_model.provider.country = "RU"
    world.mock_model.provider.save()
    world.model.fallbacks = ["demo-chat"]
    world.model.save()
    policies.set(StagePolicy(prompt={Category.PHONE: Action.BLOCK}, sensitive_route="ru"))
    client = gateway.client()
    rerouted = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    assert rerouted.headers["x-jetstream-model"] == "demo-chat" and rerouted.headers["x-jetstream-provider"] == "demo"
    assert fake_openai.requests == []  # the foreign upstream never saw it
    plain = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Привет"}])
    assert plain.headers["x-jetstream-model"] == "gpt-4o-mini"
    client_redis = redis_lib.Redis.from_url(settings.REDIS_URL)
    try:
        write_report_batch(client_redis)
        client_redis.delete(METRICS_KEY)
    finally:
        client_redis.close()
    assert ModerationReport.objects.filter(category="phone", action="block", rerouted=True).count() == 2


def test_a_sensitive_request_with_no_route_for_it_is_refused(gateway, fake_openai, policies):
    policies.set(StagePolicy(prompt={Category.PHONE: Action.BLOCK}, sensitive_route="local"))
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    assert caught.value.body["type"] == "moderation_blocked" and caught.value.body["code"] == "sensitive_route_unavailable"
    assert fake_openai.requests == []


def test_a_placeholder_the_client_wrote_comes_back_as_written(gateway, fake_openai):
    prompt = f"Шаблон письма: «Позвоните [PHONE_1]». Мой номер {PHONE}."
    answer = gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    assert answer.choices[0].message.content == prompt
    assert fake_openai.last_request.body["messages"][0]["content"] == "Шаблон письма: «Позвоните [PHONE_1]». Мой номер [PHONE_2]."
