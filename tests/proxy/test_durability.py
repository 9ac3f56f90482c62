"""Nothing charged is lost: client disconnects, a killed writer, a killed proxy, two replicas."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis
from django.conf import settings
from django.db import connection

from apps.billing import services as ledger
from apps.billing.models import Transfer, UsageRecord
from apps.proxy import redis_scripts
from tests.proxy.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def child_database_url() -> str:
    conf = connection.settings_dict
    host = conf["HOST"]
    if host.startswith("/"):
        return f"postgres://{conf['USER']}@/{conf['NAME']}?host={host}"
    return f"postgres://{conf['USER']}:{conf['PASSWORD']}@{host}:{conf['PORT'] or 5432}/{conf['NAME']}"


def child_env(**extra) -> dict:
    env = dict(os.environ, DATABASE_URL=child_database_url(), REDIS_URL=settings.REDIS_URL, DEBUG="true")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_proxy(port: int, *, server: str = "uvicorn", **env) -> subprocess.Popen:
    if server == "daphne":
        command = [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "jetstream.asgi:application"]
    else:
        command = [PYTHON, "-m", "uvicorn", "jetstream.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                   "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--lifespan", "on"]
    process = subprocess.Popen(command, cwd=ROOT, env=child_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return process
        except httpx.HTTPError:
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read().decode()[-2000:]) from None
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("proxy did not start")


def start_writer(name: str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "manage.py", "jetstream_meter", "--consumer", name, "--block-ms", "20", "--batch-size", "20",
                             "--reclaim-idle-ms", "1000"],
                            cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(predicate, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)


def chat(base_url: str, secret: str, **body):
    return httpx.post(f"{base_url}/chat/completions", timeout=30, headers={"Authorization": f"Bearer {secret}"},
                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "tell me a story"}], **body})


def test_a_client_that_disconnects_mid_stream_is_billed_for_what_was_generated(gateway, fake_openai):
    fake_openai.behavior(chunk_delay_ms=40, chunks=20, words=120)
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {gateway.world.secret}"},
                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "long story"}], "stream": True}) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(3)]
    assert any(line.startswith("data: {") for line in received)
    upstream = fake_openai.wait_for_requests(1)[0]
    assert upstream.wait_finished(10)
    # The gateway kept reading upstream after the client left, up to the usage chunk.
    assert upstream.completed and not upstream.client_disconnected
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.status == "client_closed" and record.http_status == 499
    assert record.output_tokens > 50 and record.sell_cost > 0 and not record.usage_counted_locally
    assert Transfer.objects.get(idempotency_id=f"usage:{record.request_id}:sell").amount == record.sell_cost


def test_a_stream_cut_off_upstream_without_usage_is_counted_locally_not_billed_zero(gateway, fake_openai):
    fake_openai.behavior(drop_after_chunks=5, chunks=20, words=100, omit_usage=True)
    response = httpx.post(f"{gateway.base_url}/chat/completions", timeout=30, headers={"Authorization": f"Bearer {gateway.world.secret}"},
                          json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "story"}], "stream": True})
    assert response.status_code == 200
    assert '"upstream_broken"' in response.text and response.text.rstrip().endswith("data: [DONE]")
    gateway.drain(expect=1)
    record = UsageRecord.objects.get()
    assert record.status == "upstream_error" and record.usage_counted_locally
    assert record.output_tokens > 0 and record.sell_cost > 0


def test_a_killed_writer_loses_no_records_and_writes_none_twice(gateway):
    first = start_writer("writer-a")
    try:
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(chat, gateway.base_url, gateway.world.secret, max_tokens=20) for _ in range(150)]
            wait_for(lambda: UsageRecord.objects.count() >= 20, 30, "the first writer wrote nothing")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            responses = [f.result() for f in futures]
        assert all(r.status_code == 200 for r in responses)
        second = start_writer("writer-b")
        try:
            wait_for(lambda: UsageRecord.objects.count() >= 150, 60, "records were lost")
            stream = redis.Redis.from_url(settings.REDIS_URL)
            # The entries the dead writer committed but never acknowledged are taken over too.
            wait_for(lambda: stream.xpending(redis_scripts.STREAM_KEY, "meter")["pending"] == 0, 30, "entries left unacknowledged")
        finally:
            second.terminate()
            second.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    ids = {r.headers["x-request-id"] for r in responses}
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == ids
    assert Transfer.objects.filter(kind="usage").count() == 150
    charged = sum(UsageRecord.objects.values_list("sell_cost", flat=True))
    assert ledger.balance(ledger.company_wallet(gateway.world.company)).posted == 1000 * 1_000_000 - charged
    assert ledger.verify_ledger() == []
    co = redis.Redis.from_url(settings.REDIS_URL).hgetall(redis_scripts.company_key(gateway.world.company.pk))
    assert int(co[b"out"]) == 0  # every written charge left the outstanding counter exactly once


def test_a_proxy_killed_right_after_answering_loses_no_record(world):
    port = free_port()
    proxy = start_proxy(port)
    try:
        responses = [chat(f"http://127.0.0.1:{port}/v1", world.secret, max_tokens=10) for _ in range(5)]
    finally:
        proxy.send_signal(signal.SIGKILL)
        proxy.wait(10)
    assert all(r.status_code == 200 for r in responses)
    from tests.proxy.conftest import Gateway

    Gateway.drain(Gateway.__new__(Gateway), expect=5)
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == {r.headers["x-request-id"] for r in responses}


def test_a_proxy_killed_mid_request_leaves_a_hold_the_sweeper_releases(world, fake_openai):
    fake_openai.behavior(latency_ms=10_000)
    port = free_port()
    proxy = start_proxy(port, JETSTREAM_HOLD_TTL_SECONDS=1)
    client = redis.Redis.from_url(settings.REDIS_URL)
    company_key = redis_scripts.company_key(world.company.pk)
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(chat, f"http://127.0.0.1:{port}/v1", world.secret, max_tokens=50)
            wait_for(lambda: client.zcard(redis_scripts.RESERVATIONS_KEY) == 1, 10, "no hold was taken")
            assert int(client.hget(company_key, "out")) > 0
            proxy.send_signal(signal.SIGKILL)
            proxy.wait(10)
            try:
                pending.result()
            except httpx.HTTPError:
                pass
            from apps.proxy.reconcile import reconcile

            assert reconcile() == []  # the orphaned hold is accounted for as in flight
    finally:
        if proxy.poll() is None:
            proxy.kill()
        fake_openai.reset()
    time.sleep(1.2)
    from tests.proxy.conftest import Gateway

    Gateway.drain(Gateway.__new__(Gateway), expect=1)
    record = UsageRecord.objects.get()
    assert (record.status, record.error_code, record.sell_cost) == ("failed", "gateway_lost", 0)
    assert client.zcard(redis_scripts.RESERVATIONS_KEY) == 0 and int(client.hget(company_key, "out")) == 0
    assert int(client.get(redis_scripts.total_key(world.token.pk))) == 0


def test_block_and_revoke_reach_two_proxy_processes_within_a_second(world):
    ports = [free_port(), free_port()]
    proxies = [start_proxy(port) for port in ports]
    try:
        urls = [f"http://127.0.0.1:{port}/v1" for port in ports]
        assert [chat(url, world.secret, model="demo-chat").status_code for url in urls] == [200, 200]
        token = world.token
        for status, expected in (("blocked", 403), ("revoked", 401), ("active", 200)):
            token.status = status
            token.save()
            changed_at = time.monotonic()
            for url in urls:
                wait_for(lambda url=url, expected=expected: chat(url, world.secret, model="demo-chat").status_code == expected, 1.0,
                         f"{status} did not reach {url} within 1 s")
            assert time.monotonic() - changed_at < 1.0
    finally:
        for proxy in proxies:
            proxy.kill()
            proxy.wait(10)


def test_the_same_app_serves_under_daphne(world):
    import openai

    port = free_port()
    proxy = start_proxy(port, server="daphne")
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=world.secret, max_retries=0)
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        chunks = list(client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "hi"}], stream=True,
                                                     stream_options={"include_usage": True}))
        admin = httpx.get(f"http://127.0.0.1:{port}/accounts/login/")  # the sign-in page (the admin's login leads there)
    finally:
        proxy.kill()
        proxy.wait(10)
    assert completion.choices[0].message.content and chunks[-1].usage.model_extra["cost"] > 0
    assert admin.status_code == 200  # Django behind the same router
