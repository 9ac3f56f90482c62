"""The bench's issue-8 cells (bench/): the canned upstream answers, nginx's routing, wrk's headers and
the report's verdicts.

No database: the canned Anthropic answers are read by the gateway's own Anthropic adapter (the cells
would measure an error path otherwise), the 429 by the OpenAI adapter (it must not rest the key, or
the failover cell measures the plain path), and nginx and wrk run for real when installed.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from apps.providers.adapters.anthropic.adapter import AnthropicAdapter
from apps.providers.adapters.anthropic.stream import AnthropicStreamDecoder
from apps.providers.adapters.base import CanonicalRequest, Usage
from apps.providers.adapters.openai.adapter import OpenAIAdapter
from bench import payloads, report, runner

TEXT = "".join(payloads.CONTENT_PIECES)
USAGE = Usage(input_tokens=payloads.PROMPT_TOKENS, output_tokens=len(payloads.CONTENT_PIECES), cached_tokens=0)


def _chat(stream: bool) -> CanonicalRequest:
    model = payloads.CLAUDE_STREAM_MODEL if stream else payloads.CLAUDE_CHAT_MODEL
    return CanonicalRequest("chat", model, payloads.request_body(model=model, stream=stream), stream=stream,
                            include_usage=stream, max_tokens=payloads.MAX_TOKENS)


# --- the canned answers, as the gateway reads them ------------------------------------------------


def test_anthropic_message_is_a_whole_answer_to_the_adapter():
    body = orjson.dumps(payloads.anthropic_message(model=payloads.CLAUDE_CHAT_MODEL))
    parsed = AnthropicAdapter().parse_body(body, _chat(False))
    completion = orjson.loads(parsed.body)
    assert parsed.usage == USAGE
    assert completion["choices"][0]["message"]["content"] == TEXT
    assert completion["choices"][0]["finish_reason"] == "stop"


def test_anthropic_stream_decodes_to_the_same_text_and_usage():
    decoder = AnthropicStreamDecoder()
    raw = payloads.anthropic_sse_body(model=payloads.CLAUDE_STREAM_MODEL).encode()
    # fed in uneven pieces, as reads arrive
    lines = [out for i in range(0, len(raw), 37) for out in decoder.feed(raw[i:i + 37])] + decoder.finish()
    chunks = [orjson.loads(line.removeprefix(b"data: ")) for line in lines]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))
    assert text == TEXT
    assert [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]] == ["stop"]
    assert decoder.usage() == USAGE


def test_the_rate_limit_answer_fails_over_without_resting_the_key():
    failure = OpenAIAdapter().map_error(429, orjson.dumps(payloads.rate_limit_error()), {"retry-after": "0"}, [])
    assert failure.failover
    assert not failure.cooldown  # Retry-After: 0: the first key is tried again on the next request
    resting = OpenAIAdapter().map_error(429, orjson.dumps(payloads.rate_limit_error()), {}, [])
    assert resting.cooldown  # without it the key would rest, and the cell would measure the plain path


# --- the client-side checks -------------------------------------------------------------------------


def _anthropic_sse(events: list[tuple[str, dict]]) -> bytes:
    return "".join(f"event: {n}\ndata: {json.dumps(d)}\n\n" for n, d in events).encode()


def test_anthropic_checks_accept_the_canned_answers():
    payloads.check_anthropic_message(200, "application/json", orjson.dumps(payloads.anthropic_message(model="m")))
    body = payloads.anthropic_sse_body(model="m").encode()
    assert payloads.check_anthropic_stream(200, "text/event-stream; charset=utf-8", body) == len(payloads.CONTENT_PIECES)


@pytest.mark.parametrize("events, why", [
    (lambda e: e[:-1], "message_stop"),  # truncated
    (lambda e: [*e[:-1], ("error", {"type": "error", "error": {"type": "api_error", "message": "x"}})], "error event"),
    (lambda e: [x for x in e if x[0] != "content_block_delta"], "no text"),
    (lambda e: [x for x in e if x[0] != "message_delta"], "message_delta"),
    (lambda e: [("message_start", {"type": "ping"}), *e[1:]], "does not match"),
])
def test_anthropic_stream_check_rejects_broken_streams(events, why):
    body = _anthropic_sse(events(payloads.anthropic_events(model="m")))
    with pytest.raises(payloads.BadResponse, match=why):
        payloads.check_anthropic_stream(200, "text/event-stream", body)


def test_anthropic_message_check_rejects_other_answers():
    good = payloads.anthropic_message(model="m")
    with pytest.raises(payloads.BadResponse, match="HTTP 429"):
        payloads.check_anthropic_message(429, "application/json", b"{}")
    with pytest.raises(payloads.BadResponse, match="content-type"):
        payloads.check_anthropic_message(200, "text/event-stream", orjson.dumps(good))
    with pytest.raises(payloads.BadResponse, match="not an Anthropic message"):
        payloads.check_anthropic_message(200, "application/json", orjson.dumps(payloads.completion(model="m")))
    with pytest.raises(payloads.BadResponse, match="not a whole message"):
        payloads.check_anthropic_message(200, "application/json", orjson.dumps({**good, "stop_reason": "max_tokens"}))


def test_dialect_cells_are_on_unless_switched_off(monkeypatch):
    monkeypatch.delenv("BENCH_DIALECT_CELLS", raising=False)
    assert runner.Settings.from_env().dialect_cells
    monkeypatch.setenv("BENCH_DIALECT_CELLS", "0")
    assert not runner.Settings.from_env().dialect_cells


# --- nginx and wrk, for real ------------------------------------------------------------------------

needs_nginx = pytest.mark.skipif(not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()), reason="nginx not installed")


@pytest.fixture
def nginx(tmp_path):
    """The bench's nginx, rendered from the template into tmp_path; yields its base URL and work dir."""
    (tmp_path / "nginx").mkdir()
    (tmp_path / "logs").mkdir()
    port = runner.free_port()
    conf = tmp_path / "nginx" / "nginx.conf"
    conf.write_text(runner.nginx_conf(port, tmp_path))
    argv = [runner.find_binary("nginx"), "-p", str(tmp_path / "nginx"), "-e", str(tmp_path / "logs" / "error.log"), "-c", str(conf)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "logs" / "error.log").read_text()
                time.sleep(0.05)
        yield base, tmp_path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def _post(url: str, body: dict, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@needs_nginx
@pytest.mark.parametrize("path, stream", [("failover-json", False), ("failover-sse", True)])
def test_nginx_answers_the_first_key_429_and_the_second_normally(nginx, path, stream):
    base, work = nginx
    url = f"{base}/{path}/v1/chat/completions"
    body = payloads.request_body(model="bench-chat", stream=stream)
    status, headers, answer = _post(url, body, {"Authorization": f"Bearer {payloads.RATE_LIMITED_KEY}"})
    assert status == 429 and headers["Retry-After"] == "0" and headers["Content-Type"] == "application/json"
    failure = OpenAIAdapter().map_error(status, answer, {k.lower(): v for k, v in headers.items()}, [])
    assert failure.failover and not failure.cooldown and failure.code == "upstream_rate_limited"
    status, headers, answer = _post(url, body, {"Authorization": f"Bearer {payloads.FAILOVER_KEY}"})
    check = payloads.check_stream if stream else payloads.check_completion
    check(status, headers["Content-Type"], answer)
    assert (work / "logs" / "nginx-429.log").read_text() == "429\n"  # what the failover cells count


@needs_nginx
@pytest.mark.parametrize("path, stream", [("anthropic-json", False), ("anthropic-sse", True)])
def test_nginx_speaks_anthropic(nginx, path, stream):
    base, _ = nginx
    url = f"{base}/{path}/v1/messages"
    body = payloads.anthropic_request_body(model="bench-claude", stream=stream)
    status, headers, answer = _post(url, body, {"anthropic-version": payloads.ANTHROPIC_VERSION})
    assert status == 401 and headers["Content-Type"] == "application/json"
    assert orjson.loads(answer)["error"]["type"] == "authentication_error"
    status, headers, answer = _post(url, body, {"x-api-key": "sk-ant-x"})
    assert status == 400 and orjson.loads(answer)["error"]["type"] == "invalid_request_error"
    status, headers, answer = _post(url, body, {"x-api-key": "sk-ant-x", "anthropic-version": payloads.ANTHROPIC_VERSION})
    check = payloads.check_anthropic_stream if stream else payloads.check_anthropic_message
    check(status, headers["Content-Type"], answer)


@needs_nginx
@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk not installed")
def test_wrk_sends_the_extra_headers(nginx, tmp_path, monkeypatch):
    base, _ = nginx
    monkeypatch.setattr(runner, "LOGS", tmp_path / "logs")
    body_file = tmp_path / "body.json"
    body_file.write_text(json.dumps(payloads.anthropic_request_body(model="bench-claude", stream=False)))
    url = f"{base}/anthropic-json/v1/messages"
    with_headers = runner.run_wrk(url=url, body_file=body_file, authorization="", connections=1, seconds=1, tag="with",
                                  headers=f"x-api-key: sk-ant-x\nanthropic-version: {payloads.ANTHROPIC_VERSION}")
    assert with_headers["requests"] > 0 and with_headers["error_total"] == 0
    without = runner.run_wrk(url=url, body_file=body_file, authorization="", connections=1, seconds=1, tag="without")
    assert without["errors"]["non_2xx"] == without["requests"] > 0


# --- the report's verdicts --------------------------------------------------------------------------


def _cell(p50: float, rps: float = 500.0, *, errors: int = 0, sent: int = 1000, **extra) -> dict:
    return {"requests": sent, "rps": rps, "p50_ms": p50, "p99_ms": p50 * 3, "error_total": errors,
            "errors": {"non_2xx": errors, "connect": 0, "read": 0, "write": 0, "timeout": 0},
            "metering": {"requests_sent": sent, "keys": [{"key": "k", "count": sent}],
                         "billed": [{"input_tokens": 12, "output_tokens": 6, "counted_locally": False,
                                     "sell_cost_micro_rub": 500, "count": sent}]}, **extra}


def _results(paths: dict, *, dialect_cells: bool = True) -> dict:
    plain = {f"{m}-c{c}": _cell(1.5, rps=2000.0 if c == 50 else 600.0) for m in report.MODES for c in (1, 50)}
    return {"settings": {"connections": [1, 50], "dialect_cells": dialect_cells},
            "targets": {"jetstream": {"cells": plain, "paths": paths}}}


def _path(p50: float, baseline_p50: float = 1.5, *, after_p50: float | None = None, **extra) -> dict:
    cells = {f"{m}-c{c}": _cell(p50, baseline=_cell(baseline_p50), **extra) for m in report.MODES for c in (1, 50)}
    if after_p50 is not None:
        for mode in report.MODES:
            cells[f"{mode}-c1"]["baseline_after"] = _cell(after_p50)
    return {"cells": cells}


def _verdicts(results: dict) -> list[str]:
    return report._path_rows(results)


def test_report_meets_targets_by_the_neighbouring_baseline():
    rows = _verdicts(_results({"failover": _path(5.9, first_key_429s=1000), "anthropic_inbound": _path(2.4),
                               "anthropic_upstream": _path(2.0, baseline_p50=0.9)}))
    assert len(rows) == 6
    failover, inbound, upstream = rows[0:2], rows[2:4], rows[4:6]
    assert all(r.startswith("| met |") and "+4.400 ms" in r for r in failover)
    assert all(r.startswith("| met |") and "+0.900 ms" in r for r in inbound)
    # 2.0 - 0.9 = 1.1 ms over the neighbour, though only 0.5 over the side-by-side plain cell
    assert all(r.startswith("| **NOT MET** |") and "+1.100 ms" in r for r in upstream)


def test_report_compares_with_the_mean_of_the_neighbours_before_and_after():
    # the load rose during the three runs: 1.2 before, 2.0 after; the path is 1.1 above their mean
    rows = _verdicts(_results({"anthropic_inbound": _path(2.7, baseline_p50=1.2, after_p50=2.0)}))
    assert rows[2].startswith("| **NOT MET** |") and "+1.100 ms" in rows[2] and "1.600 (1.200 / 2.000)" in rows[2]
    rows = _verdicts(_results({"anthropic_inbound": _path(2.5, baseline_p50=1.2, after_p50=2.0)}))
    assert rows[2].startswith("| met |") and "+0.900 ms" in rows[2]


def test_report_fails_a_failover_cell_whose_requests_skipped_the_429():
    rows = _verdicts(_results({"failover": _path(1.6, first_key_429s=10)}))
    assert rows[0].startswith("| **NOT MET** |") and "990 requests did not meet the 429" in rows[0]
    table = "\n".join(report._paths(_results({"failover": _path(1.6, first_key_429s=10)})))
    assert "**990 skipped the first key**" in table
    assert "served by k 1,000; ok records billed 12 in / 6 out, 500 µRUB × 1,000" in table


def test_report_fails_cells_with_errors_and_shows_failed_paths():
    rows = _verdicts(_results({"anthropic_inbound": _path(1.6, errors=3), "anthropic_upstream": {"error": "probe broke\nmore"}}))
    assert rows[2].startswith("| **NOT MET** |") and "3 errors" in rows[2]
    assert rows[4].startswith("| **not measured** |") and "FAILED: probe broke" in rows[4]
    assert "no such cell" in rows[0]  # the failover path did not run at all
    table = "\n".join(report._paths(_results({"anthropic_upstream": {"error": "probe broke"}})))
    assert "FAILED** — probe broke" in table


def test_report_without_dialect_cells_says_so_and_claims_nothing():
    results = _results({}, dialect_cells=False)
    assert _verdicts(results) == []
    assert "BENCH_DIALECT_CELLS=0" in "\n".join(report._paths(results))
    del results["settings"]["dialect_cells"]  # results of an older runner
    assert _verdicts(results) == []


def _with_repeats(rps: list[float]) -> dict:
    """Results whose plain non-stream 50-connection cell ran len(rps) times (its cell, then neighbours)."""
    results = _results({})
    results["targets"]["jetstream"]["cells"]["non-stream-c50"]["rps"] = rps[0]
    for i, value in enumerate(rps[1:]):
        results["targets"]["jetstream"]["paths"][f"p{i}"] = {"cells": {"non-stream-c50": _cell(9.0, baseline=_cell(9.0, rps=value))}}
    return results


def _before(rps: float) -> dict:
    return {"path": "before.json", "date": "2026-11-28 10:00 UTC", "git_commit": "abc", "duration_s": 10,
            "cells": {"non-stream-c50": {"rps": rps}}}


def test_plain_throughput_within_the_runs_own_spread_of_before():
    results = _with_repeats([1900.0, 2100.0, 2000.0, 1950.0])  # median 1975, spread 200
    results["before"] = _before(2170.0)  # 1975 ≥ 2170 − 200
    row = report._before_rows(results)[0]
    assert row.startswith("| met |") and "median of 4" in row and "1,900–2,100" in row and "-9.0 %" in row
    results["before"] = _before(2200.0)  # 1975 < 2200 − 200: slower beyond this run's noise
    assert report._before_rows(results)[0].startswith("| **NOT MET** |")


def test_plain_throughput_noise_band_is_at_least_five_percent():
    results = _with_repeats([2000.0])  # measured once: no spread of its own
    results["before"] = _before(2100.0)  # 2000 ≥ 2100 − 105
    assert report._before_rows(results)[0].startswith("| met |")
    results["before"] = _before(2120.0)  # 2000 < 2120 − 106
    assert report._before_rows(results)[0].startswith("| **NOT MET** |")


def test_plain_throughput_without_before_is_not_claimed():
    row = report._before_rows(_with_repeats([2000.0, 1800.0]))[0]
    assert row.startswith("| **not measured** |") and "BENCH_BEFORE" in row and "median of 2" in row


def test_load_before_reads_an_earlier_results_file(tmp_path):
    earlier = {"machine": {"date": "d", "git_commit": "c0ffee", "git_dirty": True}, "settings": {"duration_s": 10},
               "targets": {"jetstream": {"cells": {"non-stream-c50": _cell(20.0, rps=1999.0)}}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(earlier))
    before = runner.load_before(path)
    assert before["git_commit"] == "c0ffee (dirty)" and before["cells"]["non-stream-c50"]["rps"] == 1999.0
    path.write_text(json.dumps({"machine": {}, "targets": {"jetstream": {"error": "x"}}}))
    with pytest.raises(runner.BenchError, match="BENCH_BEFORE"):
        runner.load_before(path)
