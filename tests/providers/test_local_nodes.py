"""Local nodes outside the proxy: the model's rules (SSRF, kind, cost forms, the encrypted key), the
health check against real loopback servers, and the admin's node pages (health and cost columns)."""

from __future__ import annotations

import pytest
import redis as redis_lib
from django.conf import settings
from django.core.exceptions import ValidationError
from django.urls import reverse

from apps.providers import admin as providers_admin
from apps.providers.models import LocalNode, NodeCostMode, NodeHealth, Provider
from apps.providers.node_health import LOAD_PREFIX, check_nodes, health_url, outstanding_by_node
from tests.fakes.openai_upstream import DEFAULT_KEY

RUB = 1_000_000


@pytest.fixture
def local(db):
    return Provider.objects.create(slug="local", kind="openai_compatible", base_url="http://127.0.0.1:9/v1", internal=True)


def node(provider, **fields) -> LocalNode:
    values = {"name": "n1", "base_url": "http://127.0.0.1:8000/v1", "internal": True, **fields}
    return LocalNode(provider=provider, **values)


def test_a_private_address_needs_the_internal_flag(local):
    with pytest.raises(ValidationError) as caught:
        node(local, base_url="http://10.0.0.5:8000/v1", internal=False).full_clean()
    assert "base_url" in caught.value.message_dict
    with pytest.raises(ValidationError):
        node(local, base_url="http://169.254.169.254/v1", internal=False).full_clean()
    node(local, base_url="http://10.0.0.5:8000/v1", internal=True).full_clean()


def test_only_openai_compatible_providers_have_nodes(db):
    openai = Provider.objects.create(slug="oa", kind="openai", base_url="http://127.0.0.1:9/v1", internal=True)
    with pytest.raises(ValidationError) as caught:
        node(openai).full_clean()
    assert "provider" in caught.value.message_dict


def test_a_gpu_hour_cost_needs_a_throughput_and_a_path_starts_with_a_slash(local):
    with pytest.raises(ValidationError) as caught:
        node(local, cost_mode=NodeCostMode.GPU_HOUR, gpu_hour=250 * RUB).full_clean()
    assert "tokens_per_hour" in caught.value.message_dict
    with pytest.raises(ValidationError) as caught:
        node(local, health_path="health").full_clean()
    assert "health_path" in caught.value.message_dict


def test_both_cost_forms_become_one_exact_fraction(local):
    per_tokens = node(local, input_per_1m=120 * RUB, output_per_1m=360 * RUB)
    assert per_tokens.cost_fraction() == (120 * RUB, 360 * RUB, 1_000_000)
    assert per_tokens.rate_per_1m == (120 * RUB, 360 * RUB)
    gpu = node(local, cost_mode=NodeCostMode.GPU_HOUR, gpu_hour=250 * RUB, tokens_per_hour=1_300_000,
               input_per_1m=1, output_per_1m=1)  # the unused form is ignored
    assert gpu.cost_fraction() == (250 * RUB, 250 * RUB, 1_300_000)
    assert gpu.rate_per_1m == (192_307_693, 192_307_693)  # 250 RUB / 1.3M tokens, per 1M, rounded up


def test_the_key_is_stored_encrypted_and_optional(local):
    item = node(local)
    item.set_secret(f"  {DEFAULT_KEY} ")
    assert DEFAULT_KEY not in item.secret_encrypted and item.secret_last4 == DEFAULT_KEY[-4:]
    assert item.reveal_secret() == DEFAULT_KEY
    item.set_secret("")
    assert (item.secret_encrypted, item.secret_last4, item.reveal_secret()) == ("", "", "")


def test_the_health_url_is_the_origin_and_the_path(local):
    assert health_url(node(local, base_url="http://10.0.0.5:8000/v1", health_path="/health")) == "http://10.0.0.5:8000/health"
    assert health_url(node(local, health_path="/v1/models")) == "http://127.0.0.1:8000/v1/models"


def test_the_check_records_up_and_down_with_latency_and_a_scrubbed_error(local, fake_openai):
    up = node(local, name="up", base_url=fake_openai.base_url, health_path="/v1/models")
    up.set_secret(DEFAULT_KEY)
    up.save()
    refused = node(local, name="refused", base_url=fake_openai.base_url, health_path="/v1/models")
    refused.set_secret("sk-wrong-key-0123456789abcdef")
    refused.save()
    from tests.proxy.conftest import free_port

    dead = node(local, name="dead", base_url=f"http://127.0.0.1:{free_port()}/v1")
    dead.save()
    inactive = node(local, name="off", base_url=f"http://127.0.0.1:{free_port()}/v1", is_active=False)
    inactive.save()
    results = {r.node_id: r for r in check_nodes()}
    assert set(results) == {up.pk, refused.pk, dead.pk}
    for item in (up, refused, dead, inactive):
        item.refresh_from_db()
    assert up.health == NodeHealth.UP and up.health_latency_ms is not None and up.health_error == ""
    assert refused.health == NodeHealth.DOWN and refused.health_error.startswith("HTTP 401")
    assert "sk-wrong-key" not in refused.health_error and "0123456789abcdef" not in refused.health_error
    assert dead.health == NodeHealth.DOWN and dead.health_latency_ms is None and dead.health_error
    assert inactive.health == NodeHealth.UNKNOWN and inactive.health_checked_at is None


def test_a_public_node_is_checked_against_ssrf_at_connect_time(local, monkeypatch):
    """A node saved with a public name that later resolves to loopback is refused at connection."""
    item = node(local, base_url="http://localhost:9/v1", internal=False)
    item.save()  # saved without clean(): as if DNS changed after validation
    (result,) = check_nodes()
    assert not result.up and "127.0.0.1" not in result.error
    item.refresh_from_db()
    assert item.health == NodeHealth.DOWN


@pytest.fixture
def load():
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(f"{LOAD_PREFIX}*"):
        client.delete(key)
    providers_admin._node_load._read_at = 0.0
    yield client
    for key in client.scan_iter(f"{LOAD_PREFIX}*"):
        client.delete(key)
    providers_admin._node_load._read_at = 0.0
    client.close()


def test_outstanding_counts_are_summed_over_workers(load):
    load.hset(f"{LOAD_PREFIX}host:1", mapping={"7": 2, "8": 0})
    load.hset(f"{LOAD_PREFIX}host:2", mapping={"7": 1})
    assert outstanding_by_node() == {7: 3, 8: 0}


def test_the_admin_shows_health_load_and_cost(superadmin_client, local, load, catalog):
    item = node(local, name="gpu-box", supplier=catalog.supplier_key.supplier, cost_mode=NodeCostMode.GPU_HOUR,
                gpu_hour=250 * RUB, tokens_per_hour=1_300_000, health=NodeHealth.DOWN, health_latency_ms=37,
                health_error="ConnectionRefused")
    item.set_secret(DEFAULT_KEY)
    item.save()
    load.hset(f"{LOAD_PREFIX}w:1", mapping={str(item.pk): 5})
    listing = superadmin_client.get(reverse("admin:providers_localnode_changelist"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert ">Down<" in listing and ">5<" in listing and "37 ms" in listing and "ConnectionRefused" in listing
    assert "192.31 / 192.31 ₽" in listing and "250.00 ₽/h" in listing
    assert DEFAULT_KEY not in listing
    page = superadmin_client.get(reverse("admin:providers_localnode_change", args=[item.pk]), HTTP_ACCEPT_LANGUAGE="en")
    assert page.status_code == 200 and DEFAULT_KEY not in page.content.decode() and DEFAULT_KEY[-4:] in page.content.decode()


def test_the_admin_adds_a_node_with_its_key_encrypted(superadmin_client, local):
    form = {"provider": local.pk, "name": "box", "base_url": "http://127.0.0.1:8001/v1", "internal": "on",
            "secret": DEFAULT_KEY, "weight": "2", "supplier": "", "cost_mode": "per_1m", "input_per_1m": "12.5",
            "output_per_1m": "30", "gpu_hour": "", "tokens_per_hour": "0", "health_path": "/health", "is_active": "on"}
    response = superadmin_client.post(reverse("admin:providers_localnode_add"), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    saved = LocalNode.objects.get(name="box")
    assert (saved.input_per_1m, saved.output_per_1m, saved.gpu_hour) == (12_500_000, 30 * RUB, 0)
    assert saved.reveal_secret() == DEFAULT_KEY and saved.weight == 2
    form.update(base_url="http://10.1.2.3:8001/v1", internal="")
    del form["internal"]
    response = superadmin_client.post(reverse("admin:providers_localnode_add"), {**form, "name": "public"})
    assert response.status_code == 200 and not LocalNode.objects.filter(name="public").exists()



def test_the_beat_task_checks_every_node_and_counts_the_down_ones(local):
    from apps.providers.tasks import check_local_nodes
    from tests.proxy.conftest import free_port

    node(local, name="dead", base_url=f"http://127.0.0.1:{free_port()}/v1").save()
    assert check_local_nodes() == 1
    assert LocalNode.objects.get(name="dead").health == NodeHealth.DOWN
    assert settings.CELERY_BEAT_SCHEDULE["check-local-nodes"]["task"] == "apps.providers.tasks.check_local_nodes"
