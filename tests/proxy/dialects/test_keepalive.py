"""Keep-alives in the dialects' own form while the upstream thinks: Anthropic's ``ping`` event, an
SSE comment for Responses — and the SDKs read through them."""

from __future__ import annotations

import anthropic
import httpx

from tests.proxy.pipeline.test_timeouts import gateway_with  # noqa: F401 - the fixture

SLOW = {"SSE_KEEPALIVE_SECONDS": 0.2, "UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS": 20, "UPSTREAM_IDLE_TIMEOUT_SECONDS": 20}


def test_a_silent_upstream_gets_anthropic_pings_before_the_message(gateway_with, fake_openai):  # noqa: F811
    gateway = gateway_with(**SLOW)
    fake_openai.behavior(first_event_delay_ms=900)
    body = {"model": "gpt-4o-mini", "max_tokens": 30, "stream": True, "messages": [{"role": "user", "content": "Think"}]}
    response = httpx.post(gateway.base_url + "/messages", json=body, timeout=20, headers={"x-api-key": gateway.world.secret})
    events = response.text.split("\n\n")
    assert events[0] == 'event: ping\ndata: {"type":"ping"}'
    assert events.index(next(e for e in events if e.startswith("event: message_start"))) >= 2
    assert events[-2].startswith("event: message_stop")

    fake_openai.behavior(first_event_delay_ms=900)
    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.world.secret, max_retries=0)
    with client.messages.stream(model="gpt-4o-mini", max_tokens=30, messages=[{"role": "user", "content": "Think"}]) as stream:
        assert stream.get_final_message().content[0].text


def test_a_silent_upstream_gets_comments_in_a_responses_stream(gateway_with, fake_openai):  # noqa: F811
    gateway = gateway_with(**SLOW)
    fake_openai.behavior(first_event_delay_ms=900)
    response = httpx.post(gateway.base_url + "/responses", json={"model": "gpt-4o-mini", "input": "Think", "stream": True},
                          timeout=20, headers={"Authorization": f"Bearer {gateway.world.secret}"})
    events = response.text.split("\n\n")
    assert events[0] == ": keep-alive" and events[-2].startswith("event: response.completed")
    fake_openai.behavior(first_event_delay_ms=900)
    kinds = [e.type for e in gateway.client().responses.create(model="gpt-4o-mini", input="Think", stream=True)]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
