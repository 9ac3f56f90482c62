"""The moderation stage: the company's data policy applied to the prompt on its way out and to the
answer on its way back (issue 11; docs/moderation.md).

Between police and money (``ProxyApp.inference``). With no policy on the token
(``TokenSnapshot.moderation is None``) the stage is one attribute check and nothing else. With one:

- **Prompt.** Every text the canonical request carries is scanned (``scan(text, policy, direction,
  content_type=…)``, ``apps/moderation``): system and user messages, assistant turns, tool results,
  tool-call arguments (inside their decoded JSON strings), a completion's ``prompt``, an embedding's
  ``input``; image parts through OCR and document parts (PDF, DOCX) through their text
  (``apps/moderation/media.py``). A ``BLOCK`` finding refuses the call — 400 ``moderation_blocked``,
  ``code`` = the category, nothing charged — unless the policy routes sensitive requests to its
  sensitive route instead (``Call.sensitive_route``: Russian-hosted or local models only, see
  ``routing.choose``). ``MASK`` findings are replaced by placeholders (``masking.Masker``); an image
  cannot be masked in place, so one with a finding to mask goes as its depersonalized OCR text, and
  one with a finding to block is refused or dropped, as the policy says; a document with findings to
  mask goes as its depersonalized text. The work runs in the stage's thread pool (OCR and NER must not
  stall the event loop), bounded by the policy's time budget: over it, or for content that cannot be
  read, the policy fails closed (400 ``moderation_blocked``, ``code`` ``moderation_unavailable``) or
  open (sent as it is).
- **Answer.** ``AnswerGuard`` restores the placeholders — in a whole body (``relay.relay_body``) and in
  a stream as it flows (``relay._pump``: ``StreamRestorer`` per text, so a placeholder split across
  chunks is restored) — and scans the restored text on the response side. A stream keeps the last
  ``RESPONSE_WINDOW`` code points of each text back while the policy scans responses, so a value
  split across chunks is found before it leaves; a response-side block ends the stream with an error
  event in the client's dialect (or, when nothing was sent yet, a 400). Values the prompt itself
  carried (restored placeholders) are the client's own and are not refused on the way back.
- **Report.** Every finding logged, masked or blocked becomes a report item (``apps/moderation/reports.py``),
  appended to a Redis stream after the answer and written to PostgreSQL by the meter writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.utils import translation

from apps.moderation.exceptions import ScanFailed
from apps.moderation.findings import Action, Category, Detection, Direction, Finding
from apps.moderation.masking import Masker, StreamRestorer, placeholders_in
from apps.moderation.media import MediaError, decode_base64, decode_data_url, document_text, image_text
from apps.moderation.reports import METRICS_KEY, REPORT_STREAM, ReportItem, encode_report, masked_snippet, metric_fields
from apps.moderation.scan import scan as scan_text

from ..exceptions import ApiError, moderation_blocked, moderation_unavailable
from .context import Call

logger = logging.getLogger("jetstream.moderation")

Scan = Callable[..., list[Finding]]  # scan(text, policy, direction, *, content_type="text") -> findings
RESPONSE_WINDOW = 64  # code points of each streamed text held back while responses are scanned
SCAN_THREADS = 2
TEXT_FIELDS = ("content", "refusal", "reasoning_content")  # a message's or a delta's texts, restored and scanned


@dataclass(frozen=True, slots=True)
class StageRules:
    """What the stage reads from a policy besides ``scan``'s findings (the policy's attributes are
    documented in ``apps/moderation/models.py``; one a policy lacks gets the default):

    ``image_action`` / ``document_action``: "allow" (sent unscanned), "scan", "block" (refused) — the
    policy's ``content_rule("image")`` / ``content_rule("document")``; ``drop_blocked_images``: an
    image with a finding to block is dropped (replaced by a note) rather than refusing the call;
    ``fail_closed``: refuse what cannot be scanned (in time) rather than send it;
    ``scan_budget_seconds``: the prompt side's time budget; ``sensitive_route``: "" (block), "ru"
    (Russian-hosted providers or local nodes) or "local" (local nodes only) for a request with a
    finding to block — the policy's ``sensitive_routing``; ``keep_mapping``: store the placeholder
    mapping, sealed with ``lib.crypto``, in the report; ``scans_responses``: answers are scanned (a
    response-side finding can then mask or block) — true unless every response action is allow."""

    image_action: str = "scan"
    document_action: str = "scan"
    drop_blocked_images: bool = False
    fail_closed: bool = True
    scan_budget_seconds: float = 10.0
    sensitive_route: str = ""
    keep_mapping: bool = False
    scans_responses: bool = True

    @classmethod
    def of(cls, policy: Any) -> StageRules:
        """The rules of ``policy`` (cached on it: a policy object is immutable for the snapshot's life)."""
        cached = _RULES.get(id(policy))
        if cached is not None and cached[0] is policy:
            return cached[1]
        defaults = cls()
        values = {name: getattr(policy, name, getattr(defaults, name)) for name in cls.__dataclass_fields__}
        content_rule = getattr(policy, "content_rule", None)
        if callable(content_rule):
            values["image_action"], values["document_action"] = str(content_rule("image")), str(content_rule("document"))
        routing = str(getattr(policy, "sensitive_routing", values["sensitive_route"]) or "")
        values["sensitive_route"] = routing if routing in ("ru", "local") else ""
        action_for = getattr(policy, "action_for", None)
        if not hasattr(policy, "scans_responses") and callable(action_for):
            values["scans_responses"] = any(action_for(c, Direction.RESPONSE) != Action.ALLOW for c in Category)
        rules = cls(**values)
        if len(_RULES) > 10_000:  # policies are few; this only bounds a leak
            _RULES.clear()
        _RULES[id(policy)] = (policy, rules)
        return rules


# A policy object → its rules (policies are immutable snapshots; the object is kept so its id stays unique).
_RULES: dict[int, tuple[Any, StageRules]] = {}


@dataclass(slots=True)
class Moderated:
    """One call's moderation state (``Call.moderation``): the policy and its rules, the mapping, the
    report items, and the answer's guard once the answer starts."""

    policy: Any
    rules: StageRules
    masker: Masker = field(default_factory=Masker)
    items: list[ReportItem] = field(default_factory=list)
    rerouted: bool = False
    guard: AnswerGuard | None = None

    def note(self, text: str, findings: list[Finding], *, direction: Direction, content_type: str,
             acted: Iterable[Finding] | None = None) -> None:
        """Report items for ``findings`` the policy acts on (log, mask, block), with masked snippets."""
        detections = [f.detection for f in findings]
        for finding in findings if acted is None else acted:
            if finding.action == Action.ALLOW:
                continue
            self.items.append(ReportItem(finding.category.value, finding.detection.detector, finding.action.value, direction.value,
                                         content_type, masked_snippet(text, detections, finding.detection),
                                         rerouted=self.rerouted and finding.action == Action.BLOCK))


class PromptScan:
    """The prompt side of one call, run in the stage's thread: ``body`` returns the canonical body to
    send (masked), or raises ``ApiError`` (``moderation_blocked`` / ``moderation_unavailable``)."""

    def __init__(self, state: Moderated, scan: Scan, deadline: float) -> None:
        self.state = state
        self.scan = scan
        self.deadline = deadline

    # -- texts
    def findings(self, text: str, content_type: str) -> list[Finding]:
        """``scan``'s findings for ``text``; a scanner failure follows the fail rule (closed: refused)."""
        if not text:
            return []
        try:
            return self.scan(text, self.state.policy, Direction.PROMPT, content_type=content_type)
        except ScanFailed as failure:  # a layer failed or ran over the budget, and the policy fails closed
            raise moderation_unavailable(f"its {failure.layer} check failed") from None
        except Exception:
            logger.exception("the moderation scanner failed")
            if self.state.rules.fail_closed:
                raise moderation_unavailable("the scanner failed") from None
            return []

    def text(self, text: str, content_type: str = "text") -> str:
        """``text`` masked per the policy; raises ``moderation_blocked`` for a finding to block (unless rerouted)."""
        findings = self.findings(text, content_type)
        if not findings:
            return text
        self.settle(text, findings, content_type)
        return self.state.masker.mask(text, findings)

    def settle(self, text: str, findings: list[Finding], content_type: str) -> None:
        """Note ``findings`` in the report; for one to block, reroute the call (a policy with a
        sensitive route) or raise ``moderation_blocked`` naming its category."""
        blocking = next((f for f in findings if f.action == Action.BLOCK), None)
        if blocking is not None and self.state.rules.sensitive_route in ("ru", "local"):
            self.state.rerouted = True
        self.state.note(text, findings, direction=Direction.PROMPT, content_type=content_type)
        if blocking is not None and not self.state.rerouted:
            raise moderation_blocked(blocking.category, Direction.PROMPT)

    def arguments(self, arguments: str) -> str:
        """Tool-call arguments: every string inside the JSON masked, re-encoded (not JSON: as text)."""
        try:
            decoded = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return self.text(arguments)
        masked = self._value(decoded)
        return arguments if masked == decoded else orjson.dumps(masked).decode()

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self._value(v) for v in value]
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        return value

    # -- media
    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise MediaError("timeout", "over the policy's time budget")
        return left

    def _unreadable(self, part: dict[str, Any], error: MediaError) -> dict[str, Any]:
        if self.state.rules.fail_closed:
            raise moderation_unavailable(str(error))
        logger.info("moderation: content sent unscanned (fail open): %s", error.reason)
        return part

    def image(self, part: dict[str, Any]) -> dict[str, Any]:
        """An ``image_url`` part: as it is, its depersonalized OCR text, a note that it was dropped, or a refusal."""
        action = self.state.rules.image_action
        if action == "allow":
            return part
        if action == "block":
            raise ApiError(400, "Your company's data policy does not allow images in requests.", type="moderation_blocked",
                           code="image_not_allowed", retryable=False)
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        try:
            text = image_text(decode_data_url(str(url or "")).data, budget=self._remaining())
        except MediaError as error:
            return self._unreadable(part, error)
        findings = self.findings(text, "image")
        acted = [f for f in findings if f.action in (Action.MASK, Action.BLOCK)]
        if not acted:
            self.state.note(text, findings, direction=Direction.PROMPT, content_type="image")
            return part
        if any(f.action == Action.BLOCK for f in acted) and self.state.rules.drop_blocked_images:
            self.state.note(text, findings, direction=Direction.PROMPT, content_type="image")
            with translation.override("en"):  # a note to the model, in the language of the other notes
                labels = ", ".join(sorted({str(f.category.label) for f in acted}))
            return {"type": "text", "text": f"[An image was removed by the data policy: it contains {labels}.]"}
        self.settle(text, findings, "image")
        if self.state.rerouted and any(f.action == Action.BLOCK for f in acted):
            return part
        masked = self.state.masker.mask(text, findings)
        return {"type": "text", "text": f"[The text of an image, depersonalized by the data policy:]\n{masked}"}

    def document(self, part: dict[str, Any]) -> dict[str, Any]:
        """A ``file`` part: as it is, its depersonalized text, or a refusal."""
        action = self.state.rules.document_action
        if action == "allow":
            return part
        if action == "block":
            raise ApiError(400, "Your company's data policy does not allow documents in requests.", type="moderation_blocked",
                           code="document_not_allowed", retryable=False)
        given = part.get("file")
        file: dict[str, Any] = given if isinstance(given, dict) else {}
        data = file.get("file_data")
        try:
            if not isinstance(data, str):
                raise MediaError("file_reference", "a file given by id cannot be read by the gateway")
            blob = decode_data_url(data) if data.startswith("data:") else None
            text = document_text(blob.data if blob is not None else decode_base64(data), budget=self._remaining())
        except MediaError as error:
            return self._unreadable(part, error)
        findings = self.findings(text, "document")
        if not any(f.action in (Action.MASK, Action.BLOCK) for f in findings):
            self.state.note(text, findings, direction=Direction.PROMPT, content_type="document")
            return part
        self.settle(text, findings, "document")
        if self.state.rerouted and any(f.action == Action.BLOCK for f in findings):
            return part
        name = file.get("filename") if isinstance(file.get("filename"), str) else "document"
        return {"type": "text", "text": f"[The text of the document {name}, depersonalized by the data policy:]\n"
                                        f"{self.state.masker.mask(text, findings)}"}

    # -- the request
    def content(self, content: Any) -> Any:
        if isinstance(content, str):
            return self.text(content)
        if not isinstance(content, list):
            return content
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({**part, "text": self.text(part["text"])})
            elif kind == "image_url":
                parts.append(self.image(part))
            elif kind == "file":
                parts.append(self.document(part))
            else:
                parts.append(part)
        return parts

    def message(self, message: dict[str, Any]) -> dict[str, Any]:
        out = dict(message)
        if "content" in out:
            out["content"] = self.content(out["content"])
        calls = out.get("tool_calls")
        if isinstance(calls, list):
            out["tool_calls"] = [self.tool_call(c) for c in calls]
        legacy = out.get("function_call")
        if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
            out["function_call"] = {**legacy, "arguments": self.arguments(legacy["arguments"])}
        return out

    def tool_call(self, call: Any) -> Any:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
            return call
        return {**call, "function": {**function, "arguments": self.arguments(function["arguments"])}}

    def body(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """The canonical ``body`` of ``endpoint`` with every text masked per the policy."""
        out = dict(body)
        if endpoint == "chat":
            out["messages"] = [self.message(m) if isinstance(m, dict) else m for m in body.get("messages") or []]
        else:
            name = "prompt" if endpoint == "completion" else "input"
            value = body.get(name)
            if isinstance(value, str):
                out[name] = self.text(value)
            elif isinstance(value, list):
                out[name] = [self.text(v) if isinstance(v, str) else v for v in value]
        return out


class _Channel:
    """One text of a streamed answer (a choice's content, or one tool call's arguments): restored as
    it arrives, scanned, released to the client."""

    __slots__ = ("json", "restorer", "sent", "text")

    def __init__(self, restorer: StreamRestorer | None, *, json: bool) -> None:
        self.restorer = restorer
        self.json = json
        self.text = ""  # everything restored so far (response-side masks applied)
        self.sent = 0  # how much of text the client has


class AnswerGuard:
    """The answer side of one call (see the module docstring): ``body`` for a whole answer,
    ``events``/``flush`` for a stream. Raises ``ApiError`` ``moderation_blocked`` for a finding to block."""

    def __init__(self, state: Moderated, scan: Scan, executor: ThreadPoolExecutor | None = None) -> None:
        self.state = state
        self.scan = scan
        self.executor = executor  # where scanning runs (detectors block: NER, an LLM moderator); None: inline
        self.scanning = state.rules.scans_responses
        self.redactor = Masker()  # response-side masks: placeholders the client cannot have restored
        self._own = frozenset(state.masker.values.values())  # the prompt's values: the client's own
        self._channels: dict[tuple[int, str, int], _Channel] = {}
        self._noted: set[tuple[tuple[int, str, int], int, str]] = set()
        self._template: dict[str, Any] | None = None  # the last chunk's envelope, for flush
        self._changed = False  # the chunk being read was changed (else its bytes go out as they came)

    # -- scanning
    def _acted(self, text: str) -> list[Finding]:
        try:
            findings = self.scan(text, self.state.policy, Direction.RESPONSE, content_type="text")
        except ScanFailed as failure:
            raise moderation_unavailable(f"its {failure.layer} check failed") from None
        except Exception:
            logger.exception("the moderation scanner failed on an answer")
            if self.state.rules.fail_closed:
                raise moderation_unavailable("the scanner failed") from None
            return []
        return [f for f in findings if f.detection.value not in self._own]

    def check(self, text: str) -> str:
        """A whole answer's text: block, or with response-side masks applied."""
        if not self.scanning or not text:
            return text
        findings = self._acted(text)
        if not findings:
            return text
        blocking = [f for f in findings if f.action == Action.BLOCK]
        self.state.note(text, findings, direction=Direction.RESPONSE, content_type="text")
        if blocking:
            raise moderation_blocked(blocking[0].category, Direction.RESPONSE)
        return self.redactor.mask(text, findings)

    # -- a whole answer
    async def answer(self, raw: bytes) -> bytes:
        """``body`` off the event loop when the answer is scanned (restoring alone runs inline)."""
        if not self.scanning or self.executor is None:
            return self.body(raw)
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.body, raw)

    async def stream(self, events: list[bytes]) -> list[bytes]:
        """``events`` off the event loop when the answer is scanned (restoring alone runs inline)."""
        if not events:
            return events
        if not self.scanning or self.executor is None:
            return self.events(events)
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.events, events)

    async def end(self) -> list[bytes]:
        """``flush`` off the event loop when the answer is scanned."""
        if not self.scanning or self.executor is None or not self._channels:
            return self.flush()
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.flush)

    def body(self, raw: bytes) -> bytes:
        """A canonical non-streamed answer (chat.completion or text_completion JSON) restored and checked."""
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            return raw
        masker = self.state.masker
        before = orjson.dumps(answer["choices"])
        for choice in answer["choices"]:
            if not isinstance(choice, dict):
                continue
            if isinstance(choice.get("text"), str):
                choice["text"] = self.check(masker.restore(choice["text"]))
            message = choice.get("message")
            if not isinstance(message, dict):
                continue
            for name in TEXT_FIELDS:
                if isinstance(message.get(name), str):
                    message[name] = self.check(masker.restore(message[name]))
            for tool_call in message.get("tool_calls") or []:
                function = tool_call.get("function") if isinstance(tool_call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    function["arguments"] = self.check(masker.restore_json(function["arguments"]))
        return raw if orjson.dumps(answer["choices"]) == before else orjson.dumps(answer)

    # -- a stream
    def _channel(self, key: tuple[int, str, int]) -> _Channel:
        channel = self._channels.get(key)
        if channel is None:
            json = key[1] == "tool"
            restorer = self.state.masker.restorer(json_string=json) if self.state.masker else None
            channel = self._channels[key] = _Channel(restorer, json=json)
        return channel

    def _release(self, key: tuple[int, str, int], channel: _Channel, *, final: bool) -> str:
        """What of ``channel`` may go to the client now (all of it when ``final``): the text up to
        ``RESPONSE_WINDOW`` code points from its end, scanned together with the window before it."""
        sent = channel.sent
        if not self.scanning:
            channel.sent = len(channel.text)
            return channel.text[sent:]
        limit = len(channel.text) if final else max(sent, len(channel.text) - RESPONSE_WINDOW)
        start = max(0, sent - RESPONSE_WINDOW)
        window = channel.text[start:]
        findings = self._acted(window) if window else []
        spans: list[Finding] = []
        for finding in findings:
            begin, end = start + finding.detection.start, start + finding.detection.end
            if end <= sent or finding.action == Action.ALLOW:
                continue
            mark = (key, begin, finding.category.value)
            if mark not in self._noted:
                self._noted.add(mark)
                self.state.note(window, findings, direction=Direction.RESPONSE, content_type="text", acted=[finding])
            if finding.action == Action.BLOCK:
                raise moderation_blocked(finding.category, Direction.RESPONSE)
            if finding.action == Action.MASK and begin >= sent:
                spans.append(Finding(Detection(finding.category, begin - sent, end - sent, finding.detection.value,
                                               finding.detection.detector), Action.MASK))
        changed = True
        while changed and not final:  # a value the limit would cut is held back whole
            changed = False
            for span in spans:
                if span.detection.start < limit - sent < span.detection.end:
                    limit, changed = sent + span.detection.start, True
        accepted = [span for span in spans if span.detection.end <= limit - sent]
        if accepted:
            before = len(channel.text)
            channel.text = channel.text[:sent] + self.redactor.mask(channel.text[sent:], accepted)
            limit += len(channel.text) - before
        channel.sent = limit
        return channel.text[sent:limit]

    def _feed(self, key: tuple[int, str, int], piece: str) -> str:
        channel = self._channel(key)
        channel.text += channel.restorer.feed(piece) if channel.restorer is not None else piece
        out = self._release(key, channel, final=False)
        self._changed = self._changed or out != piece
        return out

    def _close(self, key: tuple[int, str, int]) -> str:
        channel = self._channel(key)
        if channel.restorer is not None:
            channel.text += channel.restorer.finish()
        out = self._release(key, channel, final=True)
        del self._channels[key]
        return out

    def _choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0) if isinstance(choice.get("index", 0), int) else 0
        delta = choice.get("delta")
        if isinstance(choice.get("text"), str):  # a completion's stream
            choice["text"] = self._feed((index, "text", 0), choice["text"])
        if isinstance(delta, dict):
            for name in TEXT_FIELDS:
                if isinstance(delta.get(name), str):
                    delta[name] = self._feed((index, name, 0), delta[name])
            for position, tool_call in enumerate(delta.get("tool_calls") or []):
                function = tool_call.get("function") if isinstance(tool_call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    tool_index = tool_call.get("index", position)
                    function["arguments"] = self._feed((index, "tool", tool_index if isinstance(tool_index, int) else position),
                                                       function["arguments"])
        if choice.get("finish_reason"):
            self._finish_choice(index, choice)

    def _finish_choice(self, index: int, choice: dict[str, Any]) -> None:
        """The held text of every channel of choice ``index``, into its finishing chunk."""
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else None
        for key in [k for k in self._channels if k[0] == index]:
            tail = self._close(key)
            if not tail:
                continue
            self._changed = True
            if key[1] == "text":
                choice["text"] = (choice.get("text") or "") + tail
                continue
            if delta is None:
                delta = choice["delta"] = {}
            if key[1] == "tool":
                calls = delta.setdefault("tool_calls", [])
                calls.append({"index": key[2], "function": {"arguments": tail}})
            else:
                delta[key[1]] = (delta.get(key[1]) or "") + tail

    def events(self, events: list[bytes]) -> list[bytes]:
        """A read's canonical events (``b"data: {chunk}"``) with their texts restored and checked."""
        out = []
        for event in events:
            if not event.startswith(b"data:") or event[5:].strip() == b"[DONE]":
                out.append(event)
                continue
            try:
                chunk = orjson.loads(event[5:])
            except orjson.JSONDecodeError:
                out.append(event)
                continue
            if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
                out.append(event)
                continue
            self._changed = False
            for choice in chunk["choices"]:
                if isinstance(choice, dict):
                    self._choice(choice)
            self._template = {k: v for k, v in chunk.items() if k not in ("choices", "usage")}
            out.append(b"data: " + orjson.dumps(chunk) if self._changed else event)
        return out

    def flush(self) -> list[bytes]:
        """At the end of the stream: the text still held (a stream cut before its finish), as one chunk."""
        if not self._channels:
            return []
        choices: dict[int, dict[str, Any]] = {}
        for key in list(self._channels):
            tail = self._close(key)
            if not tail:
                continue
            choice = choices.setdefault(key[0], {"index": key[0], "delta": {}})
            if key[1] == "text":
                choice.pop("delta", None)
                choice["text"] = choice.get("text", "") + tail
            elif key[1] == "tool":
                choice["delta"].setdefault("tool_calls", []).append({"index": key[2], "function": {"arguments": tail}})
            else:
                choice["delta"][key[1]] = choice["delta"].get(key[1], "") + tail
        if not choices:
            return []
        chunk = {**(self._template or {"object": "chat.completion.chunk"}), "choices": list(choices.values())}
        return [b"data: " + orjson.dumps(chunk)]


class ModerationStage:
    """The stage for one worker: its scanner, its thread pool, and its Redis connection for reports.

    ``scan`` defaults to the detectors' ``apps.moderation.scan.scan``; tests may give their own."""

    def __init__(self, redis, *, scan: Scan | None = None, threads: int = SCAN_THREADS) -> None:
        self.redis = redis
        self.scan: Scan = scan or scan_text
        self._threads = threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="js-moderation")

    async def request(self, call: Call, policy: Any) -> None:
        """The prompt side (after ``police``): ``call.request.body`` masked, ``call.moderation`` set,
        ``call.sensitive_route`` set for a rerouted call. Raises ``ApiError`` 400 ``moderation_blocked``
        (the call is recorded as rejected and costs nothing) or ``moderation_unavailable`` (fail closed)."""
        rules = StageRules.of(policy)
        state = Moderated(policy, rules, Masker(placeholders_in(call.raw)))
        call.moderation = state
        work = PromptScan(state, self.scan, time.monotonic() + rules.scan_budget_seconds)
        loop = asyncio.get_running_loop()
        try:
            body = await asyncio.wait_for(loop.run_in_executor(self._executor, work.body, call.request.endpoint, call.request.body),
                                          timeout=rules.scan_budget_seconds)
        except TimeoutError:
            if rules.fail_closed:
                raise moderation_unavailable("the request could not be checked within the policy's time budget") from None
            logger.info("moderation: request %s sent unscanned (time budget, fail open)", call.id)
            return
        except ApiError as error:
            if error.type == "moderation_blocked" and error.code:
                self._note_block(state, error)
            raise
        call.request.body = body
        if state.rerouted:
            call.sensitive_route = rules.sensitive_route
        if state.masker or rules.scans_responses:
            state.guard = AnswerGuard(state, self.scan, self._executor)

    @staticmethod
    def _note_block(state: Moderated, error: ApiError) -> None:
        """A refusal that no finding explains (a content type the policy refuses) is reported too."""
        if not any(item.action == Action.BLOCK for item in state.items):
            state.items.append(ReportItem(str(error.code), "policy", Action.BLOCK.value, Direction.PROMPT.value, "text", ""))

    async def finish(self, call: Call) -> None:
        """After the answer: the call's report items to the report stream and the metrics hash (no
        items, nothing sent). Redis failures are logged, never raised: the answer is already out."""
        state: Moderated | None = call.moderation
        if state is None or not state.items:
            return
        token = call.token
        sealed = state.masker.sealed() if state.rules.keep_mapping and state.masker else ""
        payload = encode_report(request_id=call.id, company_id=token.company_id, token_id=token.id, at=time.time(),
                                items=state.items, sealed_mapping=sealed)
        try:
            await asyncio.gather(self.redis.execute("XADD", REPORT_STREAM, "MAXLEN", "~", "1000000", "*", "e", payload),
                                 *(self.redis.execute("HINCRBY", METRICS_KEY, name, count)
                                   for name, count in metric_fields(state.items).items()))
        except Exception:
            logger.exception("could not record the moderation report of %s", call.id)

    def close(self) -> None:
        """Stop the thread pool (worker shutdown); a fresh one, threadless until used, takes its place
        in case the same app starts again."""
        old, self._executor = self._executor, ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="js-moderation")
        old.shutdown(wait=False, cancel_futures=True)
