"""YandexGPT's native wire format (Foundation Models ``/foundationModels/v1``), piece by piece:
model URIs, the request map, the answer map, usage and errors.

Sources: https://yandex.cloud/en/docs/ai-studio/text-generation/api-ref/TextGeneration/completion
(request, ``CompletionResponse``, ``ContentUsage`` — int64 counts serialised as JSON *strings*),
https://yandex.cloud/en/docs/foundation-models/embeddings/api-ref/Embeddings/textEmbedding and
https://yandex.cloud/en/docs/ai-studio/troubleshooting/error-codes (the gRPC-gateway error shape
``{"error": {"grpcCode", "httpCode", "message", "httpStatus", "details"}}``). On the wire a completion
answer is wrapped in ``{"result": …}`` (the RPC is server-streaming, grpc-gateway wraps each message).
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from typing import Any

import orjson

from apps.providers.adapters.base import UpstreamFailure, Usage, rejected

COMPLETION_PATH = "/completion"
EMBEDDING_PATH = "/textEmbedding"

# alternatives[].status → OpenAI's finish_reason; PARTIAL and UNSPECIFIED are not final.
FINISH_REASONS = {
    "ALTERNATIVE_STATUS_FINAL": "stop",
    "ALTERNATIVE_STATUS_TRUNCATED_FINAL": "length",
    "ALTERNATIVE_STATUS_CONTENT_FILTER": "content_filter",
    "ALTERNATIVE_STATUS_TOOL_CALLS": "tool_calls",
}

# OpenAI tool_choice strings → Yandex's toolChoice.mode.
_TOOL_CHOICE_MODES = {"none": "NONE", "auto": "AUTO", "required": "REQUIRED"}


def model_uri(folder_id: str, upstream_model: str, *, scheme: str = "gpt") -> str:
    """``<scheme>://<folder_id>/<upstream_model>`` (``gpt`` for text models, ``emb`` for embeddings);
    an ``upstream_model`` that already is a URI (``gpt://…``, ``emb://…``, ``ds://…``) is used as is."""
    if "://" in upstream_model:
        return upstream_model
    return f"{scheme}://{folder_id}/{upstream_model.lstrip('/')}"


def _text(content: Any) -> str:
    """An OpenAI message ``content`` (a string or a list of parts) as plain text. Raises
    ``UpstreamFailure`` (400) for a non-text part: the native API takes text only."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content if isinstance(content, list) else [content]:
        if not (isinstance(part, dict) and part.get("type") == "text"):
            raise rejected(400, "YandexGPT's native API takes text only (no images or audio); "
                                "use a vision model through the provider's 'api: openai' mode.", code="invalid_value")
        parts.append(str(part.get("text") or ""))
    return "".join(parts)


def _arguments(raw: Any) -> Any:
    # OpenAI sends tool-call arguments as a JSON string; Yandex wants the object (a protobuf Struct).
    if isinstance(raw, str):
        try:
            return orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            raise rejected(400, "A tool call's arguments are not valid JSON.", code="invalid_value") from None
    return raw if raw is not None else {}


def _tool_call_list(calls: list, names: dict[str, str]) -> dict:
    out = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        function = function if isinstance(function, dict) else {}
        name = str(function.get("name") or "")
        if isinstance(call, dict) and call.get("id"):
            names[str(call["id"])] = name  # a later tool message names its call by id, Yandex by name
        out.append({"functionCall": {"name": name, "arguments": _arguments(function.get("arguments"))}})
    return {"role": "assistant", "toolCallList": {"toolCalls": out}}


def messages(openai_messages: list) -> list[dict]:
    """OpenAI chat ``messages`` → Yandex ``messages``: system/developer → ``system``; user and
    assistant text → ``text``; an assistant's ``tool_calls`` → ``toolCallList`` (arguments as
    objects); consecutive ``tool`` messages → one ``toolResultList`` whose results are matched by
    function name (Yandex has no call ids: a name comes from the assistant call with that id, else
    the message's ``name``). Raises ``UpstreamFailure`` (400) for images or bad tool arguments."""
    out: list[dict] = []
    names: dict[str, str] = {}
    for message in openai_messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "tool":
            call_id = str(message.get("tool_call_id") or "")
            result = {"functionResult": {"name": names.get(call_id) or str(message.get("name") or call_id),
                                         "content": _text(message.get("content"))}}
            previous = out[-1] if out else None
            if previous is not None and "toolResultList" in previous:
                previous["toolResultList"]["toolResults"].append(result)
            else:
                out.append({"role": "assistant", "toolResultList": {"toolResults": [result]}})
            continue
        text = _text(message.get("content"))
        if role == "assistant" and message.get("tool_calls"):
            if text:
                out.append({"role": "assistant", "text": text})
            out.append(_tool_call_list(list(message["tool_calls"]), names))
            continue
        out.append({"role": "system" if role in ("system", "developer") else str(role or "user"), "text": text})
    return out


def _tools(body: dict) -> dict[str, Any]:
    """``tools``, ``toolChoice`` and ``parallelToolCalls`` from an OpenAI body (only those it has)."""
    fields: dict[str, Any] = {}
    tools: list[dict] = [t["function"] for t in body.get("tools") or []
                         if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if tools:
        fields["tools"] = [{"function": {k: f[k] for k in ("name", "description", "parameters", "strict") if k in f}}
                           for f in tools]
    choice = body.get("tool_choice")
    if isinstance(choice, str) and choice in _TOOL_CHOICE_MODES:
        fields["toolChoice"] = {"mode": _TOOL_CHOICE_MODES[choice]}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        fields["toolChoice"] = {"functionName": str(choice["function"].get("name") or "")}
    if isinstance(body.get("parallel_tool_calls"), bool):
        fields["parallelToolCalls"] = body["parallel_tool_calls"]
    return fields


def _response_format(body: dict) -> dict[str, Any]:
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return {}
    if response_format.get("type") == "json_object":
        return {"jsonObject": True}
    schema = response_format.get("json_schema")
    if response_format.get("type") == "json_schema" and isinstance(schema, dict):
        return {"jsonSchema": {"schema": schema.get("schema") or {}}}
    return {}


def completion_body(body: dict, *, uri: str, stream: bool) -> bytes:
    """The ``/completion`` request for an OpenAI chat ``body``: ``modelUri``, ``completionOptions``
    (``stream``; ``temperature``; ``maxTokens`` from ``max_completion_tokens`` or ``max_tokens``, as
    a string — int64 in protobuf JSON), ``messages`` (see ``messages``), tools and response format.
    Parameters the API lacks (``stop``, ``top_p``, ``n``, penalties, ``seed``) are not sent."""
    options: dict[str, Any] = {"stream": stream}
    if isinstance(body.get("temperature"), int | float):
        options["temperature"] = body["temperature"]
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        options["maxTokens"] = str(max_tokens)
    mapped: dict[str, Any] = {"modelUri": uri, "completionOptions": options,
                              "messages": messages(list(body.get("messages") or []))}
    mapped.update(_tools(body))
    mapped.update(_response_format(body))
    return orjson.dumps(mapped)


def embedding_body(body: dict, *, uri: str) -> bytes:
    """The ``/textEmbedding`` request (``modelUri``, ``text``; ``dimensions`` → ``dim`` as a string).
    The API embeds one text per call: an ``input`` that is a list of several texts, or token ids,
    raises ``UpstreamFailure`` (400)."""
    text = body.get("input")
    if isinstance(text, list) and len(text) == 1 and isinstance(text[0], str):
        text = text[0]
    if not isinstance(text, str):
        raise rejected(400, "YandexGPT embeds one text per request: send 'input' as a single string.",
                       code="invalid_value")
    mapped: dict[str, Any] = {"modelUri": uri, "text": text}
    if isinstance(body.get("dimensions"), int):
        mapped["dim"] = str(body["dimensions"])
    return orjson.dumps(mapped)


def count(value: Any) -> int:
    """A token count as Yandex sends it (an int64 as a JSON string, or a number): a non-negative int, else 0."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_of(result: dict) -> Usage | None:
    """``result.usage`` in tokens, or None when absent: ``inputTextTokens`` → input (Yandex reports
    no prompt cache: cached 0), ``completionTokens`` (reasoning tokens included, as
    ``completionTokensDetails.reasoningTokens`` is their detail) → output."""
    usage = result.get("usage")
    if not isinstance(usage, dict):
        return None
    return Usage(count(usage.get("inputTextTokens")), count(usage.get("completionTokens")), 0)


def openai_usage(result: dict) -> dict[str, Any] | None:
    """``result.usage`` as OpenAI's ``usage`` object (integers; reasoning tokens in ``completion_tokens_details``)."""
    usage = result.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = count(usage.get("inputTextTokens")), count(usage.get("completionTokens"))
    details = usage.get("completionTokensDetails")
    reasoning = count(details.get("reasoningTokens")) if isinstance(details, dict) else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": count(usage.get("totalTokens")) or prompt + completion,
            "completion_tokens_details": {"reasoning_tokens": reasoning}}


def tool_calls(message: dict) -> list[dict]:
    """``message.toolCallList.toolCalls[].functionCall`` as OpenAI ``tool_calls`` (arguments as a JSON
    string, fresh ``call_…`` ids: Yandex has none)."""
    calls = (message.get("toolCallList") or {}).get("toolCalls") or []
    out = []
    for index, call in enumerate(calls):
        function = call.get("functionCall") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        arguments = function.get("arguments")
        out.append({"index": index, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                    "function": {"name": str(function.get("name") or ""),
                                 "arguments": orjson.dumps(arguments if arguments is not None else {}).decode()}})
    return out


def alternatives(result: dict) -> list[dict]:
    """``result.alternatives`` (only the dicts among them)."""
    return [a for a in result.get("alternatives") or [] if isinstance(a, dict)]


def message_of(alternative: dict) -> dict:
    """An alternative's ``message`` (an empty dict when it has none)."""
    message = alternative.get("message")
    return message if isinstance(message, dict) else {}


def text_of(message: dict) -> str | None:
    """A message's ``text``, or None when it has none (a tool-call message)."""
    text = message.get("text")
    return text if isinstance(text, str) else None


def _choice(index: int, alternative: dict) -> dict:
    message = message_of(alternative)
    calls = tool_calls(message)
    out: dict[str, Any] = {"role": "assistant", "content": text_of(message)}
    if calls:
        out["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in calls]
    finish = FINISH_REASONS.get(str(alternative.get("status")), "stop")
    return {"index": index, "message": out, "finish_reason": "tool_calls" if calls else finish, "logprobs": None}


def chat_completion(result: dict, *, model: str) -> dict[str, Any]:
    """A ``CompletionResponse`` as an OpenAI ``chat.completion`` object named ``model``."""
    completion: dict[str, Any] = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                                  "model": model, "choices": [_choice(i, a) for i, a in enumerate(alternatives(result))]}
    usage = openai_usage(result)
    if usage is not None:
        completion["usage"] = usage
    return completion


def embedding_list(answer: dict, *, model: str, encoding_format: str | None) -> tuple[dict[str, Any], Usage]:
    """A ``TextEmbeddingResponse`` (``embedding`` — doubles, which the REST reference shows as strings:
    both are read —, ``numTokens`` as a string) as OpenAI's embeddings ``list`` and its usage. With
    ``encoding_format="base64"`` the vector is little-endian float32 bytes in base64, as OpenAI sends it.
    Raises ``ValueError`` when ``embedding`` is not a list of numbers."""
    raw = answer.get("embedding")
    if not isinstance(raw, list):
        raise ValueError("no embedding")
    vector = [float(v) for v in raw]
    tokens = count(answer.get("numTokens"))
    data: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if encoding_format == "base64" else vector
    return ({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": data}], "model": model,
             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, Usage(tokens, 0, 0))


def as_openai_error(body: bytes) -> bytes:
    """A Yandex error body (``{"error": {"grpcCode", "httpCode", "message", "httpStatus"}}``, or the
    unary RPCs' ``{"code", "message", "details"}``) rewritten as OpenAI's ``{"error": {"message",
    "code", "status"}}`` so the OpenAI adapter's mapping can read it: ``status`` is ``httpCode``; the
    code is one of the gateway's request codes when the message says which (input too long →
    ``context_length_exceeded``; gRPC NOT_FOUND → ``model_not_found``), else none. A body of any other
    shape (OpenAI's own, from the compatible endpoint; plain text) is returned unchanged."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    error = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(error, dict):
        error = obj if isinstance(obj, dict) and "grpcCode" not in obj and isinstance(obj.get("code"), int) else None
        if error is None:
            return body
    if "grpcCode" not in error and "httpCode" not in error and not isinstance(error.get("code"), int):
        return body  # already OpenAI's shape
    message = str(error.get("message") or "")
    grpc = count(error.get("grpcCode") if "grpcCode" in error else error.get("code"))
    code = None
    if "number of input tokens must be no more than" in message or "which is outside the range" in message:
        code = "context_length_exceeded"
    elif grpc == 5:
        code = "model_not_found"
    return orjson.dumps({"error": {"message": message or None, "code": code, "status": count(error.get("httpCode")) or None}})


def misconfigured(what: str) -> UpstreamFailure:
    """The provider's options cannot work (no ``folder_id``, an unknown ``auth`` or ``api``): 502, no failover."""
    return UpstreamFailure(502, f"The YandexGPT provider is misconfigured: {what}.", code="provider_misconfigured")


def generated_text(completion: dict) -> str:
    """Everything the model produced in a ``chat_completion`` object (text, tool names and arguments), for local counting."""
    parts: list[str] = []
    for choice in completion.get("choices") or []:
        message = choice.get("message") or {}
        parts.append(message.get("content") or "")
        for call in message.get("tool_calls") or []:
            parts += [call["function"]["name"], call["function"]["arguments"]]
    return "".join(parts)
