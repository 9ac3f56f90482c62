"""jetstream_apply: local nodes under an ``openai_compatible`` provider — both cost forms, an owner,
an encrypted key never printed, idempotency, and refusals (SSRF, a float, an unknown supplier)."""

from __future__ import annotations

import pytest
from django.core.management.base import CommandError

from apps.providers.models import LocalNode, NodeCostMode

NODE_KEY = "vllm-node-key-0123456789"
CONFIG = f"""
suppliers:
  - {{slug: gpu-farm, name: GPU Farm LLC}}
providers:
  - slug: local
    kind: openai_compatible
    base_url: http://127.0.0.1:8000/v1
    internal: true
    nodes:
      - {{name: a, base_url: "http://127.0.0.1:8001/v1", internal: true, weight: 2, supplier: gpu-farm,
         secret: "{NODE_KEY}", cost: {{input_per_1m: "120", output_per_1m: "360.5"}}, health_path: /health}}
      - {{name: b, base_url: "http://127.0.0.1:8002/v1", internal: true,
         cost: {{gpu_hour: "250", tokens_per_hour: 1300000}}, health_path: /v1/models}}
models:
  - {{name: local-llama, provider: local, upstream_model: "llama3.1:8b",
     price: {{input_per_1m: "1000", output_per_1m: "2000", currency: RUB}}}}
"""


def test_it_applies_nodes_with_both_cost_forms_and_never_prints_the_key(db, apply_text):
    out, err = apply_text(CONFIG)
    assert "created: local node local/a" in out and NODE_KEY not in out + err
    a, b = LocalNode.objects.order_by("name")
    assert (a.provider.slug, a.weight, a.supplier.slug, a.health_path, a.internal) == ("local", 2, "gpu-farm", "/health", True)
    assert (a.cost_mode, a.input_per_1m, a.output_per_1m) == (NodeCostMode.PER_TOKENS, 120_000_000, 360_500_000)
    assert a.reveal_secret() == NODE_KEY and NODE_KEY not in a.secret_encrypted
    assert (b.cost_mode, b.gpu_hour, b.tokens_per_hour, b.supplier, b.secret_encrypted) == (
        NodeCostMode.GPU_HOUR, 250_000_000, 1_300_000, None, "")
    out, _ = apply_text(CONFIG)
    assert "local nodes 2" in out and "Nothing to change" in out
    out, _ = apply_text(CONFIG.replace(NODE_KEY, "another-node-key-987654").replace("weight: 2", "weight: 3"))
    assert "updated: local node local/a" in out and "secret replaced" in out and "weight" in out
    assert LocalNode.objects.get(name="a").reveal_secret() == "another-node-key-987654"


def test_it_refuses_a_private_node_not_marked_internal(db, apply_text):
    with pytest.raises(CommandError) as caught:
        apply_text(CONFIG.replace('base_url: "http://127.0.0.1:8002/v1", internal: true,', 'base_url: "http://10.0.0.7:8002/v1",'))
    assert "providers[0].nodes[1].base_url" in str(caught.value)
    assert not LocalNode.objects.exists()


@pytest.mark.parametrize(("change", "place"), [
    (('input_per_1m: "120"', "input_per_1m: 120.5"), "providers[0].nodes[0].cost.input_per_1m"),
    (("supplier: gpu-farm,", "supplier: nobody,"), "providers[0].nodes[0].supplier"),
    (("tokens_per_hour: 1300000", "tokens_per_hour: 0"), "providers[0].nodes[1].cost.tokens_per_hour"),
    (("health_path: /health}", "health_path: /health, colour: red}"), "providers[0].nodes[0].colour"),
])
def test_it_names_the_place_of_a_bad_node(db, apply_text, change, place):
    with pytest.raises(CommandError) as caught:
        apply_text(CONFIG.replace(*change))
    assert place in str(caught.value)
    assert not LocalNode.objects.exists()
