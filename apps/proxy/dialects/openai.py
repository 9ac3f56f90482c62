"""The OpenAI dialect (what clients of ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/embeddings`` speak): parsed into the canonical request, rendered back from canonical answers.

Source: https://platform.openai.com/docs/api-reference/chat. The canonical form is this dialect, so
rendering passes bytes through; parsing validates: only what the gateway must rely on is checked
strictly (model, messages/prompt/input shape, max_tokens, n, stream, stream_options), with clear 4xx
errors instead of upstream surprises; other parameters pass through after a type check of the
common ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from apps.providers.adapters.base import CanonicalRequest
from apps.proxy.exceptions import ApiError, bad_request
from lib.jsonbytes import depth_at_end
from lib.money import format_rub

from .base import SSE_HEADERS, Dialect, load_body

if TYPE_CHECKING:
    from ..pipeline.context import Call

_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_NUMBER_PARAMS = {"temperature": (0, 2), "top_p": (0, 1), "presence_penalty": (-2, 2), "frequency_penalty": (-2, 2)}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise bad_request("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model.strip() or len(model) > 128:
        raise bad_request("'model' must be a non-empty string.", param="model", code="invalid_type")
    return model


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, stream_options.include_usage)."""
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean.", param="stream", code="invalid_type")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object.", param="stream_options", code="invalid_type")
    if not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_request("'stream_options.include_usage' must be a boolean.", param="stream_options.include_usage", code="invalid_type")
    return stream, include_usage


def _sampling(body: dict[str, Any]) -> int:
    """Checks n, the sampling numbers, stop and seed; returns n."""
    n = body.get("n", 1)
    if n is None:
        n = 1
    if not _is_int(n) or not 1 <= n <= 128:
        raise bad_request("'n' must be an integer from 1 to 128.", param="n", code="invalid_value")
    for name, (low, high) in _NUMBER_PARAMS.items():
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high):
            raise bad_request(f"'{name}' must be a number from {low} to {high}.", param=name, code="invalid_value")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))):
        raise bad_request("'stop' must be a string or a list of up to 4 strings.", param="stop", code="invalid_type")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise bad_request("'seed' must be an integer.", param="seed", code="invalid_type")
    return n


def _common(body) -> tuple[str, bool, bool, int]:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    model = _model(body)
    stream, include_usage = _stream(body)
    return model, stream, include_usage, _sampling(body)


def _max_tokens(body, *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise bad_request(f"'{name}' must be a positive integer.", param=name, code="invalid_value")
        return value
    return None


def _check_message(index: int, message: Any) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad_request(f"'{where}' must be an object.", param=where, code="invalid_type")
    role = message.get("role")
    if role not in _ROLES:
        raise bad_request(f"'{where}.role' must be one of {', '.join(sorted(_ROLES))}.", param=f"{where}.role", code="invalid_value")
    content = message.get("content")
    if content is None:
        if role in ("user", "system", "developer"):
            raise bad_request(f"'{where}.content' is required.", param=f"{where}.content", code="missing_required_parameter")
    elif isinstance(content, list):
        for part_index, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise bad_request(f"'{where}.content[{part_index}]' must be an object with a 'type'.",
                                  param=f"{where}.content[{part_index}]", code="invalid_type")
    elif not isinstance(content, str):
        raise bad_request(f"'{where}.content' must be a string or an array of content parts.", param=f"{where}.content", code="invalid_type")


def check_chat(body) -> CanonicalRequest:
    """A chat completions body → the canonical request. Raises ``ApiError`` 400 naming the field."""
    model, stream, include_usage, n = _common(body)
    messages = body.get("messages")
    if messages is None:
        raise bad_request("Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array.", param="messages", code="invalid_type")
    for index, message in enumerate(messages):
        _check_message(index, message)
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise bad_request("'tools' must be an array of objects.", param="tools", code="invalid_type")
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str)):
        raise bad_request("'response_format' must be an object with a 'type'.", param="response_format", code="invalid_type")
    return CanonicalRequest("chat", model, body, stream, include_usage, _max_tokens(body, "max_completion_tokens", "max_tokens"), n)


def check_completion(body) -> CanonicalRequest:
    """A (legacy) completions body → the canonical request. Raises ``ApiError`` 400 naming the field."""
    model, stream, include_usage, n = _common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(isinstance(p, (str, int)) or isinstance(p, list) for p in prompt))):
        raise bad_request("'prompt' must be a string, an array of strings or an array of token arrays.", param="prompt", code="invalid_type")
    best_of = body.get("best_of")
    if best_of is not None and (not _is_int(best_of) or best_of < n or best_of > 20):
        raise bad_request("'best_of' must be an integer from n to 20.", param="best_of", code="invalid_value")
    return CanonicalRequest("completion", model, body, stream, include_usage, _max_tokens(body, "max_tokens"), max(n, best_of or 1))


def _embedding_input(value: Any) -> None:
    """Checks an embeddings ``input``: a string, an array of strings, a token array or an array of
    token arrays, none of them empty (OpenAI answers 400 for ``""`` and ``[""]``; ``[]`` and ``[[]]`` are as empty)."""
    if value is None:
        raise bad_request("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    ok = isinstance(value, str) or (isinstance(value, list) and value and (
        all(isinstance(v, str) for v in value) or all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or all(isinstance(v, list) for v in value)))
    if not ok or (isinstance(value, str) and not value):
        raise bad_request("'input' must be a non-empty string, array of strings, or token arrays.", param="input", code="invalid_type")
    if isinstance(value, str):
        return
    if len(value) > 2048:
        raise bad_request("'input' may hold at most 2048 items.", param="input", code="invalid_value")
    # "" or [] among the items leaves nothing to embed (a token id 0 is a token).
    empty = next((i for i, v in enumerate(value) if isinstance(v, (str, list)) and not v), None)
    if empty is not None:
        raise bad_request(f"'input[{empty}]' is empty; every input must hold at least one character or token.",
                          param=f"input[{empty}]", code="invalid_value")


def check_embeddings(body) -> CanonicalRequest:
    """An embeddings body → the canonical request. Raises ``ApiError`` 400 naming the field."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("'model' must be a non-empty string.", param="model",
                          code="missing_required_parameter" if model is None else "invalid_type")
    _embedding_input(body.get("input"))
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise bad_request("'encoding_format' must be 'float' or 'base64'.", param="encoding_format", code="invalid_value")
    dims = body.get("dimensions")
    if dims is not None and (not _is_int(dims) or not 1 <= dims <= 8192):
        raise bad_request("'dimensions' must be an integer from 1 to 8192.", param="dimensions", code="invalid_value")
    return CanonicalRequest("embedding", model, body)


CHECKERS: dict[str, Callable[[Any], CanonicalRequest]] = {
    "chat": check_chat, "completion": check_completion, "embedding": check_embeddings,
}


def parse(endpoint: str, raw: bytes) -> CanonicalRequest:
    """The canonical request for ``endpoint`` ("chat", "completion" or "embedding") from the raw
    body. Raises ``ApiError`` 400 (``invalid_json`` or the field's own code)."""
    body = load_body(raw)
    return CHECKERS[endpoint](body)


# --------------------------------------------------------------------------- rendering

JSON_HEADERS = [(b"content-type", b"application/json")]
__all__ = ["SSE_HEADERS", "OpenAIDialect", "parse"]  # SSE_HEADERS: also where it was before the seam
DONE = b"data: [DONE]\n\n"


def render_events(events: list[bytes]) -> bytes:
    """Canonical SSE events (``data:`` lines) as one write to the client."""
    return b"\n\n".join(events) + b"\n\n"


def render_usage_chunk(request: CanonicalRequest, usage_chunk: dict[str, Any] | None, *, response_id: str, created: int,
                       input_tokens: int, output_tokens: int, cost: str, model: str | None = None) -> bytes:
    """The stream's last chunk when the client asked for ``stream_options.include_usage``: the
    upstream's usage chunk (or a new one, named ``model`` — default the requested model) with the
    billed token counts and ``usage.cost`` (RUB, six decimals, as a JSON number)."""
    chunk_object = "text_completion" if request.endpoint == "completion" else "chat.completion.chunk"
    final = usage_chunk or {"id": response_id, "object": chunk_object, "created": created, "model": model or request.model,
                            "choices": []}
    final["usage"] = {**(final.get("usage") or {}), "prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                      "total_tokens": input_tokens + output_tokens, "cost": orjson.Fragment(cost.encode())}
    return b"data: " + orjson.dumps(final) + b"\n\n"


_MODEL_KEY = b'"model"'
# After the key: the colon and a JSON string value (what a top-level "model" holds).
_STRING_VALUE = re.compile(rb'\s*:\s*("(?:[^"\\]|\\.)*")')


def model_renamer(public: str, upstream: str) -> Callable[[bytes], bytes] | None:
    """What makes an answer show the public model name the client used instead of the upstream's
    model id (which is internal: a supplier's deployment, a version): None when the two names are
    the same (nothing to do, nothing spent), else a function for ``rename_model``'s payloads."""
    if public == upstream:
        return None
    encoded = orjson.dumps(public)
    return lambda payload: rename_model(payload, encoded)


def rename_model(payload: bytes, public: bytes) -> bytes:
    """``payload`` (a JSON object, or one SSE ``data: {…}`` event) with its top-level ``model``
    value replaced by ``public`` (a JSON-encoded string); unchanged when it has no ``"model"`` key.

    The usual answer has one ``"model"`` key, at the top: its value is replaced in the bytes,
    which costs one search and a scan of the bytes before it. Anything else (several, or the
    one not at the top) is parsed and re-encoded, so the rename stays exact."""
    count = payload.count(_MODEL_KEY)
    if count == 0:
        return payload
    if count == 1:
        at = payload.find(_MODEL_KEY)
        before = payload[:at]
        value = _STRING_VALUE.match(payload, at + len(_MODEL_KEY))
        # Inside a string a quote is escaped, so `{` or `,` then `"model"` then `:` is a key; at depth 1, the top one.
        if value is not None and before.rstrip().endswith((b"{", b",")) and depth_at_end(before) == 1:
            return payload[:value.start(1)] + public + payload[value.end(1):]
    return _rename_parsed(payload, public)


def _rename_parsed(payload: bytes, public: bytes) -> bytes:
    if payload.startswith(b"data:") and b"\n\n" in payload.rstrip(b"\n"):  # several events: one by one
        return b"\n\n".join(rename_model(event, public) for event in payload.split(b"\n\n"))
    start = payload.find(b"{")
    try:
        obj = orjson.loads(payload[start:]) if start >= 0 else None
        if not isinstance(obj, dict) or "model" not in obj:
            return payload
        obj["model"] = orjson.Fragment(public)
        return payload[:start] + orjson.dumps(obj)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):  # not ours to fix: relayed as it came
        return payload


def render_error_event(error: ApiError) -> bytes:
    """An error inside a started stream: one ``data:`` event with the error object."""
    return b"data: " + error.body() + b"\n\n"


KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: clients (the OpenAI SDK included) skip it


class OpenAIStream:
    """The canonical stream is this dialect's own: events pass through as bytes (renamed to the
    public model name only when it differs from the upstream's id), one write per upstream read."""

    __slots__ = ("_call", "_rename")
    keepalive = KEEPALIVE

    def __init__(self, call: Call) -> None:
        self._call = call
        self._rename = model_renamer(call.route.name, call.route.upstream_model)  # the model that answers

    def events(self, events: list[bytes]) -> bytes:
        """See ``StreamRenderer.events``: ``render_events`` of the (renamed) events."""
        if self._rename is not None:
            events = [self._rename(event) for event in events]
        return render_events(events)

    def end(self, usage_chunk: dict[str, Any] | None, error: ApiError | None) -> bytes:
        """See ``StreamRenderer.end``: the error event, or the usage chunk when the client asked for
        ``stream_options.include_usage``; then ``[DONE]``."""
        call = self._call
        if error is not None:
            return render_error_event(error) + DONE
        if not call.request.include_usage:
            return DONE
        tail = render_usage_chunk(call.request, usage_chunk, response_id=f"chatcmpl-{call.id}", created=int(call.started),
                                  input_tokens=call.input_tokens, output_tokens=call.output_tokens, cost=format_rub(call.sell, 6),
                                  model=call.route.name)
        # The usage chunk may be the upstream's, with its model id.
        return (tail if self._rename is None else self._rename(tail)) + DONE


class OpenAIDialect(Dialect):
    """OpenAI chat completions, completions and embeddings: the canonical form itself."""

    name = "openai"

    def parse(self, endpoint: str, raw: bytes) -> CanonicalRequest:
        """See ``Dialect.parse`` (``parse`` above)."""
        return parse(endpoint, raw)

    def render_body(self, call: Call, body: bytes) -> bytes:
        """See ``Dialect.render_body``: the body as it came, with the public model name."""
        rename = model_renamer(call.route.name, call.route.upstream_model)  # the model that answered (a fallback's, maybe)
        return body if rename is None else rename(body)

    def stream_renderer(self, call: Call) -> OpenAIStream:
        """See ``Dialect.stream_renderer``."""
        return OpenAIStream(call)


OPENAI = OpenAIDialect()
