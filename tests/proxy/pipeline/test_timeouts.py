"""Upstream time limits, keep-alives and reservation lifetimes (issue 7, items 7 and 8).

Every limit is shortened to about a second and fired against FakeOpenAI on loopback: an upstream
that accepts and stays silent, one that sends headers and then nothing, one that stalls mid-stream,
and a port that never completes a TCP handshake.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import redis as redis_lib
from django.conf import settings
from django.test import override_settings

from apps.billing.models import UsageRecord
from apps.proxy import redis_scripts
from lib import tokenizer
from tests.proxy.conftest import Gateway, ServerThread, free_port
from tests.proxy.helpers import GOOD, expected_cost

# Every limit about a second: long enough for a healthy loopback answer on a busy machine.
FAST = {
    "UPSTREAM_CONNECT_TIMEOUT_SECONDS": 1.0,
    "UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS": 1.0,
    "UPSTREAM_IDLE_TIMEOUT_SECONDS": 1.0,
    "UPSTREAM_TIMEOUT_SECONDS": 1.0,
    "SSE_KEEPALIVE_SECONDS": 0,
    "CLIENT_GONE_DRAIN_SECONDS": 0.5,
}
STREAM = {**GOOD, "stream": True}


@pytest.fixture
def gateway_with(world):
    """Start a gateway whose ``settings.JETSTREAM`` has these values (FAST by default)."""
    from apps.proxy.pipeline.app import ProxyApp
    from jetstream.asgi import build_application

    servers: list[ServerThread] = []

    def start(**jetstream) -> Gateway:
        with override_settings(JETSTREAM={**settings.JETSTREAM, **FAST, **jetstream}):
            app = ProxyApp()
        server = ServerThread(build_application(app), free_port()).__enter__()
        servers.append(server)
        return Gateway(world, server)

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def send(gateway: Gateway, body: dict, *, headers: dict | None = None, timeout: float = 20) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=timeout,
                      headers={"Authorization": f"Bearer {gateway.world.secret}", **(headers or {})})


def only_record(gateway: Gateway) -> UsageRecord:
    gateway.drain(expect=1)
    return UsageRecord.objects.get()


# ---------------------------------------------------------------- before the first byte


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_it_answers_504_when_every_key_accepts_and_stays_silent(gateway_with, fake_openai, stream):
    gateway = gateway_with()
    fake_openai.behavior(hang=True)
    started = time.monotonic()
    response = send(gateway, {**GOOD, "stream": stream})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 10  # two keys × 1 s, not 600 s each
    assert len(fake_openai.requests) == 2  # the first key's timeout failed over to the second
    record = only_record(gateway)
    assert (record.status, record.http_status, record.error_code, record.sell_cost) == ("upstream_error", 504, "upstream_timeout", 0)


def test_a_first_byte_timeout_fails_over_to_the_second_key_which_then_goes_first(gateway_with, fake_openai):
    gateway = gateway_with()
    world = gateway.world
    # The first request gets headers and then silence (the first-byte limit covers a stream's first body bytes too).
    fake_openai.behavior(first_event_delay_ms=30_000, slow_times=1)
    chunks = list(gateway.client().chat.completions.create(**STREAM))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(fake_openai.requests) == 2
    record = only_record(gateway)
    assert (record.status, record.http_status, record.supplier_key_id) == ("ok", 200, world.key2.pk)
    # The silent key cools down: the next call goes to the second key first.
    UsageRecord.objects.all().delete()
    assert send(gateway, GOOD).status_code == 200
    assert only_record(gateway).supplier_key_id == world.key2.pk


def test_headers_then_silence_is_504_before_any_keep_alive(gateway_with, fake_openai):
    gateway = gateway_with()
    fake_openai.behavior(first_event_delay_ms=30_000)
    response = send(gateway, STREAM)
    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    record = only_record(gateway)
    assert (record.status, record.http_status, record.error_code, record.sell_cost) == ("upstream_error", 504, "upstream_timeout", 0)


def test_once_keep_alives_went_out_a_timeout_is_an_error_event(gateway_with, fake_openai):
    gateway = gateway_with(SSE_KEEPALIVE_SECONDS=0.3)
    fake_openai.behavior(first_event_delay_ms=30_000)
    response = send(gateway, STREAM)
    assert response.status_code == 200
    lines = response.text.split("\n\n")
    assert lines[0] == ": keep-alive"
    assert '"code":"upstream_timeout"' in response.text and response.text.endswith("data: [DONE]\n\n")
    assert not any(line.startswith("data: {\"id\"") for line in lines)
    record = only_record(gateway)
    assert (record.status, record.http_status, record.error_code, record.sell_cost) == ("upstream_error", 504, "upstream_timeout", 0)


def test_a_connect_timeout_is_504_and_fails_over(gateway_with, fake_openai):
    # A listening socket whose accept queue is full: the kernel drops the next SYNs, so connecting hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        gateway = gateway_with(UPSTREAM_CONNECT_TIMEOUT_SECONDS=0.5, UPSTREAM_TIMEOUT_SECONDS=5)
        gateway.world.provider.base_url = f"http://127.0.0.1:{port}/v1"
        gateway.world.provider.save()
        gateway.wait_config()
        started = time.monotonic()
        response = send(gateway, GOOD)
        assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
        assert "connect" in response.json()["error"]["message"] and str(port) not in response.text
        assert 1.0 <= time.monotonic() - started < 4  # two keys × 0.5 s: the first key's timeout failed over
        record = only_record(gateway)
        assert (record.status, record.http_status, record.error_code) == ("upstream_error", 504, "upstream_timeout")
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


# ---------------------------------------------------------------- streams and answers that take long


def test_an_idle_stream_ends_with_a_504_event_and_bills_what_was_generated(gateway_with, fake_openai):
    gateway = gateway_with()
    fake_openai.behavior(stall_after_chunks=4, chunks=20, words=100, omit_usage=True)
    response = send(gateway, STREAM)
    assert response.status_code == 200
    events = [e for e in response.text.split("\n\n") if e]
    assert events[0].startswith("data: {") and '"content"' in response.text
    assert '"code":"upstream_timeout"' in events[-2] and events[-1] == "data: [DONE]"
    record = only_record(gateway)
    assert (record.status, record.http_status, record.error_code) == ("upstream_error", 504, "upstream_timeout")
    assert record.usage_counted_locally and record.output_tokens > 0 and record.sell_cost > 0
    # The gateway closed the stalled upstream connection.
    assert fake_openai.requests[0].wait_finished(5) and fake_openai.requests[0].client_disconnected


def test_a_healthy_stream_longer_than_the_total_timeout_is_not_cut(gateway_with, fake_openai):
    gateway = gateway_with(UPSTREAM_TIMEOUT_SECONDS=0.5)
    fake_openai.behavior(chunk_delay_ms=150, chunks=12, words=60)
    started = time.monotonic()
    chunks = list(gateway.client().chat.completions.create(**STREAM, stream_options={"include_usage": True}))
    assert time.monotonic() - started > 1.5
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    record = only_record(gateway)
    assert (record.status, record.http_status) == ("ok", 200) and not record.usage_counted_locally


def test_a_non_streamed_answer_is_bounded_by_the_total_not_the_first_byte_limit(gateway_with, fake_openai):
    # Upstreams send a non-streamed answer's headers with the finished answer: 1.5 s of silence is fine…
    gateway = gateway_with(UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS=0.5, UPSTREAM_TIMEOUT_SECONDS=5)
    fake_openai.behavior(latency_ms=1500)
    assert send(gateway, GOOD).status_code == 200
    # …until the total limit.
    fake_openai.reset()
    fake_openai.behavior(latency_ms=8000)
    slow = gateway_with(UPSTREAM_TIMEOUT_SECONDS=1.0)
    response = send(slow, GOOD)
    assert response.status_code == 504 and "total" in response.json()["error"]["message"]


# ---------------------------------------------------------------- keep-alives


def test_keep_alives_arrive_during_a_slow_first_token_and_the_sdk_parses_the_stream(gateway_with, fake_openai):
    gateway = gateway_with(SSE_KEEPALIVE_SECONDS=0.3, UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS=10)
    fake_openai.behavior(first_event_delay_ms=1500)
    raw = send(gateway, STREAM, headers={"Idempotency-Key": "slow-model-1"})
    assert raw.status_code == 200
    head, _, rest = raw.text.partition("data: ")
    assert head.count(": keep-alive\n\n") >= 2 and head.replace(": keep-alive\n\n", "") == ""
    # Once events flow, a keep-alive may still fill a pause (a loaded machine), but only between whole events.
    blocks = [b for b in ("data: " + rest).split("\n\n") if b]
    assert all(b == ": keep-alive" or (b.startswith("data: ") and "\n" not in b) for b in blocks), blocks[:5]
    text = "".join(c.choices[0].delta.content or "" for c in gateway.client().chat.completions.create(**STREAM) if c.choices)
    assert text
    # A replay of the stored answer carries the events, not the keep-alives.
    replay = send(gateway, STREAM, headers={"Idempotency-Key": "slow-model-1"})
    assert replay.status_code == 200 and replay.text.startswith("data: {") and ": keep-alive" not in replay.text
    assert replay.text == "data: " + rest


# ---------------------------------------------------------------- a client that leaves


def test_a_client_that_leaves_mid_stream_closes_the_upstream_after_the_drain_time(gateway_with, fake_openai):
    gateway = gateway_with(CLIENT_GONE_DRAIN_SECONDS=0.5)
    fake_openai.behavior(chunk_delay_ms=100, chunks=200, words=400)
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json=STREAM, timeout=20,
                      headers={"Authorization": f"Bearer {gateway.world.secret}"}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: {")
    upstream = fake_openai.wait_for_requests(1)[0]
    # 200 chunks × 100 ms would take 20 s: the gateway hung up about half a second after the client.
    assert upstream.wait_finished(5) and upstream.client_disconnected and not upstream.completed
    record = only_record(gateway)
    assert (record.status, record.http_status) == ("client_closed", 499)
    assert record.usage_counted_locally and record.output_tokens > 0 and record.sell_cost > 0


def test_a_client_that_leaves_before_the_first_byte_closes_the_upstream_at_once(gateway_with, fake_openai):
    gateway = gateway_with(UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS=30, CLIENT_GONE_DRAIN_SECONDS=30)
    fake_openai.behavior(first_event_delay_ms=30_000)
    with pytest.raises(httpx.ReadTimeout):
        send(gateway, STREAM, timeout=0.5)
    upstream = fake_openai.wait_for_requests(1)[0]
    assert upstream.wait_finished(5) and upstream.client_disconnected
    record = only_record(gateway)
    assert (record.status, record.http_status, record.output_tokens) == ("client_closed", 499, 0)
    assert record.input_tokens > 0  # the prompt reached the upstream: it is billed


# ---------------------------------------------------------------- reservations outlive nothing they cover


def test_with_every_limit_shortened_a_running_request_keeps_its_reservation(gateway_with, fake_openai):
    """The issue's case: reservation lifetime 1 s, every timeout shortened in proportion, a stream
    running three times as long, the sweeper running all the while: the reservation stays and the
    token's spend limit keeps counting it."""
    body = {**STREAM, "max_tokens": 300}
    prompt = tokenizer.count_chat_request(body, encoding=tokenizer.encoding_for_model("gpt-4o-mini"))
    reservation = expected_cost(prompt, 300)
    gateway = gateway_with(HOLD_TTL_SECONDS=1, UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS=0.5, UPSTREAM_IDLE_TIMEOUT_SECONDS=0.5,
                           UPSTREAM_TIMEOUT_SECONDS=0.5, SSE_KEEPALIVE_SECONDS=0.2)
    token = gateway.world.token
    token.limit_total = reservation * 3 // 2  # room for one request in flight, not two
    token.save()
    gateway.wait_config()
    fake_openai.behavior(chunk_delay_ms=150, chunks=20, words=40)
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    sweep = client.register_script(redis_scripts.SWEEP)
    stop = threading.Event()

    def sweeper() -> None:  # the meter writer's sweep, far more often than its 1 s
        while not stop.is_set():
            sweep(keys=[redis_scripts.RESERVATIONS_KEY, redis_scripts.STREAM_KEY], args=[int(time.time()), 500])
            time.sleep(0.05)

    thread = threading.Thread(target=sweeper, daemon=True)
    thread.start()
    try:
        with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json=body, timeout=20,
                          headers={"Authorization": f"Bearer {gateway.world.secret}"}) as response:
            assert response.status_code == 200
            seen, refused = [], []
            for line in filter(None, response.iter_lines()):
                seen.append(line)
                if len(seen) == 12 and not refused:  # 12 events × 150 ms: past the 1 s lifetime
                    assert client.zcard(redis_scripts.RESERVATIONS_KEY) == 1
                    refused.append(send(gateway, {**GOOD, "max_tokens": 300}))
        assert seen[-1] == "data: [DONE]"
    finally:
        stop.set()
        thread.join(5)
    assert refused[0].status_code == 429 and refused[0].json()["error"]["code"] == "limit_total"
    gateway.drain(expect=2)
    records = {r.status: r for r in UsageRecord.objects.all()}
    assert set(records) == {"ok", "rejected"}  # nothing recorded as failed / gateway_lost
    assert client.zcard(redis_scripts.RESERVATIONS_KEY) == 0
    assert int(client.get(redis_scripts.total_key(token.pk))) == records["ok"].sell_cost
    assert int(client.hget(redis_scripts.company_key(gateway.world.company.pk), "out")) == 0
    client.close()
