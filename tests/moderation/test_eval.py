"""The evaluation on a slice of the labelled set: the quality targets hold (the speed targets are measured
by ``make eval-moderation``, not in a timed test)."""

from __future__ import annotations

from apps.moderation.eval.evaluate import TARGETS, evaluate, format_report, load_set


def test_the_set_is_large_and_labelled_in_code_points():
    snippets = load_set()
    assert len(snippets) >= 300
    assert {s["lang"] for s in snippets} == {"ru", "en"}
    assert {"chat", "email", "table", "code", "clean", "negative", "injection", "people"} <= {s["kind"] for s in snippets}
    for snippet in snippets:
        for entity in snippet["entities"]:
            assert 0 <= entity["start"] < entity["end"] <= len(snippet["text"])


def test_a_slice_meets_the_quality_targets():
    snippets = load_set()[::3]
    report = evaluate(snippets, latency=False)
    assert [failure for failure in report.failures()] == [], format_report(report)
    for name in ("identifiers (all)", "email", "phone", "secret", "person (ru)"):
        assert report.scores[name].tp > 0, name
    assert set(TARGETS) <= set(report.scores) | {"person (en)", "ip_address", "prompt_injection"}
