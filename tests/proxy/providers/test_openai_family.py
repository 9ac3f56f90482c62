"""The OpenAI wire family end to end: the official ``openai`` SDK (sync, async, streaming, tools)
through the real gateway to FakeOpenAI speaking as Azure OpenAI, DeepSeek, Mistral, Qwen, a local
node and an OpenAI reasoning model — what the upstream received, what the client got, what was billed."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from apps.billing.models import UsageRecord
from tests.proxy.conftest import Gateway, ServerThread, free_port
from tests.proxy.helpers import expected_cost

# model name → (provider kind, upstream model id, options)
FAMILY = {
    "azure-4o": ("azure_openai", "gpt4o-prod", {"api_version": "2024-10-21"}),
    "deepseek-r": ("deepseek", "deepseek-reasoner", {}),
    "mistral-s": ("mistral", "mistral-small-latest", {}),
    "qwen-plus": ("qwen", "qwen-plus", {}),
    "local-llama": ("openai_compatible", "llama3.1:8b", {}),
    "o3-mini": ("openai", "o3-mini", {}),
}
VARIANT = {"azure-4o": "azure", "deepseek-r": "deepseek", "mistral-s": "mistral"}
PROMPT = [{"role": "user", "content": "Tell me about the northern lights"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture
def family(world, fake_openai):
    """One provider per family member, all pointing at the fake (internal, loopback), each with a key,
    a model and the gpt-4o-mini price; then the gateway."""
    from apps.providers.models import Model, Price, Provider, SupplierKey
    from apps.proxy.pipeline.app import ProxyApp
    from jetstream.asgi import build_application

    for name, (kind, upstream, options) in FAMILY.items():
        base = fake_openai.root_url if kind == "azure_openai" else fake_openai.base_url
        provider = Provider.objects.create(slug=f"p-{name}", kind=kind, base_url=base, internal=True, options=options)
        key = SupplierKey(supplier=world.supplier, provider=provider, name=f"k-{name}", buy_coefficient=Decimal("1.10"))
        key.set_secret(fake_openai.api_key)
        key.save()
        model = Model.objects.create(name=name, provider=provider, upstream_model=upstream, max_output_tokens=4096)
        Price.objects.create(model=model, currency="USD", input_per_1m=150_000, output_per_1m=600_000)
    with ServerThread(build_application(ProxyApp()), free_port()) as server:
        yield Gateway(world, server)


def use(fake, name: str, **behavior) -> None:
    fake.behavior(variant=VARIANT.get(name, "openai"), **behavior)


def record_for(gateway: Gateway, count: int = 1) -> UsageRecord:
    gateway.drain(expect=count)
    return UsageRecord.objects.latest("finished_at")


@pytest.mark.parametrize("name", list(FAMILY))
def test_every_member_answers_the_sdk_and_is_billed_from_its_usage(family, fake_openai, name):
    use(fake_openai, name)
    completion = family.client().chat.completions.create(model=name, messages=PROMPT, max_tokens=40)
    assert completion.choices[0].message.content and completion.model == name
    usage = completion.usage
    record = record_for(family)
    assert (record.status, record.input_tokens, record.output_tokens) == ("ok", usage.prompt_tokens, usage.completion_tokens)
    assert record.sell_cost == expected_cost(usage.prompt_tokens, usage.completion_tokens) and not record.usage_counted_locally
    assert record.buy_cost == expected_cost(usage.prompt_tokens, usage.completion_tokens, coefficient="1.10")


@pytest.mark.parametrize("name", list(FAMILY))
def test_every_member_streams_to_the_sdk_and_bills_like_unstreamed(family, fake_openai, name):
    use(fake_openai, name)
    client = family.client()
    unstreamed = client.chat.completions.create(model=name, messages=PROMPT, max_tokens=40)
    chunks = list(client.chat.completions.create(model=name, messages=PROMPT, max_tokens=40, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == unstreamed.choices[0].message.content  # each piece once, even when usage rode on a content chunk
    assert [c for c in chunks if c.usage is not None] == [chunks[-1]] and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == unstreamed.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    family.drain(expect=2)
    costs = {r.stream: r.sell_cost for r in UsageRecord.objects.all()}
    assert costs[True] == costs[False] > 0


def test_azure_is_called_at_its_deployment_with_api_key(family, fake_openai):
    use(fake_openai, "azure-4o")
    family.client().chat.completions.create(model="azure-4o", messages=PROMPT)
    sent = fake_openai.last_request
    assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert sent.headers["api-key"] == fake_openai.api_key and "authorization" not in sent.headers


def test_azure_refusing_the_key_fails_over_as_an_auth_failure(family, fake_openai):
    from apps.providers.models import SupplierKey

    key = SupplierKey.objects.get(name="k-azure-4o")
    key.set_secret("sk-wrong-key-0000000000")
    key.save()
    family.wait_config()
    use(fake_openai, "azure-4o")
    response = family.client().chat.completions.with_raw_response
    with pytest.raises(Exception) as failed:
        response.create(model="azure-4o", messages=PROMPT)
    assert failed.value.status_code == 502 and failed.value.body["code"] == "upstream_auth_failed"


def test_mistral_gets_neither_stream_options_nor_max_completion_tokens(family, fake_openai):
    use(fake_openai, "mistral-s")
    chunks = list(family.client().chat.completions.create(model="mistral-s", messages=PROMPT, stream=True,
                                                          max_completion_tokens=30))
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage: the one Mistral sent is hidden
    sent = fake_openai.last_request.body
    assert "stream_options" not in sent and sent["max_tokens"] == 30 and "max_completion_tokens" not in sent
    record = record_for(family)
    assert record.status == "ok" and not record.usage_counted_locally and record.output_tokens > 0


def test_deepseek_reasoning_and_cache_hits_are_relayed_and_billed(family, fake_openai):
    use(fake_openai, "deepseek-r", reasoning_tokens=25, cached_tokens=4)
    client = family.client()
    completion = client.chat.completions.create(model="deepseek-r", messages=PROMPT)
    assert completion.choices[0].message.model_extra["reasoning_content"]
    chunks = list(client.chat.completions.create(model="deepseek-r", messages=PROMPT, stream=True))
    assert any((c.choices[0].delta.model_extra or {}).get("reasoning_content") for c in chunks if c.choices)
    family.drain(expect=2)
    for record in UsageRecord.objects.all():
        # Reasoning is output; DeepSeek's cache hits are the cached part of the prompt.
        assert record.output_tokens == completion.usage.completion_tokens and record.cached_tokens == 4
        assert record.sell_cost == expected_cost(record.input_tokens, record.output_tokens, cached=4)


def test_a_reasoning_model_gets_max_completion_tokens(family, fake_openai):
    family.client().chat.completions.create(model="o3-mini", messages=PROMPT, max_tokens=25)
    sent = fake_openai.last_request.body
    assert sent["max_completion_tokens"] == 25 and "max_tokens" not in sent


@pytest.mark.parametrize("name", ["deepseek-r", "mistral-s", "azure-4o", "local-llama"])
def test_tools_go_through_every_member(family, fake_openai, name):
    use(fake_openai, name)
    client = family.client()
    forced = {"type": "function", "function": {"name": "get_weather"}}
    completion = client.chat.completions.create(model=name, messages=PROMPT, tools=TOOLS, tool_choice=forced)
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and completion.choices[0].finish_reason in ("tool_calls", "stop")
    chunks = list(client.chat.completions.create(model=name, messages=PROMPT, tools=TOOLS, tool_choice=forced, stream=True))
    arguments = "".join(tc.function.arguments or "" for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or []))
    assert arguments == call.function.arguments


def test_the_async_client_streams_from_the_family_concurrently(family, fake_openai):
    async def run():
        client = family.async_client()
        names = ["qwen-plus", "local-llama", "o3-mini"]
        answers = await asyncio.gather(*(client.chat.completions.create(model=n, messages=PROMPT) for n in names))
        stream = await client.chat.completions.create(model="qwen-plus", messages=PROMPT, stream=True)
        pieces = [c async for c in stream]
        await client.close()
        return answers, pieces

    answers, pieces = asyncio.run(run())
    assert all(a.choices[0].message.content for a in answers) and pieces
    family.drain(expect=4)
    assert UsageRecord.objects.filter(status="ok").count() == 4


def test_a_local_node_without_usage_and_with_bare_done_is_counted_locally(family, fake_openai):
    fake_openai.behavior(omit_usage=True, done_without_space=True)
    chunks = list(family.client().chat.completions.create(model="local-llama", messages=PROMPT, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    record = record_for(family)
    assert record.status == "ok" and record.usage_counted_locally and record.output_tokens > 0 and record.sell_cost > 0


def test_a_vllm_error_inside_a_stream_becomes_the_gateways_error_event(family, fake_openai):
    fake_openai.behavior(stream_error_after=2, stream_error_body={"error": {"object": "error", "message": "key {key} at {url}",
                                                                            "type": "BadRequestError", "code": 400}})
    response = family.client().chat.completions.with_raw_response.create(model="local-llama", messages=PROMPT, stream=True)
    with pytest.raises(Exception) as failed:
        list(response.parse())
    assert fake_openai.api_key not in str(failed.value) and "127.0.0.1" not in str(failed.value)
    record = record_for(family)
    assert record.status == "upstream_error" and record.sell_cost > 0  # two chunks were delivered
