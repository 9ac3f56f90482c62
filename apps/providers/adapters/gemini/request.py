"""The request map: a canonical (OpenAI) chat or embeddings body → a Gemini ``GenerateContentRequest``
or ``BatchEmbedContentsRequest``.

Sources: https://ai.google.dev/api/generate-content (request, ``GenerationConfig``),
https://ai.google.dev/api/caching#Content (``Content``, ``Part``), https://ai.google.dev/gemini-api/docs/function-calling
(``functionDeclarations``, ``toolConfig``), https://ai.google.dev/gemini-api/docs/thought-signatures and
https://ai.google.dev/api/embeddings (``batchEmbedContents``).

OpenAI → Gemini:

- ``system``/``developer`` messages → ``systemInstruction.parts``; ``user`` → role ``user``;
  ``assistant`` → role ``model``; ``tool`` (and the legacy ``function``) → ``functionResponse`` parts in a
  ``user`` turn, the function's name looked up from the earlier call's id. Consecutive turns of one role
  are merged (Gemini wants the responses to one turn's parallel calls in one turn).
- content parts: ``text`` → ``text``; ``image_url`` with a ``data:`` URL → ``inlineData``, any other URL →
  ``fileData`` (mime type from the URL's extension, else ``image/jpeg``); ``input_audio`` → ``inlineData``;
  ``file`` with ``file_data`` → ``inlineData``.
- ``tool_calls`` → ``functionCall`` parts (arguments parsed from their JSON string); the call's
  ``thoughtSignature`` travels inside its id (``ids.split_call_id``).
- ``tools`` → one ``functionDeclarations`` tool, parameters reduced to Gemini's OpenAPI subset
  (``schema.gemini_schema``); ``tool_choice`` → ``toolConfig.functionCallingConfig``.
- ``max_completion_tokens``/``max_tokens`` → ``maxOutputTokens``, ``temperature``, ``top_p`` → ``topP``,
  ``stop`` → ``stopSequences``, ``n`` → ``candidateCount``, ``seed``, ``presence_penalty``/``frequency_penalty``,
  ``response_format`` → ``responseMimeType`` (+ ``responseSchema``), ``reasoning_effort`` → ``thinkingConfig``.

A body Gemini cannot express raises ``UpstreamFailure`` (``rejected``, 400) before anything is sent.
"""

from __future__ import annotations

import mimetypes
import re
from typing import Any

import orjson

from apps.providers.adapters.base import UpstreamFailure, rejected
from apps.providers.adapters.gemini.ids import split_call_id
from apps.providers.adapters.gemini.schema import gemini_schema

# Google's documented sentinel for a replayed function call whose signature was lost (Gemini 3+ only).
SKIP_SIGNATURE = "skip_thought_signature_validator"
_SIGNED_MODELS = re.compile(r"^(?:models/)?gemini-(\d+)")
# OpenAI's reasoning_effort → a thinking budget in tokens (what Google's own OpenAI-compatible endpoint does:
# https://ai.google.dev/gemini-api/docs/openai#thinking).
_THINKING_BUDGETS = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}


def invalid(message: str) -> UpstreamFailure:
    """A 400 for a request the Gemini wire cannot carry (no failover: every key would refuse it)."""
    return rejected(400, message, code="invalid_request")


def chat_request(body: dict[str, Any], *, upstream_model: str) -> dict[str, Any]:
    """The ``GenerateContentRequest`` JSON object for an OpenAI chat ``body``. Raises ``UpstreamFailure`` (400)."""
    system, contents = _contents(body.get("messages") or [], signed=_needs_signatures(upstream_model))
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    tools = _tools(body.get("tools"), body.get("functions"))
    if tools:
        request["tools"] = tools
    tool_config = _tool_config(body.get("tool_choice", body.get("function_call")))
    if tool_config:
        request["toolConfig"] = tool_config
    config = _generation_config(body)
    if config:
        request["generationConfig"] = config
    return request


def embed_request(body: dict[str, Any], *, upstream_model: str) -> dict[str, Any]:
    """The ``BatchEmbedContentsRequest`` for an OpenAI embeddings ``body``: one request per input string,
    ``dimensions`` → ``outputDimensionality``. Token-array inputs cannot be sent (Gemini takes text): 400."""
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        raise invalid("Gemini embeddings take text: 'input' must be a string or a list of strings.")
    name = upstream_model if upstream_model.startswith("models/") else f"models/{upstream_model}"
    item: dict[str, Any] = {"model": name}
    if isinstance(body.get("dimensions"), int):
        item["outputDimensionality"] = body["dimensions"]
    return {"requests": [{**item, "content": {"parts": [{"text": text}]}} for text in texts]}


def _needs_signatures(upstream_model: str) -> bool:
    match = _SIGNED_MODELS.match(upstream_model)
    return match is not None and int(match.group(1)) >= 3


# --------------------------------------------------------------------------- messages


def _contents(messages: list[Any], *, signed: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(systemInstruction parts, contents) of OpenAI ``messages``."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id → function name, for the tool messages that answer them
    for message in messages:
        if not isinstance(message, dict):
            raise invalid("Each message must be an object.")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_parts(message.get("content")))
            continue
        if role == "user":
            _append(contents, "user", _parts(message.get("content")))
        elif role == "assistant":
            _append(contents, "model", _assistant_parts(message, names, signed=signed))
        elif role in ("tool", "function"):
            _append(contents, "user", [_function_response(message, names)])
        else:
            raise invalid(f"Unsupported message role: {role!r}.")
    if not contents:
        raise invalid("Gemini needs at least one user or assistant message besides the system prompt.")
    return system, contents


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise invalid("Message content must be a string or a list of parts.")
    return [part for item in content if (part := _part(item)) is not None]


def _part(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        raise invalid("Each content part must be an object.")
    kind = item.get("type")
    if kind in ("text", "input_text"):
        text = item.get("text")
        return {"text": text} if isinstance(text, str) and text else None
    if kind == "image_url":
        image = item.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        return _media(url, default_type="image/jpeg")
    if kind == "input_audio":
        audio = item.get("input_audio") or {}
        mime = _AUDIO_TYPES.get(str(audio.get("format", "")).lower())
        if mime is None or not isinstance(audio.get("data"), str):
            raise invalid("input_audio needs base64 'data' and a 'format' of wav or mp3.")
        return {"inlineData": {"mimeType": mime, "data": audio["data"]}}
    if kind == "file":
        data = (item.get("file") or {}).get("file_data")
        return _media(data, default_type="application/pdf")
    raise invalid(f"Content part type {kind!r} is not supported by Gemini models.")


def _media(url: Any, *, default_type: str) -> dict[str, Any]:
    """``inlineData`` for a ``data:<mime>;base64,<data>`` URL, ``fileData`` for any other URL."""
    if not isinstance(url, str) or not url:
        raise invalid("An image or file part needs a URL.")
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        mime, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or not data:
            raise invalid("A data URL must be base64: data:<mime type>;base64,<data>.")
        return {"inlineData": {"mimeType": mime or default_type, "data": data}}
    guessed, _ = mimetypes.guess_type(url.split("?", 1)[0])
    return {"fileData": {"mimeType": guessed or default_type, "fileUri": url}}


def _assistant_parts(message: dict[str, Any], names: dict[str, str], *, signed: bool) -> list[dict[str, Any]]:
    parts = _parts(message.get("content"))
    calls = message.get("tool_calls") or []
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        calls = [*calls, {"id": "", "function": legacy}]
    for position, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid("Each tool call needs a function with a name.")
        call_id = str(call.get("id") or "")
        names[call_id] = function["name"]
        part: dict[str, Any] = {"functionCall": {"name": function["name"], "args": _arguments(function.get("arguments"))}}
        signature = split_call_id(call_id)
        if signature:
            part["thoughtSignature"] = signature
        elif signed and position == 0:
            # Gemini 3 refuses a replayed call without the signature it was given; the history came from
            # elsewhere (another provider, a client that rebuilt it): Google's documented way through.
            part["thoughtSignature"] = SKIP_SIGNATURE
        parts.append(part)
    return parts


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if raw in (None, ""):
        return {}
    try:
        value = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError:
        raise invalid("Tool call arguments must be a JSON object.") from None
    if not isinstance(value, dict):
        raise invalid("Tool call arguments must be a JSON object.")
    return value


def _function_response(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """A ``functionResponse`` part. Gemini's ``response`` is an object: a JSON-object result goes as it
    is, anything else as ``{"output": …}`` (the key Google's docs name for a function's output)."""
    name = message.get("name") if message.get("role") == "function" else names.get(str(message.get("tool_call_id") or ""))
    if not isinstance(name, str) or not name:
        raise invalid("A tool message must answer a tool call made earlier in the conversation (unknown tool_call_id).")
    text = _text_of(message.get("content"))
    try:
        value = orjson.loads(text) if text else ""
    except orjson.JSONDecodeError:
        value = text
    return {"functionResponse": {"name": name, "response": value if isinstance(value, dict) else {"output": value}}}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


# --------------------------------------------------------------------------- tools


def _tools(tools: Any, functions: Any) -> list[dict[str, Any]]:
    declarations = []
    for tool in tools or []:
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise invalid("Only function tools can be sent to Gemini models.")
        declarations.append(_declaration(tool.get("function")))
    for function in functions or []:  # the legacy ``functions`` field
        declarations.append(_declaration(function))
    return [{"functionDeclarations": declarations}] if declarations else []


def _declaration(function: Any) -> dict[str, Any]:
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise invalid("Each function tool needs a name.")
    declaration: dict[str, Any] = {"name": function["name"]}
    if isinstance(function.get("description"), str):
        declaration["description"] = function["description"]
    parameters = gemini_schema(function.get("parameters"))
    # An object with no properties is refused ("properties: should be non-empty for OBJECT type"): a
    # function without arguments declares no parameters at all.
    if parameters and parameters.get("properties"):
        declaration["parameters"] = parameters
    return declaration


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        mode = _TOOL_MODES.get(choice)
        if mode is None:
            raise invalid(f"Unsupported tool_choice {choice!r}.")
        return {"functionCallingConfig": {"mode": mode}}
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else choice.get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise invalid("tool_choice must be 'auto', 'none', 'required' or name a function.")
    return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}


# --------------------------------------------------------------------------- generation config


_SCALARS = (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed"), ("presence_penalty", "presencePenalty"),
            ("frequency_penalty", "frequencyPenalty"), ("n", "candidateCount"))


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {gemini: body[openai] for openai, gemini in _SCALARS if body.get(openai) is not None}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    config.update(_response_format(body.get("response_format")))
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in _THINKING_BUDGETS:
            raise invalid(f"Unsupported reasoning_effort {effort!r}.")
        config["thinkingConfig"] = {"thinkingBudget": _THINKING_BUDGETS[effort]}
    return config


def _response_format(response_format: Any) -> dict[str, Any]:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        schema = gemini_schema((response_format.get("json_schema") or {}).get("schema"))
        return {"responseMimeType": "application/json", **({"responseSchema": schema} if schema else {})}
    return {}
