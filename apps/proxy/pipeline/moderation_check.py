"""Moderation without inference: ``POST /v1/moderation/check`` and OpenAI-compatible ``POST /v1/moderations``.

Both authenticate the API token like every ``/v1`` call, count against its RPM (a sliding minute shared
with inference, ``redis_scripts.rate_keys``), are never charged nor metered, and scan with the token's
policy (``apps.moderation.policies.apolicy_for``; ``apps.moderation.scan.scan`` in a worker thread — the
NER model is CPU work and the remote layers are network calls).

``/v1/moderation/check``: ``{"input": "..."}`` or ``{"messages": [{"role", "content"}, ...]}`` (content a
string or a list of ``{"type": "text", "text"}`` parts; other parts are not scanned here), optional
``"direction": "prompt" | "response"`` →
``{"action": "allow|log|mask|block", "masked": ..., "findings": [{"category", "start", "end", "detector",
"action"}]}`` — every detection, whatever its action; offsets in Unicode code points of ``input`` (for
``messages``: of that message's text, and the finding names its ``"message"`` index); the value itself
never. ``masked`` is ``input`` (or each message's text) with every ``mask`` finding replaced by its
placeholder (``[PHONE_1]``: one per distinct value and category, as the moderation stage masks). A scan
that fails with the policy failing closed answers ``"action": "block"`` and ``"failed": {"layer", "reason"}``.

``/v1/moderations``: OpenAI's request (``input``: a string, a list of strings, or a list of ``text`` parts;
``model`` optional) and response (``id``, ``model``, ``results[].flagged/categories/category_scores/
category_applied_input_types``, https://platform.openai.com/docs/api-reference/moderations). OpenAI's
categories are all present; the local layers find no hate, violence or sexual content, so they are false
unless the LLM moderator or the external API flags the text (``harmful`` → ``illicit``). Our categories
are added under their own names (``person``, ``phone``, ``secret``, ``prompt_injection``…): true when the
policy blocks them, with score 1.0 when detected at all; ``flagged`` is true when any category is. With
the company's policy off, the platform's default actions are used, so the endpoint always answers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson

from apps.moderation.exceptions import ScanFailed
from apps.moderation.findings import Action, Category, Direction, Finding, strongest
from apps.moderation.models import Policy, PolicyMode
from apps.moderation.policies import EffectivePolicy, apolicy_for, effective_policy
from apps.moderation.scan import scan
from lib.resp import Redis

from ..exceptions import bad_request
from ..redis_scripts import rate_keys
from ..snapshot import SnapshotCache
from .admission import authenticate, read_body
from .context import Call
from .refusals import rate_refusal
from .responses import send_json

CHECK = b"/v1/moderation/check"
MODERATIONS = b"/v1/moderations"
PATHS = frozenset({CHECK, MODERATIONS})
MAX_INPUTS = 32  # strings in one /v1/moderations call (OpenAI's own cap)
DEFAULT_MODEL = "jetstream-moderation"

OPENAI_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
                     "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
                     "violence/graphic")
_OURS_TO_OPENAI = {Category.HARMFUL: "illicit"}

# One request against the token's RPM, sliding minute; the same keys and arithmetic as RESERVE's RPM part.
# KEYS: rpm this minute, rpm last minute; ARGV: limit, fraction of the minute elapsed.
# Returns {0} when admitted; {1, used, wait seconds, never} when refused.
RPM_ONLY = """
local limit, frac = tonumber(ARGV[1]), tonumber(ARGV[2])
local cur, prev = tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(redis.call('GET', KEYS[2]) or '0')
local used = prev * (1 - frac) + cur
if used + 1 > limit then
  if limit < 1 then return {1, tostring(math.floor(used)), '0', 1} end
  local room = limit - 1
  local wait
  if cur <= room then
    if prev <= 0 then wait = 1 else wait = math.max(1, math.ceil(60 * ((1 - (room - cur) / prev) - frac))) end
  else
    wait = math.max(1, math.ceil(60 * (1 - frac) + 60 * (1 - room / cur)))
  end
  return {1, tostring(math.floor(used)), tostring(wait), 0}
end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 130)
return {0}
"""


def _fallback_policy() -> EffectivePolicy:
    """The platform's default actions (every local layer, no remote one) for a company whose policy is off."""
    return effective_policy(Policy(mode=PolicyMode.ENFORCE))


class ModerationCheck:
    """The two endpoints for one worker (its Redis connection for the RPM count)."""

    def __init__(self, redis: Redis, snapshots: SnapshotCache, max_body: int) -> None:
        self.redis = redis
        self.snapshots = snapshots
        self.max_body = max_body
        self._rpm = redis.register_script(RPM_ONLY)
        self._fallback: EffectivePolicy | None = None

    async def handle(self, call: Call, path: bytes, receive, send) -> None:
        """Answer ``path`` (one of ``PATHS``). Raises ``ApiError``: 401/403 (token), 429/403 (RPM), 413
        (size), 400 (not JSON, or fields missing or of the wrong type)."""
        token = await authenticate(call, self.snapshots)
        await self._admit_rpm(call)
        body = _json_object(await read_body(call.scope, receive, self.max_body))
        policy = await apolicy_for(token.company_id, token.id)
        if path == CHECK:
            await send_json(send, call, 200, await self._check(body, policy))
        else:
            if not policy.active:
                if self._fallback is None:
                    self._fallback = await asyncio.to_thread(_fallback_policy)
                policy = self._fallback
            await send_json(send, call, 200, await self._moderations(body, policy))

    async def _admit_rpm(self, call: Call) -> None:
        if not call.token.rpm:
            return
        current, previous, _, _, frac = rate_keys(call.token.id, time.time())
        result = await self.redis.evalsha(self._rpm, [current, previous], [call.token.rpm, frac])
        if int(result[0]) == 1:
            used, wait, never = int(result[1]), int(result[2]), int(result[3]) == 1
            raise rate_refusal("rpm", call.token.rpm, used, wait, never=never, call=call)

    async def _check(self, body: dict[str, Any], policy: EffectivePolicy) -> dict[str, Any]:
        direction = _direction(body)
        texts, is_messages = _check_texts(body)
        numbering: dict[tuple[Category, str], str] = {}
        findings_out: list[dict[str, Any]] = []
        masked: list[str] = []
        actions: list[Action] = []
        for index, text in enumerate(texts):
            try:
                findings = await asyncio.to_thread(scan, text, policy, direction)
            except ScanFailed as failure:
                return {"action": Action.BLOCK.value, "masked": None, "findings": findings_out,
                        "failed": {"layer": failure.layer, "reason": failure.reason}}
            for finding in findings:
                entry = _finding_json(finding)
                if is_messages:
                    entry["message"] = index
                findings_out.append(entry)
            actions.extend(f.action for f in findings)
            masked.append(mask_text(text, findings, numbering))
        return {"action": strongest(actions).value, "masked": masked if is_messages else masked[0],
                "findings": findings_out}

    async def _moderations(self, body: dict[str, Any], policy: EffectivePolicy) -> dict[str, Any]:
        texts = _moderation_inputs(body.get("input"))
        model = body.get("model")
        results = []
        for text in texts:
            try:
                findings = await asyncio.to_thread(scan, text, policy, Direction.PROMPT)
            except ScanFailed:
                results.append(_moderation_result([], failed=True))
                continue
            results.append(_moderation_result(findings, failed=False))
        return {"id": f"modr-{uuid.uuid4().hex}", "model": model if isinstance(model, str) and model else DEFAULT_MODEL,
                "results": results}


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return body


def _direction(body: dict[str, Any]) -> Direction:
    value = body.get("direction", Direction.PROMPT.value)
    try:
        return Direction(value)
    except ValueError:
        raise bad_request("'direction' must be 'prompt' or 'response'.", param="direction") from None


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise bad_request(f"messages[{index}].content parts must be objects.", param=f"messages[{index}].content")
            if part.get("type") in ("text", "input_text") and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    raise bad_request(f"messages[{index}].content must be a string or a list of parts.", param=f"messages[{index}].content")


def _check_texts(body: dict[str, Any]) -> tuple[list[str], bool]:
    if "input" in body:
        if not isinstance(body["input"], str):
            raise bad_request("'input' must be a string.", param="input")
        return [body["input"]], False
    messages = body.get("messages")
    if messages is None:
        raise bad_request("Send 'input' (a string) or 'messages' (a list of messages).", param="input")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of messages.", param="messages")
    texts = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{index}] must be an object.", param=f"messages[{index}]")
        texts.append(_content_text(message.get("content"), index))
    return texts, True


def _moderation_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and len(value) <= MAX_INPUTS:
        if all(isinstance(item, str) for item in value):
            return value
        if all(isinstance(item, dict) for item in value):
            texts = [item["text"] for item in value if item.get("type") == "text" and isinstance(item.get("text"), str)]
            return ["\n".join(texts)]
    raise bad_request(f"'input' must be a string, a list of up to {MAX_INPUTS} strings, or a list of text parts.",
                      param="input")


def _finding_json(finding: Finding) -> dict[str, Any]:
    detection = finding.detection
    return {"category": detection.category.value, "start": detection.start, "end": detection.end,
            "detector": detection.detector, "action": finding.action.value}


def mask_text(text: str, findings: list[Finding], numbering: dict[tuple[Category, str], str]) -> str:
    """``text`` with each ``mask`` finding replaced by ``[STEM_n]`` — n counted per category in the order
    values are first met, the same value keeping its placeholder (``numbering`` is shared by the texts of
    one request). Findings do not overlap (``scan`` resolved them)."""
    out: list[str] = []
    at = 0
    for finding in sorted(findings, key=lambda f: f.detection.start):
        detection = finding.detection
        if finding.action != Action.MASK or detection.start < at:
            continue
        key = (detection.category, detection.value)
        if key not in numbering:
            count = sum(1 for category, _ in numbering if category == detection.category) + 1
            numbering[key] = f"[{detection.category.placeholder_stem}_{count}]"
        out.append(text[at:detection.start])
        out.append(numbering[key])
        at = detection.end
    out.append(text[at:])
    return "".join(out)


def _moderation_result(findings: list[Finding], *, failed: bool) -> dict[str, Any]:
    categories: dict[str, bool] = dict.fromkeys(OPENAI_CATEGORIES, False)
    scores: dict[str, float] = dict.fromkeys(OPENAI_CATEGORIES, 0.0)
    for category in Category:
        categories[category.value] = False
        scores[category.value] = 0.0
    for finding in findings:
        name = finding.category.value
        scores[name] = 1.0
        if finding.action == Action.BLOCK:
            categories[name] = True
        theirs = _OURS_TO_OPENAI.get(finding.category)
        if theirs is not None:
            scores[theirs] = 1.0
            categories[theirs] = categories[theirs] or finding.action == Action.BLOCK
    action = strongest(f.action for f in findings)
    if failed:
        action = Action.BLOCK
    return {
        "flagged": failed or any(categories.values()),
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": {name: ["text"] for name in categories},
        "action": action.value,
    }
