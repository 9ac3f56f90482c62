"""``make run``'s demo: a prompt with a name and a phone number reaches the mock provider masked,
the answer comes back with the originals, and a moderation report shows it."""

from __future__ import annotations

import logging
import re

import openai
import pytest
import redis as redis_lib
from django.conf import settings
from django.utils import translation

from apps.config.demo_moderation import DEMO_PROMPT
from apps.moderation.report_models import ModerationReport
from apps.moderation.reports import METRICS_KEY, write_report_batch
from tests.config.conftest import run_command
from tests.proxy.conftest import ServerThread, flush_gateway_keys, free_port

TOKEN = re.compile(r"js-[A-Za-z0-9_-]{32,}")


@pytest.fixture
def demo(transactional_db):
    flush_gateway_keys()
    with translation.override("en"):
        out, _ = run_command("jetstream_demo")
    yield out
    flush_gateway_keys()


class Received(logging.Handler):
    """What the mock logged it received (the logger does not propagate to pytest's capture)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "mock demo-echo received" in record.getMessage():
            self.lines.append(record.getMessage())


def test_the_demo_masks_a_name_and_a_phone_on_the_way_out_and_restores_them(demo):
    from apps.proxy.pipeline.app import ProxyApp
    from jetstream.asgi import build_application

    assert '"model": "demo-echo"' in demo and "/company/moderation/" in demo
    secret = TOKEN.search(demo).group(0)
    received = Received()
    logger = logging.getLogger("jetstream.providers")
    logger.addHandler(received)
    level = logger.level
    logger.setLevel(logging.INFO)
    with ServerThread(build_application(ProxyApp()), free_port()) as server:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=secret, max_retries=0)
        answer = client.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": DEMO_PROMPT}])
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="demo-echo", messages=[{"role": "user", "content": DEMO_PROMPT}], stream=True) if c.choices)
    logger.removeHandler(received)
    logger.setLevel(level)
    assert answer.choices[0].message.content == DEMO_PROMPT
    assert streamed == DEMO_PROMPT
    assert len(received.lines) == 2
    assert all("912" not in line and "Петров" not in line and "[PHONE_1]" in line and "[PERSON_1]" in line
               for line in received.lines)
    client_redis = redis_lib.Redis.from_url(settings.REDIS_URL)
    try:
        assert write_report_batch(client_redis) >= 2
        client_redis.delete(METRICS_KEY)
    finally:
        client_redis.close()
    reports = ModerationReport.objects.filter(company__slug="demo", action="mask")
    assert {r.category for r in reports} >= {"phone", "person"}
    assert all("912" not in r.snippet for r in reports)
