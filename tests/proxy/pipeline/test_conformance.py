"""The OpenAI API surface as clients rely on it (issue 7, items 5 and 7): one test per row.

| row | what a client relies on |
|---|---|
| headers | ``x-request-id``, ``openai-processing-ms`` on every answer; ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` when the token has RPM/TPM |
| no retry | refusals a retry cannot cure carry ``x-should-retry: false``: the SDK sends one request, not three |
| model | the answer's ``model`` is the public name the client used, in bodies and in every stream chunk |
| methods | ``405`` with ``Allow`` for a wrong method; ``HEAD`` where ``GET`` is; ``OPTIONS`` |
| CORS | off by default; configured origins get preflight and actual-answer headers |
| embeddings | ``input: [""]`` is a 400, as OpenAI answers |
| redirect | an upstream redirect (not followed) is a 502, not the client's 400 |
| depth | JSON nested deeper than the door's limit is a 400 naming it, never a 500 |

The official ``openai`` SDK is the client where its behaviour is the point, raw httpx otherwise.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import orjson
import pytest

from apps.billing.models import UsageRecord
from apps.proxy.pipeline.admission import MAX_JSON_DEPTH
from tests.proxy.conftest import RUB, Gateway, ServerThread, build_world, flush_gateway_keys, free_port
from tests.proxy.helpers import GOOD, chat, post

HEADERS_EVERYWHERE = ("x-request-id", "openai-processing-ms")
RATE_HEADERS = tuple(f"x-ratelimit-{part}-{kind}" for kind in ("requests", "tokens") for part in ("limit", "remaining", "reset"))
ORIGIN = "https://app.example.com"


def _auth(gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.world.secret}"}


def _limits(gateway, **fields) -> None:
    token = gateway.world.token
    for name, value in fields.items():
        setattr(token, name, value)
    token.save()
    gateway.wait_config()


def _assert_common_headers(response: httpx.Response) -> None:
    assert re.fullmatch(r"req_[0-9a-f]{32}", response.headers["x-request-id"]), response.headers
    assert response.headers["openai-processing-ms"].isdigit()
    assert response.headers.get_list("x-request-id") == [response.headers["x-request-id"]]  # once


# --------------------------------------------------------------------------- headers

def test_every_answer_carries_the_request_id_and_processing_time(gateway):
    base, auth = gateway.base_url, _auth(gateway)
    answers = {
        "chat": chat(gateway),
        "stream": httpx.post(base + "/chat/completions", headers=auth,
                             json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}),
        "embeddings": post(gateway, {"model": "text-embedding-3-small", "input": "hi"}, path="/embeddings"),
        "models": httpx.get(base + "/models", headers=auth),
        "model": httpx.get(base + "/models/demo-chat", headers=auth),
        "key": httpx.get(base + "/key", headers=auth),
        "401": httpx.post(base + "/chat/completions", json=GOOD, headers={"Authorization": "Bearer js-nope"}),
        "400": post(gateway, b"{not json"),
        "404 model": chat(gateway, model="no-such-model"),
        "404 path": httpx.get(base + "/nothing-here", headers=auth),
        "405": httpx.post(base + "/models", headers=auth),
        "options": httpx.options(base + "/chat/completions"),
        "head": httpx.head(base + "/models", headers=auth),
    }
    for name, response in answers.items():
        assert response.status_code < 500, (name, response.text)
        _assert_common_headers(response)
    # The id is the usage record's: one support ticket finds the request.
    gateway.drain(expect=6)
    chat_id = answers["chat"].headers["x-request-id"]
    assert UsageRecord.objects.get(request_id=chat_id).status == "ok"


def test_it_reports_rate_limits_in_openais_headers(gateway):
    _limits(gateway, rpm=600, tpm=100_000)
    response = chat(gateway)
    assert response.status_code == 200
    headers = response.headers
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("600", "599")
    assert headers["x-ratelimit-limit-tokens"] == "100000"
    assert 0 < int(headers["x-ratelimit-remaining-tokens"]) < 100_000
    for kind in ("requests", "tokens"):
        # The sliding window forgets this request at the end of the next minute: 61-120 s from now.
        reset = re.fullmatch(r"(\d+)s", headers[f"x-ratelimit-reset-{kind}"])
        assert reset and 60 < int(reset.group(1)) <= 120, headers

    stream = httpx.post(gateway.base_url + "/chat/completions", headers=_auth(gateway),
                        json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert all(name in stream.headers for name in RATE_HEADERS)
    assert stream.headers["x-ratelimit-remaining-requests"] == "598"
    # Through the SDK, as clients read them.
    raw = gateway.client().chat.completions.with_raw_response.create(model="demo-chat", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-ratelimit-remaining-requests"] == "597" and raw.parse().choices


def test_only_the_kinds_the_token_limits_are_reported(gateway):
    assert not any(name in chat(gateway).headers for name in RATE_HEADERS)
    _limits(gateway, rpm=5)
    headers = chat(gateway).headers
    assert [name for name in RATE_HEADERS if name in headers] == list(RATE_HEADERS[:3])


def test_a_rate_limit_refusal_names_its_reset(gateway):
    _limits(gateway, rpm=1)
    assert chat(gateway).status_code == 200
    refused = chat(gateway)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_rpm"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert re.fullmatch(r"\d+s", refused.headers["x-ratelimit-reset-requests"])
    assert "x-should-retry" not in refused.headers  # a rate limit passes: retrying later is right
    _assert_common_headers(refused)


# --------------------------------------------------------------------------- no retry

def _counting_client(gateway) -> tuple[openai.OpenAI, list[str]]:
    sent: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda request: sent.append(str(request.url))]}, timeout=30)
    # The SDK's defaults: max_retries=2, so a retryable refusal costs three requests.
    return openai.OpenAI(base_url=gateway.base_url, api_key=gateway.world.secret, http_client=http), sent


def test_a_spent_limit_is_not_retried_by_the_sdk(gateway):
    _limits(gateway, limit_total=1)  # one micro-ruble: no request fits
    client, sent = _counting_client(gateway)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 402 and refused.value.code == "limit_total"
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert len(sent) == 1
    assert gateway.drain(expect=1) == 1 and UsageRecord.objects.get().status == "rejected"


@pytest.fixture
def broke_gateway(transactional_db, fake_openai):
    """A company that was never topped up: every reservation is above its balance."""
    from apps.proxy.pipeline.app import ProxyApp
    from jetstream.asgi import build_application

    flush_gateway_keys()
    world = build_world(fake_openai, top_up=0)
    with ServerThread(build_application(ProxyApp()), free_port()) as server:
        yield Gateway(world, server)
    flush_gateway_keys()


def test_an_empty_wallet_is_not_retried_by_the_sdk(broke_gateway):
    client, sent = _counting_client(broke_gateway)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 402 and refused.value.code == "insufficient_balance"
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert len(sent) == 1


def test_a_reused_idempotency_key_is_not_retried_by_the_sdk(gateway):
    client, sent = _counting_client(gateway)
    key = {"Idempotency-Key": "order-42"}
    client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "hi"}], extra_headers=key)
    with pytest.raises(openai.ConflictError) as refused:
        client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "other"}], extra_headers=key)
    assert refused.value.code == "idempotency_key_reused"
    assert len(sent) == 2  # the first call and one refused try, not three


# --------------------------------------------------------------------------- model

@pytest.fixture
def renamed(gateway, fake_openai):
    """Public names that differ from the upstream ids: `probe-ok` → the mock's `ok`, `probe-mini` →
    the fake OpenAI's `gpt-4o-mini`, `probe-embed` → `text-embedding-3-small`."""
    from apps.providers.models import Model, Price

    world = gateway.world
    for name, provider, upstream, modality, price in (
            ("probe-ok", world.mock_model.provider, "ok", "chat", (10 * RUB, 20 * RUB, "RUB")),
            ("probe-mini", world.provider, "gpt-4o-mini", "chat", (150_000, 600_000, "USD")),
            ("probe-embed", world.provider, "text-embedding-3-small", "embedding", (20_000, 0, "USD"))):
        model = Model.objects.create(name=name, provider=provider, upstream_model=upstream, modality=modality, max_output_tokens=4096)
        Price.objects.create(model=model, currency=price[2], input_per_1m=price[0], output_per_1m=price[1])
    gateway.wait_config()
    return gateway


@pytest.mark.parametrize("model", ["probe-ok", "probe-mini"])
def test_the_answer_names_the_public_model(renamed, fake_openai, model):
    client = renamed.client()
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=20)
    assert answer.model == model and answer.choices[0].message.content
    completion = client.completions.create(model=model, prompt="Say hi", max_tokens=10)
    assert completion.model == model
    if model == "probe-mini":
        assert fake_openai.last_request.body["model"] == "gpt-4o-mini"  # the upstream still gets its own id


@pytest.mark.parametrize("model", ["probe-ok", "probe-mini"])
@pytest.mark.parametrize("include_usage", [True, False])
def test_every_stream_chunk_names_the_public_model(renamed, model, include_usage):
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(renamed.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                           max_tokens=30, stream=True, **options))
    assert len(chunks) > 2 and {chunk.model for chunk in chunks} == {model}
    assert (chunks[-1].usage is not None) == include_usage
    raw = httpx.post(renamed.base_url + "/chat/completions", headers=_auth(renamed),
                     json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True, **options}).content
    assert b'"model":"ok"' not in raw and b'"gpt-4o-mini"' not in raw


def test_embeddings_name_the_public_model(renamed):
    answer = renamed.client().embeddings.create(model="probe-embed", input=["one", "two"])
    assert answer.model == "probe-embed" and len(answer.data) == 2


def test_an_idempotent_replay_names_the_public_model(renamed):
    key = {"Idempotency-Key": "rename-1"}
    first = chat(renamed, model="probe-ok", headers=key)
    again = chat(renamed, model="probe-ok", headers=key)
    assert again.headers["idempotent-replayed"] == "true"
    assert first.json()["model"] == again.json()["model"] == "probe-ok"
    assert again.headers["x-request-id"] != first.headers["x-request-id"]


@pytest.mark.parametrize("payload", [
    b'{"id":"c1","object":"chat.completion","created":1,"model":"ok","choices":[]}',
    b'{"id": "c1", "model" : "ok-2024-07-18", "choices": []}',  # spaces, and a dated id
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"ok","choices":[{"delta":{"content":"\\"model\\":\\"ok\\""}}]}',
    b'{"choices":[{"message":{"content":"{\\"model\\": \\"ok\\"}"}}],"model":"ok"}',  # model last, a look-alike in a string
    b'{"say \\"model":"ok","model":"ok"}',  # a key ending in "model" (two matches: parsed)
    b'{"tool":{"model":"ok"},"model":"ok"}',  # a nested "model" too (parsed)
    b'{"model":"o\\u006b\\"\\\\"}',  # escapes in the value
])
def test_rename_model_replaces_only_the_top_level_value(payload):
    from apps.proxy.dialects.openai import rename_model

    head = b"data: " if payload.startswith(b"data: ") else b""
    before = orjson.loads(payload[len(head):])
    renamed = rename_model(payload, b'"probe-ok"')
    assert renamed.startswith(head)
    after = orjson.loads(renamed[len(head):])
    assert after == {**before, "model": "probe-ok"}


def test_rename_model_leaves_answers_without_a_top_level_model():
    from apps.proxy.dialects.openai import model_renamer, rename_model

    for payload in (b'{"error":{"message":"x"}}', b'{"choices":[{"model":"ok"}]}', b"data: {not json \"model\""):
        assert rename_model(payload, b'"probe-ok"') == payload
    assert model_renamer("same", "same") is None
    tail = b'data: {"model":"ok","usage":{"a":{"model":"x"}}}\n\ndata: [DONE]\n\n'
    assert rename_model(tail, b'"p"') == b'data: {"model":"p","usage":{"a":{"model":"x"}}}\n\ndata: [DONE]\n\n'


def test_same_names_pass_through_as_the_upstream_sent_them(gateway):
    assert gateway.client().chat.completions.create(**GOOD).model == "gpt-4o-mini"


# --------------------------------------------------------------------------- methods

@pytest.mark.parametrize(("method", "path", "allow"), [
    ("POST", "/models", "GET, HEAD, OPTIONS"),
    ("DELETE", "/models/demo-chat", "GET, HEAD, OPTIONS"),
    ("PUT", "/key", "GET, HEAD, OPTIONS"),
    ("GET", "/chat/completions", "POST, OPTIONS"),
    ("HEAD", "/embeddings", "POST, OPTIONS"),
])
def test_a_wrong_method_is_405_with_allow(gateway, method, path, allow):
    response = httpx.request(method, gateway.base_url + path, headers=_auth(gateway))
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    if method != "HEAD":
        assert response.json()["error"]["code"] == "method_not_allowed"


def test_unknown_paths_stay_404(gateway):
    for method in ("GET", "POST", "OPTIONS", "HEAD"):
        response = httpx.request(method, gateway.base_url + "/nothing-here", headers=_auth(gateway))
        assert response.status_code == 404


@pytest.mark.parametrize("path", ["/models", "/models/demo-chat", "/key"])
def test_head_is_answered_where_get_is(gateway, path):
    get = httpx.get(gateway.base_url + path, headers=_auth(gateway))
    head = httpx.head(gateway.base_url + path, headers=_auth(gateway))
    assert (head.status_code, get.status_code) == (200, 200)
    assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"] == "application/json"
    if path != "/key":  # the key report's numbers may move between the two calls
        assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))
    unauthenticated = httpx.head(gateway.base_url + path)
    assert unauthenticated.status_code == 401 and unauthenticated.content == b""


def test_options_answers_allow_without_a_token(gateway):
    response = httpx.options(gateway.base_url + "/chat/completions")
    assert response.status_code == 204 and response.headers["allow"] == "POST, OPTIONS"
    assert httpx.options(gateway.base_url + "/models").headers["allow"] == "GET, HEAD, OPTIONS"
    gateway.drain()
    assert UsageRecord.objects.count() == 0  # not an inference call


# --------------------------------------------------------------------------- CORS

def _preflight(gateway, origin=ORIGIN, method="POST", path="/chat/completions", headers="authorization, content-type"):
    return httpx.options(gateway.base_url + path, headers={
        "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers})


def test_cors_is_off_by_default(gateway):
    preflight = _preflight(gateway)
    assert preflight.status_code == 204
    assert not [name for name in preflight.headers if name.startswith("access-control-")]
    answer = chat(gateway, headers={"Origin": ORIGIN})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


@pytest.fixture
def cors_gateway(world, settings):
    from apps.proxy.pipeline.app import ProxyApp
    from jetstream.asgi import build_application

    settings.JETSTREAM = {**settings.JETSTREAM, "CORS_ALLOWED_ORIGINS": [ORIGIN, "http://localhost:5173/"]}
    with ServerThread(build_application(ProxyApp()), free_port()) as server:
        yield Gateway(world, server)


def test_cors_answers_the_preflight_of_an_allowed_origin(cors_gateway):
    preflight = _preflight(cors_gateway)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert preflight.headers["access-control-allow-methods"] == "POST"
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    assert preflight.headers["access-control-max-age"] == "600"
    assert "origin" in preflight.headers["vary"]
    assert _preflight(cors_gateway, origin="http://localhost:5173").headers["access-control-allow-origin"] == "http://localhost:5173"
    models = _preflight(cors_gateway, method="GET", path="/models")
    assert models.headers["access-control-allow-methods"] == "GET, HEAD"


def test_cors_headers_reach_the_actual_answers(cors_gateway):
    for response in (chat(cors_gateway, headers={"Origin": ORIGIN}), chat(cors_gateway, model="nope", headers={"Origin": ORIGIN}),
                     httpx.get(cors_gateway.base_url + "/models", headers={**_auth(cors_gateway), "Origin": ORIGIN})):
        assert response.headers["access-control-allow-origin"] == ORIGIN
        exposed = response.headers["access-control-expose-headers"]
        assert "x-request-id" in exposed and "x-ratelimit-remaining-requests" in exposed and "x-jetstream-cost" in exposed
        assert response.headers["vary"] == "origin"


def test_cors_refuses_other_origins_and_methods(cors_gateway):
    for preflight in (_preflight(cors_gateway, origin="https://evil.example.com"),
                      _preflight(cors_gateway, origin="https://app.example.com.evil.example.com"),
                      _preflight(cors_gateway, method="DELETE"),
                      _preflight(cors_gateway, headers="authorization, not a header name")):
        assert preflight.status_code == 204
        assert "access-control-allow-origin" not in preflight.headers
    answer = chat(cors_gateway, headers={"Origin": "https://evil.example.com"})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


def test_a_bad_cors_origin_stops_the_process_with_its_name():
    env = {**os.environ, "DEBUG": "true", "DJANGO_SETTINGS_MODULE": "jetstream.settings",
           "JETSTREAM_CORS_ALLOWED_ORIGINS": "https://ok.example.com,app.example.com/path"}
    result = subprocess.run([sys.executable, "-c", "from django.conf import settings; settings.JETSTREAM"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "JETSTREAM_CORS_ALLOWED_ORIGINS" in result.stderr and "app.example.com/path" in result.stderr


# --------------------------------------------------------------------------- embeddings

@pytest.mark.parametrize(("value", "param"), [([""], "input[0]"), (["one", ""], "input[1]"), ([[1, 2], []], "input[1]"),
                                              ("", "input"), ([], "input")])
def test_empty_embedding_inputs_are_400(gateway, value, param):
    response = post(gateway, {"model": "text-embedding-3-small", "input": value}, path="/embeddings")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_token_zero_is_an_embedding_input(gateway):
    response = post(gateway, {"model": "text-embedding-3-small", "input": [0, 1]}, path="/embeddings")
    assert response.status_code == 200, response.text


def test_the_sdk_sees_an_empty_embedding_input_as_a_bad_request(gateway):
    with pytest.raises(openai.BadRequestError):
        gateway.client().embeddings.create(model="text-embedding-3-small", input=[""])


# --------------------------------------------------------------------------- redirect

class _Redirecting(BaseHTTPRequestHandler):
    """An upstream that answers every POST with a redirect (the status is the server's)."""

    def do_POST(self):  # noqa: N802 - the stdlib's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.hits += 1  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def redirecting(gateway):
    """A provider whose upstream redirects, with two keys and the model `moved-model`."""
    from decimal import Decimal

    from apps.providers.models import Model, Price, Provider, SupplierKey

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    server.hits, server.status = 0, 307  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    provider = Provider.objects.create(slug="moved", kind="openai", base_url=f"http://127.0.0.1:{server.server_port}/v1",
                                       internal=True)
    for name in ("m-1", "m-2"):
        key = SupplierKey(supplier=gateway.world.supplier, provider=provider, name=name, buy_coefficient=Decimal("1.10"))
        key.set_secret("sk-moved-0123456789abcdef")
        key.save()
    model = Model.objects.create(name="moved-model", provider=provider, upstream_model="gpt-4o-mini", max_output_tokens=4096)
    Price.objects.create(model=model, currency="USD", input_per_1m=150_000, output_per_1m=600_000)
    gateway.wait_config()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_an_upstream_redirect_is_a_502_not_the_clients_fault(gateway, redirecting, status):
    redirecting.status = status
    response = post(gateway, {**GOOD, "model": "moved-model"})
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("api_error", "upstream_redirect")
    assert "169.254" not in response.text
    assert redirecting.hits == 1  # every key would meet the same redirect: no failover, and never followed
    gateway.drain(expect=1)
    assert UsageRecord.objects.get().status == "upstream_error"


def test_the_sdk_does_not_take_a_redirect_for_a_bad_request(gateway, redirecting):
    with pytest.raises(openai.InternalServerError):
        gateway.client().chat.completions.create(model="moved-model", messages=GOOD["messages"])


# --------------------------------------------------------------------------- depth

def _nested(depth: int) -> dict:
    value: object = 1
    for _ in range(depth - 1):  # `metadata` itself is one level, the body another
        value = {"a": value}
    return {**GOOD, "metadata": value}


def _raw_nested(depth: int) -> bytes:
    inner = depth - 2  # the body and `metadata` are two of the levels
    return (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"metadata":'
            + b'{"a":' * inner + b"{}" + b"}" * inner + b"}")


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 255, 300, 1024, 1025, 5000])
def test_json_nested_past_the_limit_is_a_400_naming_it(gateway, depth):
    response = post(gateway, _raw_nested(depth))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "json_too_deep" and f"{MAX_JSON_DEPTH} levels" in error["message"]
    _assert_common_headers(response)
    gateway.drain(expect=1)
    assert UsageRecord.objects.get().status == "invalid"


def test_json_at_the_limit_is_served(gateway, fake_openai):
    response = post(gateway, _raw_nested(MAX_JSON_DEPTH))
    assert response.status_code == 200, response.text
    assert "metadata" in fake_openai.last_request.body


def test_brackets_inside_strings_do_not_count(gateway):
    body = {**GOOD, "messages": [{"role": "user", "content": "[" * 2000 + "{\\\"" * 500}]}
    assert post(gateway, body).status_code == 200


def test_the_sdk_sees_a_too_deep_body_as_a_bad_request(gateway):
    metadata = _nested(300)["metadata"]
    with pytest.raises(openai.BadRequestError) as refused:
        gateway.client().chat.completions.create(**GOOD, extra_body={"metadata": metadata})
    assert refused.value.code == "json_too_deep"
