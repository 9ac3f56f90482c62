"""Precision and recall per category on the labelled set, and latency per layer (``make eval-moderation``).

Matching: a detection is a true positive when it overlaps a labelled span of the same category (each
label matched once); a detection of a labelled category that overlaps no label is a false positive; a
label no detection overlaps is a false negative. Categories the set does not label (addresses,
organisations) are not scored. Person names are scored per language: ``person (ru)`` carries the target.

The scan runs with every local layer on and every category's action ``log`` (nothing is allow-listed, no
remote layer), so what is measured is the detectors, not a policy's choices.

Latency: each local layer timed on a 4 KB prompt (Russian business text dense with names, phones,
e-mails and identifiers: every sentence has something to find), ``LATENCY_RUNS`` runs after a warm-up.
The fastest run, the median and the 95th percentile are reported, with the load average. The targets are
judged on the fastest run — the layer's own cost, as ``timeit`` advises: on a shared machine the slower
runs measure the other processes (the median is printed beside it, and on a quiet machine the two agree).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps.moderation.detectors.injection import InjectionDetector
from apps.moderation.detectors.ner import NerDetector, preload
from apps.moderation.detectors.patterns import PatternDetector
from apps.moderation.findings import Action, Category, Direction
from apps.moderation.models import Policy, PolicyMode
from apps.moderation.policies import EffectivePolicy, effective_policy
from apps.moderation.scan import scan

SET_PATH = Path(__file__).with_name("moderation_set.jsonl")
LATENCY_RUNS = 50

IDENTIFIERS = ("payment_card", "snils", "inn", "ogrn", "bank_account", "passport")
# (row name, target recall, target precision) — the targets; None: reported only.
TARGETS: dict[str, tuple[float, float] | None] = {
    **{name: (0.98, 0.95) for name in IDENTIFIERS}, "identifiers (all)": (0.98, 0.95),
    "email": (0.98, 0.95), "phone": (0.98, 0.95), "secret": (0.98, 0.95),
    "person (ru)": (0.85, 0.85), "person (en)": None, "ip_address": None, "prompt_injection": None,
}
LATENCY_TARGETS_MS = {"pattern": 1.0, "ner": 30.0}


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


@dataclass
class Report:
    snippets: int
    scores: dict[str, Score]
    latency_ms: dict[str, tuple[float, float, float]]  # layer → (fastest, median, p95) on a 4 KB prompt
    scan_ms: dict[str, float] = field(default_factory=dict)  # layer → mean per snippet over the set
    misses: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """The targets this report misses, as sentences (empty: every target met)."""
        out = []
        for name, target in TARGETS.items():
            score = self.scores.get(name)
            if target is None or score is None or score.tp + score.fn == 0:
                continue
            recall, precision = target
            if score.recall < recall or score.precision < precision:
                out.append(f"{name}: recall {score.recall:.3f} (≥ {recall}), precision {score.precision:.3f} (≥ {precision})")
        for layer, limit in LATENCY_TARGETS_MS.items():
            if layer in self.latency_ms and self.latency_ms[layer][0] >= limit:
                out.append(f"{layer}: fastest run {self.latency_ms[layer][0]:.2f} ms on 4 KB (< {limit} ms)")
        return out


def load_set(path: Path = SET_PATH) -> list[dict[str, Any]]:
    """The labelled snippets (see ``build.py`` for the format)."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def evaluation_policy() -> EffectivePolicy:
    """Every local layer on, every category logged in prompts."""
    actions = {direction.value: {category.value: Action.LOG.value for category in Category} for direction in Direction}
    return effective_policy(Policy(mode=PolicyMode.ENFORCE, actions=actions))


def _row(category: str, lang: str) -> str:
    return f"person ({lang})" if category == Category.PERSON else category


def _overlaps(a: dict[str, Any], start: int, end: int) -> bool:
    return a["start"] < end and start < a["end"]


def score_set(snippets: Iterable[dict[str, Any]]) -> Report:
    """Scan every snippet and score it (see the module docstring); latency measured separately."""
    policy = evaluation_policy()
    scores: dict[str, Score] = {}
    timings: dict[str, float] = {}
    misses: list[str] = []
    labelled = {_row(c, lang) for c in (Category.PERSON,) for lang in ("ru", "en")} | set(TARGETS) - {"identifiers (all)"}
    count = 0
    for snippet in snippets:
        count += 1
        findings = scan(snippet["text"], policy, Direction.PROMPT, timings=timings)
        labels = [dict(entity, matched=False) for entity in snippet["entities"]]
        for finding in findings:
            detection = finding.detection
            row = _row(detection.category.value, snippet["lang"])
            if row not in labelled:
                continue
            match = next((label for label in labels if not label["matched"] and label["category"] == detection.category.value
                          and _overlaps(label, detection.start, detection.end)), None)
            if match is not None:
                match["matched"] = True
                _add(scores, row, tp=1)
            elif not any(label["category"] == detection.category.value and _overlaps(label, detection.start, detection.end)
                         for label in labels):
                _add(scores, row, fp=1)
                misses.append(f"FP {row} {snippet['id']}: {detection.value[:60]!r}")
        for label in labels:
            if not label["matched"]:
                _add(scores, _row(label["category"], snippet["lang"]), fn=1)
                misses.append(f"FN {label['category']} {snippet['id']}: {snippet['text'][label['start']:label['end']][:60]!r}")
    total = Score()
    for name in IDENTIFIERS:
        score = scores.get(name, Score())
        total.tp, total.fp, total.fn = total.tp + score.tp, total.fp + score.fp, total.fn + score.fn
    scores["identifiers (all)"] = total
    scan_ms = {layer: seconds * 1000 / max(1, count) for layer, seconds in timings.items()}
    return Report(count, scores, {}, scan_ms, misses)


def _add(scores: dict[str, Score], row: str, *, tp: int = 0, fp: int = 0, fn: int = 0) -> None:
    score = scores.setdefault(row, Score())
    score.tp, score.fp, score.fn = score.tp + tp, score.fp + fp, score.fn + fn


def prompt_4kb(snippets: list[dict[str, Any]]) -> str:
    """A 4096-character prompt made of the set's Russian chat and e-mail snippets."""
    parts, size = [], 0
    for snippet in snippets:
        if snippet["lang"] == "ru" and snippet["kind"] in ("chat", "email"):
            parts.append(snippet["text"])
            size += len(snippet["text"]) + 1
            if size >= 4096:
                break
    return "\n".join(parts)[:4096]


def measure_latency(text: str, runs: int = LATENCY_RUNS) -> dict[str, tuple[float, float, float]]:
    """The fastest run, the median and the 95th percentile, in milliseconds, of each local layer on ``text``."""
    preload()
    layers = {"pattern": PatternDetector(), "injection": InjectionDetector(), "ner": NerDetector()}
    out = {}
    for name, detector in layers.items():
        list(detector.detect(text))  # warm-up: caches, the model
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            list(detector.detect(text))
            samples.append((time.perf_counter() - started) * 1000)
        samples.sort()
        out[name] = (samples[0], statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.95))])
    return out


def evaluate(snippets: list[dict[str, Any]] | None = None, *, latency: bool = True) -> Report:
    """Score ``snippets`` (the whole set by default) and, with ``latency``, time the layers on 4 KB."""
    snippets = load_set() if snippets is None else snippets
    report = score_set(snippets)
    if latency:
        report.latency_ms = measure_latency(prompt_4kb(load_set()))
    return report


def format_report(report: Report) -> str:
    """The Markdown tables ``make eval-moderation`` prints (and docs/moderation.md shows)."""
    lines = [f"{report.snippets} snippets", "", "| category | labelled | TP | FP | FN | precision | recall | target |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, target in TARGETS.items():
        score = report.scores.get(name, Score())
        goal = "—" if target is None else f"R ≥ {target[0]}, P ≥ {target[1]}"
        lines.append(f"| {name} | {score.tp + score.fn} | {score.tp} | {score.fp} | {score.fn} | "
                     f"{score.precision:.3f} | {score.recall:.3f} | {goal} |")
    if report.latency_ms:
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        lines += ["", f"4 KB prompt, {LATENCY_RUNS} runs, load average {load} on {os.cpu_count()} CPUs:", "",
                  "| layer | fastest, ms | median, ms | p95, ms | target (fastest) |", "|---|---:|---:|---:|---|"]
        for layer, (fastest, median, p95) in report.latency_ms.items():
            limit = LATENCY_TARGETS_MS.get(layer)
            lines.append(f"| {layer} | {fastest:.2f} | {median:.2f} | {p95:.2f} | {'< ' + str(limit) + ' ms' if limit else '—'} |")
    if report.scan_ms:
        lines += ["", "| layer | mean per snippet, ms |", "|---|---:|"]
        lines += [f"| {layer} | {ms:.3f} |" for layer, ms in report.scan_ms.items()]
    return "\n".join(lines)
