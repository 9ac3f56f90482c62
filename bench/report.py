"""Render docs/benchmarks.md from the runner's results (bench/.work/results.json).

    .venv/bin/python -m bench.report [results.json] [output.md]   # re-render without re-running

Numbers come only from the results; a target that failed or was not run shows why, never a number.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench import moderation_stage, payloads

LABELS = {"direct": "Direct (nginx)", "jetstream": "Jetstream", "jetstream_daphne": "Jetstream under Daphne", "litellm": "LiteLLM proxy"}
MODES = ("non-stream", "stream")
MB = 1_000_000

# The targets, all for Jetstream with metering on.
TARGET_NONSTREAM_RPS = 2000
TARGET_STREAM_RPS = 1500
TARGET_P99_MS = 60
TARGET_ADDED_P50_MS = 2
TARGET_LITELLM_RATIO = 20
TARGET_SLOW_STREAMS = 1000
TARGET_SLOW_RSS_MB = 300
TARGET_RECORD_LAG_P99_MS = 1000
TARGET_COLD_P99_MS = 100
# Issue 8: added p50 at 1 connection over the plain path (OpenAI chat in, OpenAI upstream), same run.
TARGET_FAILOVER_ADDED_P50_MS = 5
TARGET_TRANSLATION_ADDED_P50_MS = 1
# Issue 8's paths (bench/runner.py PATHS): label, target for the added p50, what the baseline is.
PATHS = {
    "failover": ("Failover (first key 429)", TARGET_FAILOVER_ADDED_P50_MS),
    "anthropic_inbound": ("Anthropic in → OpenAI upstream", TARGET_TRANSLATION_ADDED_P50_MS),
    "anthropic_upstream": ("OpenAI in → Anthropic upstream", TARGET_TRANSLATION_ADDED_P50_MS),
}
LOAD_CONNECTIONS = 50
# "Within noise of before": the plain path's median req/s in this run may trail the earlier run's by
# at most this run's own spread (max − min over its repeats), and never less than this share.
MIN_NOISE_SHARE = 0.05


def _rps(value: float) -> str:
    return f"{value:,.0f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def _mb(value: int | None) -> str:
    return "–" if value is None else f"{value / MB:,.0f}"


def _cell(results: dict, target: str, key: str) -> dict | None:
    entry = results["targets"].get(target)
    if not entry or "error" in entry:
        return None
    return entry.get("cells", {}).get(key)


def _why_missing(results: dict, target: str) -> str:
    entry = results["targets"].get(target)
    if entry is None:
        return f"{LABELS[target]} was not run (BENCH_TARGETS)"
    if "error" in entry:
        return f"{LABELS[target]} FAILED: {entry['error'].splitlines()[0].removesuffix('; its last lines:')} (details above)"
    return "no such cell in this run"


def _errors_text(cell: dict) -> str:
    parts = [f"{count} {kind.replace('_', '-')}" for kind, count in cell["errors"].items() if count]
    return ", ".join(parts)


def _machine(results: dict) -> list[str]:
    m = results["machine"]
    v = m["versions"]
    commit = m["git_commit"] + (" (the working tree also had uncommitted changes)" if m["git_dirty"] else "")
    versions = ", ".join(f"{name} {version}" for name, version in v.items())
    lines = [
        "| | |",
        "|---|---|",
        f"| Date | {m['date']} |",
        f"| CPU | {m['cpu_model'] or 'unknown'}, nproc {m['nproc']} |",
        f"| RAM | {m['ram_gib']} GiB |",
        f"| Kernel | {m['kernel']} |",
        f"| Python | {m['python']} |",
        f"| Commit | {commit} |",
        f"| Versions | {versions} |",
    ]
    js = results["targets"].get("jetstream") or {}
    servers = js.get("servers")
    if servers:
        lines.append(f"| Jetstream's stores | PostgreSQL {servers.get('postgresql', '?')} ({servers.get('database', '?')}), Redis {servers.get('redis') or '?'} |")
    lines.append(f"| DEBUG | {m['debug'] or 'unset'} |")
    if "loadavg_start" in m:
        end = " / ".join(str(x) for x in m.get("loadavg_end", [])) or "?"
        lines.append(f"| Load average (1/5/15 min) | {' / '.join(str(x) for x in m['loadavg_start'])} at the start, {end} at the end |")
    return lines


def _method(results: dict) -> list[str]:
    s = results["settings"]
    conns = " and ".join(str(c) for c in s["connections"])
    chunks = len(payloads.stream_chunks(model=payloads.STREAM_MODEL))
    return [
        "- One machine, everything on 127.0.0.1. Upstream: nginx (`worker_processes 1`, access log off) returning a fixed "
        f"`chat.completion` with usage for `bench-chat` and a fixed SSE stream ({chunks} chunks, a usage chunk with `choices: []`, "
        "`data: [DONE]`) for `bench-stream`. Direct = wrk straight at those two URLs.",
        "- Jetstream: `bin/serve` (uvicorn, uvloop + httptools) with `JETSTREAM_WORKERS=1`, the whole pipeline on "
        "(auth, limits, reservation, settlement, metering) and the meter writer (`manage.py jetstream_meter`) draining usage "
        "into PostgreSQL; configured by `manage.py jetstream_apply bench/bench.yaml` (a bench company with a huge top-up, one "
        "token with no limits, priced models pointing at the upstreams).",
        "- LiteLLM: `litellm --config … --num_workers 1` from its own venv (`pip install 'litellm[proxy]'`), the same models as "
        "`openai/…` with `api_base` at the same upstreams, no database, no master key, `LITELLM_OFFLINE_MODE=true`, "
        "`LITELLM_LOCAL_MODEL_COST_MAP=True`, `LITELLM_LOG=ERROR`.",
        f"- Load: wrk, 1 thread, {conns} connections, {s['warmup_s']} s warm-up then {s['duration_s']} s measured per cell, "
        "POST with a fixed body (`bench/wrk/post.lua`); streaming cells ask `stream: true` with "
        "`stream_options.include_usage` and wrk reads each whole SSE response as one request. p50/p99 are wrk's. Before its "
        "cells each target answers one request per mode that is checked for shape. A cell with any non-2xx, socket error or "
        "timeout is flagged below.",
        "- RSS: the sum of VmRSS over the server's process tree right after the cell (direct: nginx master + worker). "
        "MB = 10^6 bytes.",
        "- Records: `billing_usagerecord` rows counted just before and after the measured window (records/s = the difference "
        "over the window); after the cell the harness waits until the count stops growing, then takes the cell's rows "
        "(bench model, started in the cell) and reports the p99 of `recorded_at − finished_at` as the record lag.",
        f"- Slow streams: {s['slow_streams']} streaming requests opened over {s['slow_ramp_s']} s (one connection each, "
        f"`bench/slow_client.py`, aiohttp) against an upstream that sends one chunk every {s['slow_interval_s']} s for "
        f"{s['slow_chunks']} chunks (`bench/slow_upstream.py`); each is read to `data: [DONE]`; the server's RSS is sampled "
        "every 0.5 s during the hold. Direct = the slow upstream itself (checks the client and upstream can hold the load).",
        *_paths_method(s),
        "- Tunables (environment, read by `bench/runner.py`): `BENCH_TARGETS`, `BENCH_CONNECTIONS`, `BENCH_WARMUP`, "
        "`BENCH_DURATION`, `BENCH_SLOW_TARGETS`, `BENCH_SLOW_STREAMS`, `BENCH_SLOW_CHUNKS`, `BENCH_SLOW_INTERVAL`, "
        "`BENCH_SLOW_RAMP`, `BENCH_COLD_START` (0 skips the cold worker), `BENCH_DIALECT_CELLS` (0 skips issue 8's "
        "paths, for a quick A/B of the plain path), `BENCH_BEFORE` (an earlier run's `results.json`: the plain path's "
        "throughput is compared with it), `BENCH_OUTPUT`.",
        *_before_method(results),
        "- The machine has 2 cores: wrk, nginx, the proxy under test and (for Jetstream) Redis, PostgreSQL and the meter "
        "writer share them, so every column pays for its load generator.",
    ]


def _paths_method(settings: dict) -> list[str]:
    if not settings.get("dialect_cells"):
        return ["- Issue 8's paths (failover, translation): not measured in this run (`BENCH_DIALECT_CELLS=0`)."]
    return [
        "- Issue 8's paths, Jetstream only, right after its plain cells, each in the same modes, connection counts, "
        "warm-up and duration, each compared with the plain path (OpenAI chat in, OpenAI upstream: the Jetstream "
        "cells above) measured again just before each of its cells (and, at 1 connection, just after). *Failover*: `bench-failover-chat` / `-stream`, whose provider has two keys; "
        "nginx answers the first (priority 0; routed by the `Authorization` header it receives) with OpenAI's 429 "
        "`rate_limit_exceeded` and `Retry-After: 0` — a rate limit that asks for no rest, so the key is tried first "
        "on every request — and the second (priority 1) with the plain path's answers; every 429 is logged by nginx "
        "and the cell counts them: a cell where fewer requests met the 429 than were sent did not measure failover "
        "(the key was resting) and fails its target. *Anthropic inbound → OpenAI upstream*: the same prompt as an "
        "Anthropic Messages request (`POST /v1/messages`, `x-api-key`, `anthropic-version: 2023-06-01`, "
        "`max_tokens`; stream: `stream: true`) to bench-chat / bench-stream, the plain path's upstream; the answer "
        "is checked as an Anthropic `message` / named-event stream. *OpenAI inbound → Anthropic upstream*: the plain "
        "path's request to `bench-claude-chat` / `-stream`, a provider of kind `anthropic` at nginx, which answers "
        "a fixed Anthropic `message` / named-event stream (message_start … message_stop, with usage) and 401/400 "
        "in Anthropic's shape without `x-api-key` / `anthropic-version`.",
    ]


def _before_method(results: dict) -> list[str]:
    """How "within noise of before" is judged, and which run is "before"."""
    before = results.get("before")
    source = (f"this run's `BENCH_BEFORE` is `{before['path']}` (commit {before['git_commit']}, {before['date']}, "
              f"{before.get('duration_s', '?')} s per cell)") if before else "no `BENCH_BEFORE` was given in this run"
    return [
        f"- Plain path vs before ({source}): the plain path's median req/s over its repeats in this run (its own cell "
        "and the neighbours measured around each issue-8 path) may trail the earlier run's by at most this run's spread "
        f"(max − min of the repeats), and never less than {MIN_NOISE_SHARE:.0%} of the earlier figure.",
    ]


def _main_table(results: dict) -> list[str]:
    targets = list(results["targets"])
    header = "| Scenario | " + " | ".join(f"{LABELS[t]} req/s | p50 ms | p99 ms | RSS MB" for t in targets) + " |"
    rule = "|---|" + "|".join("---:|---:|---:|---:" for _ in targets) + "|"
    lines = [header, rule]
    notes: list[str] = []
    for mode in MODES:
        for conns in results["settings"]["connections"]:
            key = f"{mode}-c{conns}"
            row = [f"{mode}, {conns} conn"]
            for t in targets:
                cell = _cell(results, t, key)
                if cell is None:
                    row += ["FAILED" if "error" in results["targets"][t] else "–", "–", "–", "–"]
                    continue
                flag = ""
                if cell["error_total"]:
                    flag = " ⚠"
                    notes.append(f"- {LABELS[t]}, {mode}, {conns} conn: {_errors_text(cell)} of {cell['requests']:,} requests.")
                row += [_rps(cell["rps"]) + flag, _ms(cell["p50_ms"]), _ms(cell["p99_ms"]), _mb(cell["rss_bytes"])]
            lines.append("| " + " | ".join(row) + " |")
    if notes:
        lines += ["", "⚠ Cells with errors (their numbers include failed requests):", *notes]
    for t in targets:
        if "error" in results["targets"][t]:
            lines += ["", f"**{LABELS[t]} FAILED** — no numbers for it in this run:", "", "```", results["targets"][t]["error"], "```"]
    return lines


def _ratios(results: dict) -> list[str]:
    lines = ["| Scenario | Jetstream ÷ LiteLLM req/s | Jetstream p50 − direct p50 |", "|---|---:|---:|"]
    for mode in MODES:
        for conns in results["settings"]["connections"]:
            key = f"{mode}-c{conns}"
            js, ll, direct = (_cell(results, t, key) for t in ("jetstream", "litellm", "direct"))
            ratio = f"{js['rps'] / ll['rps']:.1f}×" if js and ll and ll["rps"] else "not measured"
            added = f"{js['p50_ms'] - direct['p50_ms']:+.3f} ms" if js and direct else "not measured"
            lines.append(f"| {mode}, {conns} conn | {ratio} | {added} |")
    return lines


def _server_choice(results: dict) -> list[str]:
    """Why `make run` serves with uvicorn: the same app under both servers, side by side."""
    lines = ["| Scenario | uvicorn req/s | Daphne req/s | uvicorn ÷ Daphne |", "|---|---:|---:|---:|"]
    for mode in MODES:
        for conns in results["settings"]["connections"]:
            key = f"{mode}-c{conns}"
            uv, da = _cell(results, "jetstream", key), _cell(results, "jetstream_daphne", key)
            if not (uv and da):
                lines.append(f"| {mode}, {conns} conn | {_rps(uv['rps']) if uv else '–'} | {_rps(da['rps']) if da else '–'} | not measured |")
                continue
            lines.append(f"| {mode}, {conns} conn | {_rps(uv['rps'])} | {_rps(da['rps'])} | {uv['rps'] / da['rps']:.1f}× |")
    return lines


def _one_per_request(rows: int, sent: int, conns: int) -> str:
    if rows < sent:
        return f"**NO: {sent - rows:,} missing**"
    if rows > sent + 2 * conns:
        return f"**NO: {rows - sent - 2 * conns:,} extra**"
    return "yes"


def _metering(results: dict) -> list[str]:
    entry = results["targets"].get("jetstream")
    if not entry or "error" in entry:
        return [f"Not measured: {_why_missing(results, 'jetstream')}."]
    lines = [
        "| Scenario | records/s (window) | requests sent (wrk) | records after drain | one per request? | outcomes | lag p50 ms | lag p99 ms | lag max ms | drained after load |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        for conns in results["settings"]["connections"]:
            cell = _cell(results, "jetstream", f"{mode}-c{conns}")
            if not cell:
                continue
            m = cell["metering"]
            outcomes = ", ".join(f"{s['status']} {s['http_status']}: {s['count']:,}" for s in m["statuses"]) or "none"
            drained = f"{m['drain_after_load_s']:.1f} s" + ("" if m["drain_settled"] else " (still growing at timeout)")
            lines.append(
                f"| {mode}, {conns} conn | {m['records_per_s']:,.0f} | {m['requests_sent']:,} | {m['rows']:,} | "
                f"{_one_per_request(m['rows'], m['requests_sent'], conns)} | {outcomes} | "
                f"{_ms(m['lag_p50_ms'])} | {_ms(m['lag_p99_ms'])} | {_ms(m['lag_max_ms'])} | {drained} |"
            )
    lines.append("")
    lines.append(
        "wrk does not count requests still in flight when it stops (after the warm-up and after the measured run), so a "
        "cell may hold up to two records per connection more than wrk's count; fewer records than requests means lost "
        "records, more than that margin means duplicates."
    )
    return lines


def _slow(results: dict) -> list[str]:
    s = results["settings"]
    lines = [
        "| Target | streams | completed | errors | peak open at once | server RSS before → max MB | first byte p99 s | longest stream s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    details: list[str] = []
    labels = {**LABELS, "direct": "Direct (the slow upstream itself)"}
    for target, entry in results["targets"].items():
        if target not in s["slow_targets"]:
            continue
        if "error" in entry:
            lines.append(f"| {labels[target]} | FAILED | – | – | – | – | – | – |")
            continue
        slow = entry.get("slow")
        if slow is None:
            continue
        if "error" in slow:
            lines.append(f"| {labels[target]} | {s['slow_streams']} | FAILED | – | – | – | – | – |")
            details.append(f"- {labels[target]}: {slow['error'].splitlines()[0]}")
            continue
        longest = "–" if slow["stream_max_s"] is None else f"{slow['stream_max_s']:.1f}"
        first = "–" if slow["first_byte_p99_s"] is None else f"{slow['first_byte_p99_s']:.2f}"
        lines.append(
            f"| {labels[target]} | {slow['streams']:,} | {slow['ok']:,} | {slow['errors']:,} | {slow['peak_open']:,} | "
            f"{_mb(slow['rss_before_bytes'])} → {_mb(slow['rss_max_bytes'])} | {first} | {longest} |"
        )
        if slow["errors"]:
            kinds = ", ".join(f"{kind}: {count}" for kind, count in slow["errors_by_kind"].items())
            details.append(f"- {labels[target]} errors by kind: {kinds}. First samples: " + "; ".join(f"`{x}`" for x in slow["error_samples"][:3]))
        if not slow["server_alive_after"]:
            details.append(f"- {labels[target]}: the server process was gone after the hold.")
        if "records" in slow:
            details.append(f"- {labels[target]}: {slow['records']['rows']:,} usage records for the slow streams, lag p99 {_ms(slow['records']['lag_p99_ms'])} ms.")
    if s["slow_streams"] == 0 or len(lines) == 2:
        return ["Not run (BENCH_SLOW_STREAMS=0 or no BENCH_SLOW_TARGETS)."]
    return lines + ([""] + details if details else [])


def _check(ok: bool, text: str) -> str:
    return f"| {'met' if ok else '**NOT MET**'} | {text} |"


def _missing(what: str) -> str:
    return f"| **not measured** | {what}: no such cell in this run (BENCH_CONNECTIONS / BENCH_TARGETS) |"


def _throughput_rows(results: dict, c: int) -> list[str]:
    lines = []
    for mode, floor in (("non-stream", TARGET_NONSTREAM_RPS), ("stream", TARGET_STREAM_RPS)):
        js = _cell(results, "jetstream", f"{mode}-c{c}")
        what = f"≥ {floor:,} req/s {mode} at {c} connections"
        if not js:
            lines.append(_missing(what))
            continue
        errs = f", {js['error_total']} errors" if js["error_total"] else ""
        lines.append(_check(js["rps"] >= floor and not js["error_total"], f"{what}: {_rps(js['rps'])}{errs}"))
    for mode in MODES:
        js = _cell(results, "jetstream", f"{mode}-c{c}")
        what = f"p99 ≤ {TARGET_P99_MS} ms {mode} at {c} connections"
        lines.append(_check(js["p99_ms"] <= TARGET_P99_MS, f"{what}: {_ms(js['p99_ms'])} ms") if js else _missing(what))
    return lines


def _comparison_rows(results: dict, c: int) -> list[str]:
    lines = []
    for mode in MODES:
        js, direct = _cell(results, "jetstream", f"{mode}-c1"), _cell(results, "direct", f"{mode}-c1")
        what = f"added p50 latency ≤ {TARGET_ADDED_P50_MS} ms over direct, {mode}, 1 connection"
        if js and direct:
            added = js["p50_ms"] - direct["p50_ms"]
            lines.append(_check(added <= TARGET_ADDED_P50_MS, f"{what}: {added:+.3f} ms ({_ms(js['p50_ms'])} vs {_ms(direct['p50_ms'])})"))
        else:
            lines.append(_missing(what))
    for mode in MODES:
        js, ll = _cell(results, "jetstream", f"{mode}-c{c}"), _cell(results, "litellm", f"{mode}-c{c}")
        what = f"≥ {TARGET_LITELLM_RATIO}× LiteLLM's throughput, {mode}, {c} connections"
        if js and ll and ll["rps"]:
            ratio = js["rps"] / ll["rps"]
            lines.append(_check(ratio >= TARGET_LITELLM_RATIO, f"{what}: {ratio:.1f}× ({_rps(js['rps'])} vs {_rps(ll['rps'])})"))
        else:
            lines.append(_missing(what) if "litellm" not in results["targets"] else f"| **not measured** | {what}: {_why_missing(results, 'litellm')} |")
    return lines


def _slow_row(slow: dict | None) -> str:
    what = f"{TARGET_SLOW_STREAMS:,} concurrent slow streams on one worker, RSS ≤ {TARGET_SLOW_RSS_MB} MB, no errors"
    if not slow:
        return _missing(what)
    if "error" in slow:
        return f"| **NOT MET** | {what}: the run failed: {slow['error'].splitlines()[0]} |"
    ok = (
        slow["streams"] >= TARGET_SLOW_STREAMS
        and slow["ok"] == slow["streams"]
        and slow["errors"] == 0
        and slow["peak_open"] >= TARGET_SLOW_STREAMS
        and slow["rss_max_bytes"] <= TARGET_SLOW_RSS_MB * MB
    )
    return _check(ok, f"{what}: {slow['ok']:,}/{slow['streams']:,} completed, {slow['errors']} errors, "
                  f"peak {slow['peak_open']:,} open, max RSS {slow['rss_max_bytes'] / MB:,.1f} MB")


def _lag_row(results: dict, c: int) -> str:
    cells = [(mode, _cell(results, "jetstream", f"{mode}-c{c}")) for mode in MODES]
    lags = [(mode, cell["metering"]["lag_p99_ms"]) for mode, cell in cells if cell]
    what = f"records visible in PostgreSQL within 1 s at p99 under load ({c} connections)"
    if lags and all(lag is not None for _, lag in lags):
        worst = max(lag for _, lag in lags)
        return _check(worst <= TARGET_RECORD_LAG_P99_MS, f"{what}: worst cell p99 {worst:,.0f} ms")
    return _missing(what) if not lags else f"| **NOT MET** | {what}: no records found for a cell |"


def _cold_row(cold: dict | None, settings: dict) -> str:
    what = (f"a cold worker (a new process in a running deployment), {settings.get('cold_connections', 50)} connections, "
            f"first {settings.get('cold_seconds', 1)} s: p99 ≤ {TARGET_COLD_P99_MS} ms")
    if not cold:
        return _missing(what)
    errs = f", {cold['error_total']} errors" if cold["error_total"] else ""
    return _check(cold["p99_ms"] <= TARGET_COLD_P99_MS and not cold["error_total"],
                  f"{what}: p99 {_ms(cold['p99_ms'])} ms, max {_ms(cold['max_ms'])} ms, {cold['requests']:,} requests{errs}")


def _targets(results: dict) -> list[str]:
    lines = ["| | Target (Jetstream, metering on) |", "|---|---|"]
    js_entry = results["targets"].get("jetstream")
    if not js_entry or "error" in js_entry:
        why = _why_missing(results, "jetstream")
        return [*lines, f"| **not measured** | every target: {why} |"]
    c = LOAD_CONNECTIONS
    return [*lines, *_throughput_rows(results, c), *_comparison_rows(results, c), _slow_row(js_entry.get("slow")),
            _lag_row(results, c), _cold_row(js_entry.get("cold_start"), results["settings"]),
            _cold_no_counters_row(js_entry.get("cold_start_no_counters")), *_path_rows(results), *_before_rows(results)]


def _path_cell(results: dict, path: str, key: str) -> dict | None:
    entry = (results["targets"].get("jetstream") or {}).get("paths", {}).get(path)
    if not entry or "error" in entry:
        return None
    return entry["cells"].get(key)


def _baseline(results: dict, cell: dict, key: str) -> dict | None:
    """The plain path a path's cell is compared with: ``rps`` and ``p50_ms``, the means of the plain path
    measured just before it (``baseline``) and, where there is one, just after it (``baseline_after``);
    ``around``: the two p50s. Results of an older runner: the plain cell of the same run."""
    neighbours = [c for c in (cell.get("baseline"), cell.get("baseline_after")) if c]
    if not neighbours:
        return _cell(results, "jetstream", key)
    return {"rps": sum(c["rps"] for c in neighbours) / len(neighbours),
            "p50_ms": sum(c["p50_ms"] for c in neighbours) / len(neighbours),
            "around": [c["p50_ms"] for c in neighbours]}


def _failover_shortfall(cell: dict) -> int:
    """Requests of a failover cell that did not meet the first key's 429 (0 = it measured failover)."""
    sent = cell["metering"]["requests_sent"] if "metering" in cell else cell["requests"]
    return max(0, sent - cell.get("first_key_429s", 0))


def _path_notes(path: str, cell: dict) -> str:
    notes = []
    if cell["error_total"]:
        notes.append(f"⚠ {_errors_text(cell)}")
    if path == "failover":
        short = _failover_shortfall(cell)
        sent = cell["metering"]["requests_sent"] if "metering" in cell else cell["requests"]
        notes.append(f"429s met: {cell.get('first_key_429s', 0):,} for {sent:,} sent"
                     + (f" (**{short:,} skipped the first key**)" if short else ""))
    keys = (cell.get("metering") or {}).get("keys") or []
    if keys:
        notes.append("served by " + ", ".join(f"{k['key']} {k['count']:,}" for k in keys))
    billed = (cell.get("metering") or {}).get("billed") or []
    if billed:
        notes.append("ok records billed " + ", ".join(
            f"{b['input_tokens']} in / {b['output_tokens']} out{' (counted locally)' if b['counted_locally'] else ''}, "
            f"{b['sell_cost_micro_rub']:,} µRUB × {b['count']:,}" for b in billed))
    return "; ".join(notes)


def _around(plain: dict | None) -> str:
    if not plain:
        return "–"
    around = plain.get("around") or []
    return _ms(plain["p50_ms"]) + (f" ({' / '.join(_ms(x) for x in around)})" if len(around) > 1 else "")


def _paths(results: dict) -> list[str]:
    """Issue 8's paths beside the plain path, cell by cell."""
    js = results["targets"].get("jetstream")
    if not results["settings"].get("dialect_cells"):
        return ["Not measured in this run (`BENCH_DIALECT_CELLS=0`)."]
    if not js or "error" in js:
        return [f"Not measured: {_why_missing(results, 'jetstream')}."]
    lines = ["| Path | Scenario | req/s | p50 ms | p99 ms | plain path around it: req/s | p50 ms (before / after) | added p50 ms | notes |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    failed = []
    for path, (label, _) in PATHS.items():
        entry = js.get("paths", {}).get(path)
        if entry is None:
            continue
        if "error" in entry:
            failed.append(f"- **{label}: FAILED** — {entry['error']}")
            continue
        for key, cell in entry["cells"].items():
            plain = _baseline(results, cell, key)
            added = f"{cell['p50_ms'] - plain['p50_ms']:+.3f}" if plain else "–"
            lines.append(f"| {label} | {key.replace('-c', ', ')} conn | {_rps(cell['rps'])} | {_ms(cell['p50_ms'])} | "
                         f"{_ms(cell['p99_ms'])} | {_rps(plain['rps']) if plain else '–'} | "
                         f"{_around(plain)} | {added} | {_path_notes(path, cell)} |")
    return lines + (["", *failed] if failed else [])


def _path_rows(results: dict) -> list[str]:
    """Issue 8's targets: each path's added p50 at 1 connection over the plain path, per mode."""
    if not results["settings"].get("dialect_cells"):
        return []
    lines = []
    for path, (label, target_ms) in PATHS.items():
        for mode in MODES:
            what = f"{label}: added p50 ≤ {target_ms} ms over the plain path, {mode}, 1 connection"
            cell = _path_cell(results, path, f"{mode}-c1")
            plain = _baseline(results, cell, f"{mode}-c1") if cell else None
            if not (cell and plain):
                entry = (results["targets"]["jetstream"].get("paths") or {}).get(path) or {}
                why = f"FAILED: {entry['error'].splitlines()[0]}" if "error" in entry else "no such cell in this run"
                lines.append(f"| **not measured** | {what}: {why} |")
                continue
            added = cell["p50_ms"] - plain["p50_ms"]
            ok = added <= target_ms and not cell["error_total"] and (path != "failover" or not _failover_shortfall(cell))
            errs = f", {cell['error_total']} errors" if cell["error_total"] else ""
            short = f", {_failover_shortfall(cell):,} requests did not meet the 429" if path == "failover" and _failover_shortfall(cell) else ""
            lines.append(_check(ok, f"{what}: {added:+.3f} ms ({_ms(cell['p50_ms'])} vs {_around(plain)}){errs}{short}"))
    return lines


def _plain_repeats(results: dict, key: str) -> list[float]:
    """Every req/s of the plain path in ``key``'s mode and connection count in this run: its own cell and
    the neighbours measured around each issue-8 path's cell."""
    js = results["targets"].get("jetstream") or {}
    first = _cell(results, "jetstream", key)
    repeats = [first["rps"]] if first else []
    for entry in (js.get("paths") or {}).values():
        cell = (entry.get("cells") or {}).get(key, {})
        repeats += [cell[side]["rps"] for side in ("baseline", "baseline_after") if cell.get(side)]
    return repeats


def _before_rows(results: dict) -> list[str]:
    """Issue 8: the plain OpenAI path's throughput within noise of an earlier run's (``BENCH_BEFORE``)."""
    before, lines = results.get("before"), []
    for mode in MODES:
        key = f"{mode}-c{LOAD_CONNECTIONS}"
        what = f"plain OpenAI path's throughput within noise of before, {mode}, {LOAD_CONNECTIONS} connections"
        repeats = sorted(_plain_repeats(results, key))
        if not repeats:
            lines.append(_missing(what))
            continue
        now = repeats[len(repeats) // 2] if len(repeats) % 2 else sum(repeats[len(repeats) // 2 - 1:len(repeats) // 2 + 1]) / 2
        spread = repeats[-1] - repeats[0]
        measured = (f"{_rps(now)} req/s now (median of {len(repeats)} in this run, {_rps(repeats[0])}–{_rps(repeats[-1])})"
                    if len(repeats) > 1 else f"{_rps(now)} req/s now (measured once in this run)")
        earlier = (before or {}).get("cells", {}).get(key)
        if not earlier:
            why = "no earlier run given (BENCH_BEFORE)" if not before else f"BENCH_BEFORE ({before['path']}) has no such cell"
            lines.append(f"| **not measured** | {what}: {measured}; {why} |")
            continue
        band = max(spread, MIN_NOISE_SHARE * earlier["rps"])
        change = (now - earlier["rps"]) / earlier["rps"] * 100 if earlier["rps"] else 0.0
        lines.append(_check(now >= earlier["rps"] - band,
                            f"{what}: {measured} vs {_rps(earlier['rps'])} before (commit {before['git_commit']}, "
                            f"{before['date']}): {change:+.1f} %, noise band {_rps(band)} req/s"))
    return lines


def _cold_no_counters_row(cold: dict | None) -> str:
    """Reported beside the target, not against it: the worst case, counters to seed from PostgreSQL."""
    what = "the same, with the spend counters not in Redis (seeded from PostgreSQL; no target)"
    if not cold:
        return _missing(what)
    return f"| — | {what}: p99 {_ms(cold['p99_ms'])} ms, max {_ms(cold['max_ms'])} ms, {cold['requests']:,} requests |"


def _journal(results: dict) -> list[str]:
    """The scale cells (bench/journal_cells.py): server time of the company cabinet's pages."""
    journal = results.get("journal")
    if not journal:
        return ["Not measured (BENCH_JOURNAL_CELLS=0)."]
    if "error" in journal:
        return [f"**FAILED**: {journal['error'].splitlines()[0]}"]
    names = {"dashboard": "Company dashboard", "journal_page": "Journal page, filtered (token, status ok, 30 days)",
             "export_first_byte": "CSV export, first byte (the header)",
             "export_first_rows": "CSV export, first " + f"{journal.get('export_chunk', 2000):,}".replace(",", "\u202f") + " rows"}
    lines = [f"{journal['records']:,} usage records of one company (seeded once with `manage.py seed_usage`, COPY), "
             "timed in-process through Django's test client: the server's work without the network; the median of "
             "five runs after a warm-up.", "", "| page | median | max | target | |", "|---|---:|---:|---:|---|"]
    for key, label in names.items():
        cell = journal[key]
        lines.append(f"| {label} | {cell['median_ms']:.1f} ms | {cell['max_ms']:.1f} ms | < {cell['target_ms']} ms | "
                     f"{'met' if cell['met'] else '**NOT MET**'} |")
    return lines


def render(results: dict) -> str:
    parts = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`bench/run.sh`); do not edit by hand. Raw numbers: `bench/.work/results.json` "
        "of the run. Re-render with `.venv/bin/python -m bench.report`.",
        "",
        "## Machine",
        "",
        *_machine(results),
        "",
        "## Method",
        "",
        *_method(results),
        "",
        "## Side by side",
        "",
        *_main_table(results),
        "",
        "## Ratios",
        "",
        *_ratios(results),
        "",
        "## Server choice",
        "",
        "The same application, pipeline and meter under the two ASGI servers it supports; `make run` (`bin/serve`) "
        "uses the faster, uvicorn with uvloop + httptools, and `JETSTREAM_SERVER=daphne` switches.",
        "",
        *_server_choice(results),
        "",
        "## Metering (Jetstream)",
        "",
        *_metering(results),
        "",
        "## The company cabinet at scale (issue 10)",
        "",
        *_journal(results),
        "",
        "## Failover and translation (Jetstream, issue 8)",
        "",
        "The plain path (OpenAI chat in, OpenAI upstream) is measured again right before each path's cell, in the "
        "same mode and connection count (its own warm-up included), and at 1 connection once more right after it; "
        "*added p50* is the path's p50 minus the mean of its neighbours' (a steady drift in the machine's load "
        "cancels out). Neighbours, not the plain cells of the side-by-side table (run minutes "
        "earlier): the machine's load drifts more than the 1 ms the translation targets allow.",
        "",
        *_paths(results),
        "",
        "## Moderation stage (in process)",
        "",
        "Off, the stage is one attribute check per request (`ProxyApp.inference`): its whole cost, timed against "
        "the same loop without it. On, a 4 KB prompt with a name and two phone numbers through the prompt side, and "
        "its echo through the answer side as a stream (`bench/moderation_stage.py`).",
        "",
        *moderation_stage.render(results.get("moderation_stage"), (_cell(results, "jetstream", "non-stream-c1") or {}).get("p50_ms")),
        "",
        "## Slow streams",
        "",
        *_slow(results),
        "",
        "## Targets",
        "",
        *_targets(results),
        "",
    ]
    return "\n".join(parts)


def main() -> None:
    root = Path(__file__).resolve().parent
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else root / ".work" / "results.json"
    output = Path(sys.argv[2]) if len(sys.argv) > 2 else root.parent / "docs" / "benchmarks.md"
    try:
        results = json.loads(source.read_text())
    except (OSError, ValueError) as exc:
        sys.exit(f"bench.report: cannot read {source}: {exc}")
    output.write_text(render(results))
    print(f"Wrote {output}")


if __name__ == "__main__":
    main()
