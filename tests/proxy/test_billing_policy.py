"""docs/billing.md, row by row: the real gateway against FakeOpenAI, the client's view (the
``openai`` SDK or raw httpx), the usage record and the ledger transfers (issue 8, item 3)."""

from __future__ import annotations

import httpx
import openai
import orjson
import pytest

from apps.billing.models import Transfer, UsageRecord
from lib import tokenizer
from tests.proxy.conftest import Gateway, ServerThread, free_port
from tests.proxy.helpers import expected_cost
from tests.proxy.pipeline.test_timeouts import FAST

PROMPT = [{"role": "user", "content": "Describe the billing of a gateway in detail"}]
BODY = {"model": "gpt-4o-mini", "messages": PROMPT, "max_tokens": 200}


@pytest.fixture
def gateway_with(world):
    """Start a gateway whose ``settings.JETSTREAM`` has every time limit about a second (``FAST``) and these values."""
    from django.conf import settings
    from django.test import override_settings

    from apps.proxy.pipeline.app import ProxyApp
    from jetstream.asgi import build_application

    servers: list[ServerThread] = []

    def start(**jetstream) -> Gateway:
        with override_settings(JETSTREAM={**settings.JETSTREAM, **FAST, **jetstream}):
            app = ProxyApp()
        servers.append(ServerThread(build_application(app), free_port()).__enter__())
        return Gateway(world, servers[-1])

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def record_of(gateway) -> UsageRecord:
    gateway.drain(expect=1)
    return UsageRecord.objects.get()


def ledger(record: UsageRecord) -> dict[str, int]:
    """The record's ledger transfers: {"sell": amount, "buy": amount} (a zero cost posts none)."""
    return {t.idempotency_id.rsplit(":", 1)[1]: t.amount
            for t in Transfer.objects.filter(idempotency_id__startswith=f"usage:{record.request_id}:")}


def assert_billed(record: UsageRecord, input_tokens: int, output_tokens: int, *, cached: int = 0) -> None:
    """The record's costs are these tokens at the sell (1.25) and buy (1.10) coefficients, and the ledger moved them."""
    sell = expected_cost(input_tokens, output_tokens, cached=cached)
    buy = expected_cost(input_tokens, output_tokens, cached=cached, coefficient="1.10")
    assert (record.input_tokens, record.output_tokens, record.sell_cost, record.buy_cost) == (input_tokens, output_tokens, sell, buy)
    assert ledger(record) == {"sell": sell, "buy": buy}


def assert_free(record: UsageRecord) -> None:
    assert (record.sell_cost, record.buy_cost) == (0, 0) and ledger(record) == {}


def prompt_tokens() -> int:
    return tokenizer.count_chat_request(BODY, encoding=tokenizer.encoding_for_model("gpt-4o-mini"))


def raw_stream(gateway, body: dict, timeout: float = 20) -> list[str]:
    """The SSE ``data:`` payloads the client received."""
    response = httpx.post(f"{gateway.base_url}/chat/completions", json={**body, "stream": True}, timeout=timeout,
                          headers={"Authorization": f"Bearer {gateway.world.secret}"})
    assert response.status_code == 200, response.text
    return [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]


def text_of(payloads: list[str]) -> str:
    chunks = [orjson.loads(p) for p in payloads if p.startswith("{")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


# ---------------------------------------------------------------- complete


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_complete_is_billed_from_the_upstream_usage(gateway, fake_openai, stream):
    fake_openai.behavior(cached_tokens=5)
    client = gateway.client()
    if stream:
        chunks = list(client.chat.completions.create(**BODY, stream=True, stream_options={"include_usage": True}))
        usage = chunks[-1].usage
    else:
        usage = client.chat.completions.create(**BODY).usage
    record = record_of(gateway)
    assert (record.status, record.http_status, record.usage_counted_locally) == ("ok", 200, False)
    assert_billed(record, usage.prompt_tokens, usage.completion_tokens, cached=5)


# ---------------------------------------------------------------- client aborted


def test_client_aborted_before_the_first_byte_pays_the_prompt_it_sent_upstream(gateway_with, fake_openai):
    gateway = gateway_with(UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS=30)
    fake_openai.behavior(first_event_delay_ms=30_000)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.base_url}/chat/completions", json={**BODY, "stream": True}, timeout=0.5,
                   headers={"Authorization": f"Bearer {gateway.world.secret}"})
    assert fake_openai.wait_for_requests(1)[0].wait_finished(5)
    record = record_of(gateway)
    assert (record.status, record.http_status, record.usage_counted_locally) == ("client_closed", 499, True)
    assert_billed(record, prompt_tokens(), 0)


def test_client_aborted_mid_stream_pays_the_usage_the_upstream_sent_after_it_left(gateway, fake_openai):
    fake_openai.behavior(chunk_delay_ms=30, chunks=20, words=120)
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json={**BODY, "stream": True}, timeout=20,
                      headers={"Authorization": f"Bearer {gateway.world.secret}"}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: {")
    assert fake_openai.wait_for_requests(1)[0].wait_finished(10)
    record = record_of(gateway)
    assert (record.status, record.http_status, record.usage_counted_locally) == ("client_closed", 499, False)
    assert record.output_tokens > 50
    assert_billed(record, record.input_tokens, record.output_tokens)


# ---------------------------------------------------------------- upstream failed


@pytest.mark.parametrize("how", ["status", "error-event", "empty"])
def test_upstream_failed_before_output_costs_nothing(gateway, fake_openai, how):
    if how == "status":
        fake_openai.behavior(status=500)
    elif how == "error-event":
        fake_openai.behavior(stream_error_after=0, omit_usage=True)
    else:
        fake_openai.behavior(empty_stream=True)
    response = httpx.post(f"{gateway.base_url}/chat/completions", json={**BODY, "stream": True}, timeout=20,
                          headers={"Authorization": f"Bearer {gateway.world.secret}"})
    assert response.status_code == 502
    record = record_of(gateway)
    assert (record.status, record.http_status) == ("upstream_error", 502)
    assert record.error_code == {"status": "upstream_error", "error-event": "upstream_error", "empty": "upstream_empty"}[how]
    assert_free(record)


def test_an_error_event_before_any_content_fails_over_to_the_next_key(gateway, fake_openai):
    fake_openai.behavior(stream_error_after=0, stream_error_times=1)
    chunks = list(gateway.client().chat.completions.create(**BODY, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(fake_openai.requests) == 2
    record = record_of(gateway)
    assert (record.status, record.http_status) == ("ok", 200) and record.sell_cost > 0


def test_an_empty_json_answer_without_usage_costs_nothing(gateway, fake_openai):
    fake_openai.behavior(response_body={"id": "x", "object": "chat.completion",
                                        "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]})
    response = httpx.post(f"{gateway.base_url}/chat/completions", json=BODY, timeout=20,
                          headers={"Authorization": f"Bearer {gateway.world.secret}"})
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_empty"
    record = record_of(gateway)
    assert (record.status, record.http_status, record.error_code) == ("upstream_error", 502, "upstream_empty")
    assert_free(record)


def test_upstream_failed_mid_stream_bills_what_was_delivered_and_ends_with_an_error_event(gateway, fake_openai):
    fake_openai.behavior(stream_error_after=4, omit_usage=True, chunks=10, words=60)
    payloads = raw_stream(gateway, BODY)
    delivered = text_of(payloads)
    assert delivered and payloads[-1] == "[DONE]" and orjson.loads(payloads[-2])["error"]["code"] == "upstream_error"
    record = record_of(gateway)
    assert (record.status, record.http_status, record.usage_counted_locally) == ("upstream_error", 502, True)
    assert_billed(record, prompt_tokens(), tokenizer.count_text(delivered, encoding=tokenizer.encoding_for_model("gpt-4o-mini")))


def test_truncated_stream_is_not_shown_as_complete_and_bills_what_was_delivered(gateway, fake_openai):
    fake_openai.behavior(truncate_after_chunks=4, chunks=10, words=60)
    payloads = raw_stream(gateway, {**BODY, "stream_options": {"include_usage": True}})
    delivered = text_of(payloads)
    error = orjson.loads(payloads[-2])["error"]
    assert delivered and error["code"] == "upstream_truncated" and payloads[-1] == "[DONE]"
    record = record_of(gateway)
    assert (record.status, record.http_status, record.error_code) == ("upstream_error", 502, "upstream_truncated")
    assert record.usage_counted_locally
    assert_billed(record, prompt_tokens(), tokenizer.count_text(delivered, encoding=tokenizer.encoding_for_model("gpt-4o-mini")))


def test_the_sdk_sees_a_truncated_stream_fail(gateway, fake_openai):
    fake_openai.behavior(truncate_after_chunks=3)
    with pytest.raises(openai.APIError, match="ended before the answer was complete"):
        list(gateway.client().chat.completions.create(**BODY, stream=True))


# ---------------------------------------------------------------- timed out


def test_timed_out_before_the_first_byte_costs_nothing(gateway_with, fake_openai):
    gateway = gateway_with()
    fake_openai.behavior(hang=True)
    response = httpx.post(f"{gateway.base_url}/chat/completions", json=BODY, timeout=20,
                          headers={"Authorization": f"Bearer {gateway.world.secret}"})
    assert response.status_code == 504
    record = record_of(gateway)
    assert (record.status, record.http_status, record.error_code) == ("upstream_error", 504, "upstream_timeout")
    assert_free(record)


def test_timed_out_mid_stream_bills_what_was_delivered(gateway_with, fake_openai):
    gateway = gateway_with()
    fake_openai.behavior(stall_after_chunks=4, chunks=10, words=60)
    payloads = raw_stream(gateway, BODY)
    delivered = text_of(payloads)
    assert delivered and orjson.loads(payloads[-2])["error"]["code"] == "upstream_timeout"
    record = record_of(gateway)
    assert (record.status, record.http_status, record.usage_counted_locally) == ("upstream_error", 504, True)
    assert_billed(record, prompt_tokens(), tokenizer.count_text(delivered, encoding=tokenizer.encoding_for_model("gpt-4o-mini")))


# ---------------------------------------------------------------- usage missing, zero, implausible


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", ["missing", "zero", "zero-output"])
def test_missing_or_implausible_usage_is_counted_locally_to_the_honest_figure(gateway, fake_openai, stream, fault):
    honest = gateway.client().chat.completions.create(**BODY).usage  # the fake is deterministic: same prompt, same answer
    if fault == "missing":
        fake_openai.behavior(omit_usage=True)
    elif fault == "zero":
        fake_openai.behavior(usage_override={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
    else:
        fake_openai.behavior(usage_override={"completion_tokens": 0, "total_tokens": 0})  # input kept, output implausible
    client = gateway.client()
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**BODY, stream=True) if c.choices)
    else:
        text = client.chat.completions.create(**BODY).choices[0].message.content
    assert text
    gateway.drain(expect=2)
    record = UsageRecord.objects.get(usage_counted_locally=True)
    assert (record.status, record.http_status, record.stream) == ("ok", 200, stream)
    # The same tokenizer as the upstream's: the local count is the honest figure, not 0 and not less.
    assert_billed(record, honest.prompt_tokens, honest.completion_tokens)


# ---------------------------------------------------------------- wrong framing


def test_json_to_a_stream_request_becomes_a_stream_and_is_billed(gateway, fake_openai):
    fake_openai.behavior(json_for_stream=True)
    chunks = list(gateway.client().chat.completions.create(**BODY, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    record = record_of(gateway)
    assert (record.status, record.http_status, record.usage_counted_locally) == ("ok", 200, False)
    assert_billed(record, usage.prompt_tokens, usage.completion_tokens)


def test_sse_to_a_non_stream_request_is_assembled_and_billed(gateway, fake_openai):
    fake_openai.behavior(sse_for_non_stream=True)
    completion = gateway.client().chat.completions.create(**BODY)
    assert completion.object == "chat.completion" and completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop" and completion.model == "gpt-4o-mini"
    record = record_of(gateway)
    assert (record.status, record.usage_counted_locally) == ("ok", False)
    assert_billed(record, completion.usage.prompt_tokens, completion.usage.completion_tokens)


# ---------------------------------------------------------------- the rest of item 3


def test_provider_finish_reason_words_reach_the_client_as_openais(gateway, fake_openai):
    fake_openai.behavior(finish_reason="tool_use")
    client = gateway.client()
    assert client.chat.completions.create(**BODY).choices[0].finish_reason == "tool_calls"
    chunks = list(client.chat.completions.create(**BODY, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_a_bare_done_ends_a_stream_cleanly(gateway, fake_openai):
    fake_openai.behavior(done_without_space=True)
    chunks = list(gateway.client().chat.completions.create(**BODY, stream=True))
    assert chunks and record_of(gateway).status == "ok"


def test_the_mock_bills_a_stream_without_include_usage_exactly_as_unstreamed(gateway):
    client = gateway.client()
    body = {"model": "demo-chat", "messages": PROMPT, "max_tokens": 300}
    unstreamed = client.chat.completions.create(**body)
    streamed = list(client.chat.completions.create(**body, stream=True))
    assert all(c.usage is None for c in streamed)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == unstreamed.choices[0].message.content
    gateway.drain(expect=2)
    records = {r.stream: r for r in UsageRecord.objects.all()}
    assert not records[True].usage_counted_locally
    assert (records[True].input_tokens, records[True].output_tokens, records[True].sell_cost) == (
        records[False].input_tokens, records[False].output_tokens, records[False].sell_cost)
