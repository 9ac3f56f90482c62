"""Client-controlled headers are not identity: through the real `bin/serve`, under uvicorn and Daphne.

A client on 127.0.0.1 that writes `X-Forwarded-For: 10.1.2.3` is still 127.0.0.1 — for a token's
IP allow-list and in its usage record — unless the operator configured that header and trusted
the peer (JETSTREAM_TRUSTED_PROXY_HEADER / JETSTREAM_TRUSTED_PROXIES).
"""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest

from apps.billing.models import UsageRecord
from tests.proxy.conftest import Gateway
from tests.proxy.test_durability import child_env
from tests.test_serve import served

SPOOFED = {"X-Forwarded-For": "10.1.2.3"}


def chat(url: str, secret: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=30, headers={"Authorization": f"Bearer {secret}", **headers},
                      json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})


def recorded_ip(world) -> str:
    Gateway(world, SimpleNamespace(port=0)).drain(expect=1)
    return UsageRecord.objects.get().client_ip


@pytest.fixture
def allowed_10_8(world):
    world.token.ip_allow = ["10.0.0.0/8"]
    world.token.save()
    return world


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_it_ignores_x_forwarded_for_by_default(allowed_10_8, server):
    with served(child_env(JETSTREAM_SERVER=server)) as url:
        refused = chat(url, allowed_10_8.secret, SPOOFED)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "ip_not_allowed"
    assert "127.0.0.1" in refused.json()["error"]["message"]
    assert recorded_ip(allowed_10_8) == "127.0.0.1"


# uvicorn is the server with a proxy-header default of its own to defeat; the rule itself is the app's.
@pytest.mark.parametrize("server", ["uvicorn"])
def test_it_ignores_x_forwarded_for_when_only_another_header_is_trusted(allowed_10_8, server):
    with served(child_env(JETSTREAM_SERVER=server, JETSTREAM_TRUSTED_PROXY_HEADER="X-Real-IP", JETSTREAM_TRUSTED_PROXIES="127.0.0.1/32")) as url:
        refused = chat(url, allowed_10_8.secret, SPOOFED)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "ip_not_allowed"
    assert recorded_ip(allowed_10_8) == "127.0.0.1"


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_it_honours_the_configured_header_from_a_trusted_proxy(allowed_10_8, server):
    with served(child_env(JETSTREAM_SERVER=server, JETSTREAM_TRUSTED_PROXY_HEADER="X-Forwarded-For", JETSTREAM_TRUSTED_PROXIES="127.0.0.1/32")) as url:
        answered = chat(url, allowed_10_8.secret, SPOOFED)
    assert answered.status_code == 200, answered.text
    assert recorded_ip(allowed_10_8) == "10.1.2.3"


# uvicorn is the server with a proxy-header default of its own to defeat; the rule itself is the app's.
@pytest.mark.parametrize("server", ["uvicorn"])
def test_it_ignores_the_configured_header_from_an_untrusted_peer(allowed_10_8, server):
    with served(child_env(JETSTREAM_SERVER=server, JETSTREAM_TRUSTED_PROXY_HEADER="X-Forwarded-For", JETSTREAM_TRUSTED_PROXIES="192.0.2.0/24")) as url:
        refused = chat(url, allowed_10_8.secret, SPOOFED)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "ip_not_allowed"
    assert recorded_ip(allowed_10_8) == "127.0.0.1"


def test_spoofed_addresses_do_not_consume_the_distinct_ip_cap(world):
    world.token.max_distinct_ips = 1
    world.token.save()
    with served(child_env()) as url:
        answers = [chat(url, world.secret, {"X-Forwarded-For": f"10.1.2.{n}"}) for n in (1, 2, 3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    Gateway(world, SimpleNamespace(port=0)).drain(expect=3)
    assert set(UsageRecord.objects.values_list("client_ip", flat=True)) == {"127.0.0.1"}
