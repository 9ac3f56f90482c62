"""The moderation stage's own cost, in process (``make bench`` runs it; ``python -m bench.moderation_stage``
prints the JSON).

- **Policy off** — what ``ProxyApp.inference`` adds to every request of a token without a policy: one
  attribute check (``call.token.moderation is not None``), timed with ``timeit`` against the same
  loop without it. This is the whole cost of the stage when it is off: nothing else of it runs.
- **Policy on** — a 4 KB prompt with a name and two phone numbers through the prompt side
  (``PromptScan.body``: scan, mask) and its echo through the answer side (``AnswerGuard``: restore
  and scan as a stream of 64 chunks), with the stage's default scanner.

Units: nanoseconds per request (off), microseconds per request (on).
"""

from __future__ import annotations

import json
import os
import sys
import time
import timeit
from types import SimpleNamespace


def _off(loops: int = 2_000_000) -> dict:
    names = {"call": SimpleNamespace(token=SimpleNamespace(moderation=None))}
    check = timeit.Timer("if call.token.moderation is not None: raise AssertionError", globals=names)
    empty = timeit.Timer("pass", globals=names)
    best_with = min(check.repeat(number=loops, repeat=7))
    best_without = min(empty.repeat(number=loops, repeat=7))
    return {"loops": loops, "ns_per_request": max(0.0, (best_with - best_without) / loops * 1e9)}


def _on(rounds: int = 200) -> dict:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jetstream.settings")
    django.setup()
    import orjson

    from apps.proxy.pipeline.moderate import AnswerGuard, Moderated, ModerationStage, PromptScan, StageRules

    stage = ModerationStage(None)
    policy = SimpleNamespace(mode="mask", detect_phone=True, detect_email=True, detect_person_name=True, blocked_words="",
                             scans_responses=True)
    filler = "Отчёт о встрече с клиентом: обсудили сроки поставки, цены и условия оплаты. " * 50
    prompt = (filler[:1900] + " Перезвонить +7 912 345-67-89 или +7 495 111-22-33, контакт ivan.petrov@example.ru. "
              + filler[:2000])
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
    prompt_us, answer_us = [], []
    for _ in range(rounds):
        state = Moderated(policy, StageRules.of(policy))
        started = time.perf_counter()
        masked = PromptScan(state, stage.scan, time.monotonic() + 10).body("chat", body)
        prompt_us.append((time.perf_counter() - started) * 1e6)
        echoed = masked["messages"][0]["content"]
        size = max(1, len(echoed) // 64)
        events = [b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": echoed[i:i + size]}}]})
                  for i in range(0, len(echoed), size)]
        guard = AnswerGuard(state, stage.scan)
        started = time.perf_counter()
        for event in events:
            guard.events([event])
        guard.flush()
        answer_us.append((time.perf_counter() - started) * 1e6)
    stage.close()
    prompt_us.sort()
    answer_us.sort()
    return {"rounds": rounds, "prompt_chars": len(prompt), "stream_chunks": 64,
            "prompt_p50_us": prompt_us[len(prompt_us) // 2], "prompt_p99_us": prompt_us[int(len(prompt_us) * 0.99)],
            "answer_p50_us": answer_us[len(answer_us) // 2], "answer_p99_us": answer_us[int(len(answer_us) * 0.99)]}


def measure() -> dict:
    """Both measurements (see the module docstring); ``{"error": …}`` for a part that failed."""
    out: dict = {}
    try:
        out["off"] = _off()
    except Exception as exc:  # a bench part that breaks is reported, not fatal
        out["off"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        out["on"] = _on()
    except Exception as exc:
        out["on"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def render(stage: dict | None, plain_p50_ms: float | None) -> list[str]:
    """The benchmarks page's section for ``stage`` (``measure``'s result); ``plain_p50_ms``: Jetstream's
    non-stream p50 at 1 connection, to put the off cost in proportion."""
    if not stage:
        return ["Not measured in this run."]
    lines = ["| Policy | What | Cost |", "|---|---|---:|"]
    off = stage.get("off") or {}
    if "error" in off:
        lines.append(f"| off | the stage's check | **FAILED**: {off['error']} |")
    else:
        share = f" ({off['ns_per_request'] / (plain_p50_ms * 1e6) * 100:.5f} % of the plain p50)" if plain_p50_ms else ""
        lines.append(f"| off | one attribute check per request (timeit, {off['loops']:,} loops) | "
                     f"{off['ns_per_request']:.1f} ns{share} |")
    on = stage.get("on") or {}
    if "error" in on:
        lines.append(f"| on | prompt and answer | **FAILED**: {on['error']} |")
    else:
        lines.append(f"| on (mask) | prompt side, {on['prompt_chars']:,} characters (scan + mask), p50 / p99 | "
                     f"{on['prompt_p50_us']:,.0f} / {on['prompt_p99_us']:,.0f} µs |")
        lines.append(f"| on (mask) | answer side, the echo in {on['stream_chunks']} stream chunks (restore + scan), p50 / p99 | "
                     f"{on['answer_p50_us']:,.0f} / {on['answer_p99_us']:,.0f} µs |")
    return lines


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print(json.dumps(measure(), indent=2))
