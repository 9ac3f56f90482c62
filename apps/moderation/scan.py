"""``scan(text, policy, direction)``: every layer the policy enables, fast first, turned into findings.

Layers, in order: ``pattern`` (identifiers with their checks, addresses, secrets), ``injection`` (prompt
injection heuristics), ``custom`` (the company's dictionary and patterns), ``ner`` (natasha + English
names), ``llm`` (the LLM moderator) and ``external`` (a ``/v1/moderations`` API). The local layers always
run when the policy is active (``ner`` and ``injection`` unless switched off); the remote ones when the
policy names an endpoint (``llm`` on responses only with ``llm_on_responses``).

Overlapping detections are resolved to one: the strongest action first, then the longest span, then the
earlier start (an e-mail inside a URL with credentials is the URL's secret; a name inside an organisation's
name is the organisation). Whole-text flags of the remote layers overlap nothing. Then the allow-list
turns a detection's action into ``allow`` (an allow-listed value, digits compared without separators, or
an e-mail address or URL on an allow-listed domain) — it is still returned: ``/v1/moderation/check``
shows every detection with its action, ``allow`` and ``log`` included.

Time: the whole scan has the policy's budget (``scan_budget_seconds``); a remote layer gets what is left
of it at most. A failed remote layer or an overrun follows the failure rule: fail closed raises
``ScanFailed``; fail open logs it and returns what the other layers found.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from apps.moderation.detectors.injection import InjectionDetector
from apps.moderation.detectors.ner import NerDetector
from apps.moderation.detectors.patterns import PatternDetector
from apps.moderation.detectors.remote import EXTERNAL, LLM, ExternalModeration, LlmModerator
from apps.moderation.exceptions import RemoteLayerError, ScanFailed
from apps.moderation.findings import Action, Category, Detection, Detector, Direction, Finding, RegexDetector
from apps.moderation.models import ContentRule, Policy
from apps.moderation.policies import EffectivePolicy, comparable_digits, effective_policy

logger = logging.getLogger(__name__)

PATTERN, INJECTION, CUSTOM, NER = "pattern", "injection", "custom", "ner"
LAYERS = (PATTERN, INJECTION, CUSTOM, NER, LLM, EXTERNAL)
_WHOLE_TEXT = frozenset({LLM, EXTERNAL})
_DIGIT_CATEGORIES = frozenset({Category.PHONE, Category.PAYMENT_CARD, Category.BANK_ACCOUNT, Category.PASSPORT,
                               Category.SNILS, Category.INN, Category.OGRN})
_CATEGORY_ORDER = {category: index for index, category in enumerate(Category)}

_patterns = PatternDetector()
_injection = InjectionDetector()
_ner = NerDetector()
_custom_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], list[Detector]] = {}
_custom_lock = threading.Lock()


def custom_detectors(dictionary: tuple[str, ...], patterns: tuple[str, ...]) -> list[Detector]:
    """The company's dictionary and pattern detectors, compiled once per distinct set. A pattern that no
    longer compiles (saved behind the form's back) is skipped and logged."""
    key = (dictionary, patterns)
    cached = _custom_cache.get(key)
    if cached is not None:
        return cached
    detectors: list[Detector] = []
    if dictionary:
        detectors.append(RegexDetector.dictionary(dictionary))
    for number, pattern in enumerate(patterns, start=1):
        try:
            detectors.append(RegexDetector(Category.CUSTOM_REGEX, pattern))
        except ValueError:
            logger.warning("custom pattern %d does not compile; skipped", number)
    with _custom_lock:
        if len(_custom_cache) > 1000:
            _custom_cache.clear()
        _custom_cache[key] = detectors
    return detectors


def _as_effective(policy: EffectivePolicy | Policy) -> EffectivePolicy:
    return effective_policy(policy) if isinstance(policy, Policy) else policy


def scan(text: str, policy: EffectivePolicy | Policy, direction: Direction, *, content_type: str = "text",
         timings: MutableMapping[str, float] | None = None) -> list[Finding]:
    """Every detection in ``text`` with the action ``policy`` calls for in ``direction``, ordered by start
    (offsets in code points of ``text``), ``allow`` included; [] when the policy is off or lets this
    ``content_type`` ("text", "image" for OCR text, "document") through unscanned.

    ``timings``, when given, gets the seconds each layer took. Raises ``ScanFailed`` when a layer fails or
    the budget runs out and the policy fails closed. Blocking (CPU and, for the remote layers, network):
    call it from a worker thread, not an event loop."""
    policy = _as_effective(policy)
    if not text or not policy.active or policy.content_rule(content_type) == ContentRule.ALLOW:
        return []
    started = time.perf_counter()
    deadline = started + policy.scan_budget_seconds
    detections: list[Detection] = []
    for layer, detector in _local_layers(policy):
        layer_started = time.perf_counter()
        detections.extend(detector.detect(text))
        now = time.perf_counter()
        if timings is not None:
            timings[layer] = timings.get(layer, 0.0) + now - layer_started
        if now > deadline:
            _fail(policy, "budget", f"over the scan budget of {policy.scan_budget_seconds:.3g} s after {layer}")
            return _findings(detections, policy, direction)
    for layer, remote in _remote_layers(policy, direction):
        remaining = deadline - time.perf_counter()
        layer_started = time.perf_counter()
        try:
            if remaining <= 0:
                raise RemoteLayerError(layer, "no time left in the scan budget")
            detections.extend(remote.detect(text, timeout=remaining))
        except RemoteLayerError as exc:
            _fail(policy, exc.layer, exc.reason)
        finally:
            if timings is not None:
                timings[layer] = timings.get(layer, 0.0) + time.perf_counter() - layer_started
    return _findings(detections, policy, direction)


def _local_layers(policy: EffectivePolicy) -> Iterable[tuple[str, Detector]]:
    yield PATTERN, _patterns
    if policy.use_injection_heuristics:
        yield INJECTION, _injection
    for detector in custom_detectors(policy.dictionary, policy.custom_patterns):
        yield CUSTOM, detector
    if policy.use_ner:
        yield NER, _ner


def _remote_layers(policy: EffectivePolicy, direction: Direction) -> Iterable[tuple[str, Any]]:
    if policy.llm is not None and (direction == Direction.PROMPT or policy.llm.on_responses):
        yield LLM, LlmModerator(policy.llm)
    if policy.external is not None:
        yield EXTERNAL, ExternalModeration(policy.external)


def _fail(policy: EffectivePolicy, layer: str, reason: str) -> None:
    if policy.fail_closed:
        raise ScanFailed(layer, reason)
    logger.warning("moderation %s failed, let through (fail open): %s", layer, reason)


def action_of(detection: Detection, policy: EffectivePolicy, direction: Direction) -> Action:
    """The policy's action for ``detection`` before the allow-list: a whole-text flag of a remote layer
    cannot be masked, so ``mask`` there is ``block``."""
    action = policy.action_for(detection.category, direction)
    if action == Action.MASK and detection.detector in _WHOLE_TEXT:
        return Action.BLOCK
    return action


def resolve_overlaps(detections: Iterable[Detection], rank: Any) -> list[Detection]:
    """One detection per overlapping group: the highest ``rank(detection)`` (an ``Action``'s rank), then
    the longest, then the earliest; whole-text remote flags are kept beside the rest. Ordered by start."""
    kept: list[Detection] = []
    spans: list[tuple[int, int]] = []
    ordered = sorted(set(detections), key=lambda d: (-rank(d), -(d.end - d.start), d.start, _CATEGORY_ORDER[d.category]))
    for detection in ordered:
        if detection.detector in _WHOLE_TEXT:
            kept.append(detection)
            continue
        if any(detection.start < end and start < detection.end for start, end in spans):
            continue
        spans.append((detection.start, detection.end))
        kept.append(detection)
    return sorted(kept, key=lambda d: (d.start, d.end))



def allow_listed(detection: Detection, policy: EffectivePolicy) -> bool:
    """Whether the allow-list covers ``detection``: its value (case-folded; digits alone for numbers), or
    the domain of an e-mail address or a URL (the domain itself or a sub-domain)."""
    value = detection.value.strip().casefold()
    if value in policy.allow_values:
        return True
    if detection.category in _DIGIT_CATEGORIES:
        digits = comparable_digits(value)
        if len(digits) >= 5 and digits in policy.allow_values:
            return True
    if policy.allow_domains and ("@" in value or "://" in value):
        host = _host(value)
        if host and any(host == domain or host.endswith("." + domain) for domain in policy.allow_domains):
            return True
    return False


def _host(value: str) -> str:
    if "://" in value:
        return (urlsplit(value).hostname or "").casefold()
    return value.rsplit("@", 1)[-1].casefold()


def _findings(detections: list[Detection], policy: EffectivePolicy, direction: Direction) -> list[Finding]:
    kept = resolve_overlaps(detections, lambda d: action_of(d, policy, direction).rank)
    findings = []
    for detection in kept:
        action = Action.ALLOW if allow_listed(detection, policy) else action_of(detection, policy, direction)
        findings.append(Finding(detection, action))
    return findings

