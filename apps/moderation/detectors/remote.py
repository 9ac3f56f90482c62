"""The two remote layers: the LLM moderator (an OpenAI-compatible chat endpoint in the company's
perimeter — vLLM, Ollama — asked with the policy's prompt for allow/block, a category and a reason) and an
external moderation API in OpenAI's ``/v1/moderations`` format. Both are called with httpx, time-boxed by
the policy (``EndpointConfig.timeout_seconds``), redirects not followed; the API key goes in
``Authorization: Bearer`` and never into a log or an error.

A flag is one detection spanning the whole text (``start`` 0, ``end`` ``len(text)``): the LLM's category
when it names one of ours, else ``HARMFUL``; every ``/v1/moderations`` flag is ``HARMFUL``. A timeout, a
connection error, a non-2xx status or an answer that does not parse raises ``RemoteLayerError``; the scan
applies the policy's failure rule to it.

Wire formats: OpenAI Chat Completions (``POST {base}/chat/completions``, ``choices[0].message.content``)
and Moderations (``POST {base}/moderations`` with ``{"model", "input"}`` →
``results[0].flagged/categories/category_scores``), https://platform.openai.com/docs/api-reference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx

from apps.moderation.exceptions import RemoteLayerError
from apps.moderation.findings import Category, Detection
from apps.moderation.policies import EndpointConfig

LLM = "llm"
EXTERNAL = "external"
MAX_INPUT_CHARS = 32_000  # what one moderation call sends at most (a prompt's head; the local layers see all)
_JSON_OBJECT = re.compile(r"\{[\s\S]*\}")


def _headers(config: EndpointConfig) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    return headers


def _url(config: EndpointConfig, path: str) -> str:
    return config.base_url.rstrip("/") + path


def llm_request(config: EndpointConfig, text: str) -> dict[str, Any]:
    """The chat completion body that asks the moderator about ``text``."""
    return {
        "model": config.model,
        "messages": [{"role": "system", "content": config.prompt}, {"role": "user", "content": text[:MAX_INPUT_CHARS]}],
        "temperature": 0,
        "max_tokens": 200,
        "stream": False,
    }


def parse_llm_answer(body: Any, text: str) -> Iterator[Detection]:
    """The moderator's verdict in a chat completion ``body``: nothing for allow, one whole-text detection
    for block. Raises ``RemoteLayerError`` for an answer with no JSON verdict."""
    try:
        content = body["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise RemoteLayerError(LLM, "the answer has no choices[0].message.content") from None
    found = _JSON_OBJECT.search(content)
    try:
        verdict = json.loads(found.group()) if found else None
    except json.JSONDecodeError:
        verdict = None
    if not isinstance(verdict, dict) or str(verdict.get("action", "")).lower() not in ("allow", "block"):
        raise RemoteLayerError(LLM, "the answer is not a JSON verdict with action allow or block")
    if str(verdict["action"]).lower() == "allow":
        return
    try:
        category = Category(str(verdict.get("category", "")).lower())
    except ValueError:
        category = Category.HARMFUL
    yield Detection(category, 0, len(text), text, LLM)


def parse_moderations_answer(body: Any, text: str) -> Iterator[Detection]:
    """A ``/v1/moderations`` answer: one whole-text ``HARMFUL`` detection when any result is flagged.
    Raises ``RemoteLayerError`` for a body without ``results``."""
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list):
        raise RemoteLayerError(EXTERNAL, "the answer has no results")
    if any(isinstance(r, dict) and r.get("flagged") for r in results):
        yield Detection(Category.HARMFUL, 0, len(text), text, EXTERNAL)


def _json(response: httpx.Response, layer: str) -> Any:
    if response.status_code // 100 != 2:
        raise RemoteLayerError(layer, f"HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise RemoteLayerError(layer, "the answer is not JSON") from None


class LlmModerator:
    """The LLM moderator layer for one policy's endpoint (sync ``detect``; async ``adetect``)."""

    name = LLM

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config

    def detect(self, text: str, *, timeout: float | None = None) -> list[Detection]:
        """Raises ``RemoteLayerError`` (timeout, transport, status, unparsable answer)."""
        if not text.strip():
            return []
        limit = self.config.timeout_seconds if timeout is None else min(timeout, self.config.timeout_seconds)
        try:
            with httpx.Client(timeout=limit, follow_redirects=False) as client:
                response = client.post(_url(self.config, "/chat/completions"), json=llm_request(self.config, text),
                                       headers=_headers(self.config))
        except httpx.TimeoutException:
            raise RemoteLayerError(LLM, f"no answer within {limit:.3g} s") from None
        except httpx.HTTPError as exc:
            raise RemoteLayerError(LLM, f"transport error: {type(exc).__name__}") from None
        return list(parse_llm_answer(_json(response, LLM), text))

    async def adetect(self, text: str, *, timeout: float | None = None) -> list[Detection]:
        """``detect`` for the event loop."""
        if not text.strip():
            return []
        limit = self.config.timeout_seconds if timeout is None else min(timeout, self.config.timeout_seconds)
        try:
            async with httpx.AsyncClient(timeout=limit, follow_redirects=False) as client:
                response = await client.post(_url(self.config, "/chat/completions"),
                                             json=llm_request(self.config, text), headers=_headers(self.config))
        except httpx.TimeoutException:
            raise RemoteLayerError(LLM, f"no answer within {limit:.3g} s") from None
        except httpx.HTTPError as exc:
            raise RemoteLayerError(LLM, f"transport error: {type(exc).__name__}") from None
        return list(parse_llm_answer(_json(response, LLM), text))


class ExternalModeration:
    """The external ``/v1/moderations`` layer for one policy's endpoint."""

    name = EXTERNAL

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config

    def _body(self, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {"input": text[:MAX_INPUT_CHARS]}
        if self.config.model:
            body["model"] = self.config.model
        return body

    def detect(self, text: str, *, timeout: float | None = None) -> list[Detection]:
        """Raises ``RemoteLayerError`` (timeout, transport, status, unparsable answer)."""
        if not text.strip():
            return []
        limit = self.config.timeout_seconds if timeout is None else min(timeout, self.config.timeout_seconds)
        try:
            with httpx.Client(timeout=limit, follow_redirects=False) as client:
                response = client.post(_url(self.config, "/moderations"), json=self._body(text),
                                       headers=_headers(self.config))
        except httpx.TimeoutException:
            raise RemoteLayerError(EXTERNAL, f"no answer within {limit:.3g} s") from None
        except httpx.HTTPError as exc:
            raise RemoteLayerError(EXTERNAL, f"transport error: {type(exc).__name__}") from None
        return list(parse_moderations_answer(_json(response, EXTERNAL), text))
