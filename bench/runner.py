"""The side-by-side benchmark behind `make bench` (started by bench/run.sh; run it through that).

Direct to a zero-cost upstream (nginx), through Jetstream (one uvicorn worker, the whole
pipeline, metering to PostgreSQL) and through LiteLLM's proxy (one worker, no database), with
wrk at each connection count, non-streaming and streaming; then many slow streams held open at
once. Raw results go to bench/.work/results.json and the report to docs/benchmarks.md.

Environment (all optional):
    BENCH_TARGETS        direct,jetstream,jetstream_daphne,litellm    which columns to measure
    BENCH_CONNECTIONS    1,50                        wrk connection counts
    BENCH_WARMUP         3                           seconds of unmeasured load before each cell
    BENCH_DURATION       10                          measured seconds per cell
    BENCH_SLOW_TARGETS   direct,jetstream,litellm    where to hold the slow streams
    BENCH_SLOW_STREAMS   1000                        concurrent slow streams
    BENCH_SLOW_CHUNKS    20                          chunks per slow stream (one per interval)
    BENCH_SLOW_INTERVAL  1                           seconds between slow chunks
    BENCH_SLOW_RAMP      2                           seconds over which the slow streams are opened
    BENCH_COLD_START     1                           measure a cold worker (0 = skip)
    BENCH_DIALECT_CELLS  1                           measure issue 8's paths through Jetstream (0 = skip):
                                                     failover (the first key answered 429), Anthropic
                                                     inbound → OpenAI upstream, OpenAI inbound → Anthropic
                                                     upstream; each beside the plain OpenAI path
    BENCH_JOURNAL_CELLS  1                           measure the company cabinet at scale (0 = skip): the
                                                     dashboard, a filtered journal page and the export's first
                                                     byte on a company seeded once with BENCH_JOURNAL_RECORDS
                                                     usage records, in its own database (<database>_journal,
                                                     kept between runs)
    BENCH_JOURNAL_RECORDS 10000000                   usage records of that company
    BENCH_BEFORE         (none)                      a results.json of an earlier run (e.g. `make bench` on the
                                                     commit before a change): the report compares the plain
                                                     path's throughput with it, against this run's own spread
    BENCH_OUTPUT         docs/benchmarks.md          where the report goes
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import payloads, report

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
WORK = BENCH_DIR / ".work"
LOGS = WORK / "logs"
VENV_PY = ROOT / ".venv" / "bin" / "python"
TARGET_NAMES = ("direct", "jetstream", "jetstream_daphne", "litellm")
MODES = (("non-stream", False), ("stream", True))


# The cold-start cell: a new worker, this many connections, this many seconds from its start.
COLD_CONNECTIONS = 50
COLD_SECONDS = 1


class BenchError(Exception):
    """A step of the harness failed; the message says which step and why."""


def _env_int(name: str, default: int, *, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BenchError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise BenchError(f"{name}={value} must be at least {minimum}")
    return value


def _env_float(name: str, default: float, *, minimum: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BenchError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise BenchError(f"{name}={value} must be at least {minimum}")
    return value


def _env_names(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    unknown = [n for n in names if n not in TARGET_NAMES]
    if unknown:
        raise BenchError(f"{name}: unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGET_NAMES)}")
    return tuple(n for n in TARGET_NAMES if n in names)


@dataclass(frozen=True)
class Settings:
    targets: tuple[str, ...]
    connections: tuple[int, ...]
    warmup: int
    duration: int
    slow_targets: tuple[str, ...]
    slow_streams: int
    slow_chunks: int
    slow_interval: float
    slow_ramp: float
    output: Path
    litellm_venv: Path
    cold_start: bool = True
    dialect_cells: bool = True
    before: Path | None = None
    journal_cells: bool = True
    journal_records: int = 10_000_000

    @classmethod
    def from_env(cls) -> Settings:
        raw_conns = os.environ.get("BENCH_CONNECTIONS", "1,50")
        try:
            connections = tuple(sorted({int(part) for part in raw_conns.split(",") if part.strip()}))
        except ValueError:
            raise BenchError(f"BENCH_CONNECTIONS={raw_conns!r} must be comma-separated integers") from None
        if not connections or min(connections) < 1:
            raise BenchError("BENCH_CONNECTIONS needs at least one count, each >= 1")
        output = Path(os.environ.get("BENCH_OUTPUT") or ROOT / "docs" / "benchmarks.md")
        return cls(
            targets=_env_names("BENCH_TARGETS", TARGET_NAMES),
            connections=connections,
            warmup=_env_int("BENCH_WARMUP", 3, minimum=0),
            duration=_env_int("BENCH_DURATION", 10, minimum=1),
            slow_targets=_env_names("BENCH_SLOW_TARGETS", ("direct", "jetstream", "litellm")),
            slow_streams=_env_int("BENCH_SLOW_STREAMS", 1000, minimum=0),
            slow_chunks=_env_int("BENCH_SLOW_CHUNKS", 20, minimum=1),
            slow_interval=_env_float("BENCH_SLOW_INTERVAL", 1.0, minimum=0.0),
            slow_ramp=_env_float("BENCH_SLOW_RAMP", 2.0, minimum=0.0),
            output=output if output.is_absolute() else ROOT / output,
            litellm_venv=Path(os.environ.get("BENCH_LITELLM_VENV") or WORK / "litellm-venv"),
            cold_start=bool(_env_int("BENCH_COLD_START", 1, minimum=0)),
            dialect_cells=bool(_env_int("BENCH_DIALECT_CELLS", 1, minimum=0)),
            before=Path(os.environ["BENCH_BEFORE"]) if os.environ.get("BENCH_BEFORE", "").strip() else None,
            journal_cells=bool(_env_int("BENCH_JOURNAL_CELLS", 1, minimum=0)),
            journal_records=_env_int("BENCH_JOURNAL_RECORDS", 10_000_000, minimum=1),
        )


# --- processes -----------------------------------------------------------------------------


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def rel(path: Path) -> str:
    """A path as the report shows it: relative to the repository when inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = ANSI_ESCAPE.sub("", path.read_text(errors="replace"))
    except FileNotFoundError:
        return "(no log)"
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) or "(empty log)"


class Processes:
    """Every long-running process the bench starts, each in its own session (process group).

    The groups are listed in bench/.work/pids so bench/run.sh's EXIT trap can end them even if
    this process dies without cleaning up.
    """

    def __init__(self) -> None:
        self.running: dict[str, subprocess.Popen] = {}
        self.stop_signals: dict[str, int] = {}
        self.registry = WORK / "pids"

    def _write_registry(self) -> None:
        self.registry.write_text("".join(f"{proc.pid} {name}\n" for name, proc in self.running.items()))

    def log_path(self, name: str) -> Path:
        return LOGS / f"{name}.log"

    def start(self, name: str, argv: list[str], *, env: dict[str, str], stop_signal: int = signal.SIGTERM) -> subprocess.Popen:
        if name in self.running:
            raise BenchError(f"{name} is already running")
        with open(self.log_path(name), "wb") as log:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.running[name] = proc
        self.stop_signals[name] = stop_signal
        self._write_registry()
        return proc

    def alive(self, name: str) -> bool:
        proc = self.running.get(name)
        return proc is not None and proc.poll() is None

    def ensure_alive(self, name: str) -> None:
        proc = self.running[name]
        if proc.poll() is not None:
            log = self.log_path(name)
            raise BenchError(f"{name} exited with code {proc.returncode} (log: {rel(log)}); its last lines:\n{log_tail(log)}")

    def stop(self, name: str, *, grace: float = 10.0) -> None:
        proc = self.running.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, self.stop_signals.pop(name))
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # Children of the group may outlive its leader (uvicorn's, LiteLLM's): end the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self._write_registry()

    def stop_all(self) -> None:
        for name in reversed(list(self.running)):
            self.stop(name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_request(url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def wait_http(url: str, *, procs: Processes, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        procs.ensure_alive(name)
        try:
            status, _, body = http_request(url, timeout=2)
        except (OSError, urllib.error.URLError) as exc:
            last = f"{exc.__class__.__name__}: {exc}"
        else:
            if status == 200:
                return
            last = f"HTTP {status}: {body[:200]!r}"
        time.sleep(0.25)
    raise BenchError(f"{name}: GET {url} did not answer 200 within {timeout:.0f} s (last: {last}); log: {rel(procs.log_path(name))}")


def tree_rss(pid: int) -> int:
    """Sum of VmRSS over a process and all its descendants, in bytes."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for member in members:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += member.memory_info().rss
    return total


def tree_cpu_seconds(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for member in members:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = member.cpu_times()
            total += times.user + times.system
    return total


def run_quiet(argv: list[str], *, timeout: float = 30, env: dict[str, str] | None = None) -> str:
    """stdout+stderr of a short command, or '' if it cannot run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


# --- wrk -----------------------------------------------------------------------------------


def find_binary(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
    if not path:
        raise BenchError(f"{name} is not installed (bench/run.sh installs it with apt-get)")
    return path


def run_wrk(*, url: str, body_file: Path, authorization: str, connections: int, seconds: int, tag: str,
            headers: str = "") -> dict:
    """wrk against ``url`` POSTing ``body_file`` with ``authorization`` (an Authorization value, "" = none)
    and ``headers`` ("Name: value" lines, "" = none); its counts, latencies (ms) and errors."""
    argv = [
        find_binary("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency",
        "-s", str(BENCH_DIR / "wrk" / "post.lua"), url,
    ]
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_AUTHORIZATION": authorization, "BENCH_HEADERS": headers}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, env=env)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk ({tag}) did not finish within {seconds + 60} s") from None
    (LOGS / f"wrk-{tag}.txt").write_text(f"$ {' '.join(argv)}\n{done.stdout}\n{done.stderr}")
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk ({tag}) failed (exit {done.returncode}): {(done.stderr or done.stdout)[-500:]}")
    raw = json.loads(line.removeprefix("BENCH_RESULT "))
    duration_s = raw["duration_us"] / 1e6
    errors = {
        "non_2xx": raw["status_errors"],
        "connect": raw["connect_errors"],
        "read": raw["read_errors"],
        "write": raw["write_errors"],
        "timeout": raw["timeouts"],
    }
    return {
        "connections": connections,
        "requests": raw["requests"],
        "duration_s": round(duration_s, 3),
        "rps": raw["requests"] / duration_s if duration_s else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "bytes": raw["bytes"],
        "errors": errors,
        "error_total": sum(errors.values()),
    }


# --- targets -------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    chat_url: str
    stream_url: str
    slow_url: str
    authorization: str
    server: str  # the Processes name whose process tree is measured
    extra_processes: list[str] = field(default_factory=list)
    meter: UsageMeter | None = None
    messages_url: str = ""  # Jetstream's Anthropic Messages endpoint (the Anthropic-inbound cells)
    api_key: str = ""  # the token as the Anthropic dialect sends it (x-api-key)


def probe(target: Target) -> dict:
    """One request per mode, checked for shape: numbers from a broken target would be fiction."""
    headers = {"Content-Type": "application/json"}
    if target.authorization:
        headers["Authorization"] = target.authorization
    checks = {}
    for mode, stream in MODES:
        url = target.stream_url if stream else target.chat_url
        model = payloads.STREAM_MODEL if stream else payloads.CHAT_MODEL
        body = json.dumps(payloads.request_body(model=model, stream=stream)).encode()
        try:
            status, content_type, answer = http_request(url, body=body, headers=headers, timeout=30)
        except (OSError, urllib.error.URLError) as exc:
            raise BenchError(f"{target.name}: probe POST {url} ({model}) failed: {exc}") from None
        try:
            if stream:
                payloads.check_stream(status, content_type, answer)
            else:
                payloads.check_completion(status, content_type, answer)
        except payloads.BadResponse as exc:
            raise BenchError(f"{target.name}: probe POST {url} ({model}, {mode}) got a bad answer: {exc}") from None
        checks[mode] = f"HTTP {status}, {len(answer)} bytes, well-formed"
    return checks


class UsageMeter:
    """Counts Jetstream's usage records in PostgreSQL (through Django, with the bench's env)."""

    def __init__(self) -> None:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jetstream.settings")
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.apps import apps
        from django.db import connection

        self.connection = connection
        self.table = connection.ops.quote_name(apps.get_model("billing", "UsageRecord")._meta.db_table)
        self.key_table = connection.ops.quote_name(apps.get_model("providers", "SupplierKey")._meta.db_table)
        self.models = list(payloads.ALL_MODELS)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT coalesce(max(id), 0) FROM {self.table}")
            self.baseline_id = cursor.fetchone()[0]

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def count(self) -> int:
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {self.table} WHERE id > %s AND model_name = ANY(%s)", [self.baseline_id, self.models])
            return cursor.fetchone()[0]

    def wait_drained(self, *, quiet_s: float = 2.0, timeout: float = 120.0, expect: int = 0) -> tuple[int, float, bool]:
        """Poll until the count reached ``expect`` and then stopped growing for quiet_s (a meter writer
        starved of CPU on a loaded machine can pause longer than quiet_s). Returns (count, seconds until
        the last growth, settled)."""
        started = time.monotonic()
        last = self.count()
        last_growth = started
        while time.monotonic() - started < timeout:
            time.sleep(0.1)
            current = self.count()
            if current != last:
                last, last_growth = current, time.monotonic()
            elif last >= expect and time.monotonic() - last_growth >= quiet_s:
                return last, last_growth - started, True
        return last, last_growth - started, False

    def cell_rows(self, *, model: str, since: dt.datetime, until: dt.datetime) -> dict:
        where = f"FROM {self.table} WHERE id > %s AND model_name = %s AND started_at >= %s AND started_at < %s"
        params = [self.baseline_id, model, since, until]
        lag = "extract(epoch FROM recorded_at - finished_at)"
        with self.connection.cursor() as cursor:
            cursor.execute(
                f"SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY {lag}), "
                f"percentile_cont(0.99) WITHIN GROUP (ORDER BY {lag}), max({lag}) {where}",
                params,
            )
            count, p50, p99, worst = cursor.fetchone()
            cursor.execute(f"SELECT status, http_status, count(*) {where} GROUP BY 1, 2 ORDER BY 3 DESC", params)
            statuses = [{"status": s, "http_status": h, "count": c} for s, h, c in cursor.fetchall()]
            cursor.execute(f"SELECT supplier_key_id, count(*) {where} GROUP BY 1 ORDER BY 2 DESC", params)
            by_key = cursor.fetchall()
            cursor.execute(f"SELECT id, name FROM {self.key_table} WHERE id = ANY(%s)", [[k for k, _ in by_key if k]])
            names = dict(cursor.fetchall())
            cursor.execute(f"SELECT input_tokens, output_tokens, usage_counted_locally, sell_cost, count(*) {where} "
                           "AND status = 'ok' GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC LIMIT 3", params)
            billed = [{"input_tokens": i, "output_tokens": o, "counted_locally": local, "sell_cost_micro_rub": cost, "count": c}
                      for i, o, local, cost, c in cursor.fetchall()]
        return {
            "rows": count,
            "lag_p50_ms": None if p50 is None else float(p50) * 1000,
            "lag_p99_ms": None if p99 is None else float(p99) * 1000,
            "lag_max_ms": None if worst is None else float(worst) * 1000,
            "statuses": statuses,
            "keys": [{"key": names.get(k, "no key"), "count": c} for k, c in by_key],
            "billed": billed,  # the commonest (tokens, cost) of the cell's ok records: the upstream's usage read?
        }

    def server_versions(self) -> dict:
        from django.conf import settings

        with self.connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            pg = cursor.fetchone()[0]
        redis_version = ""
        with contextlib.suppress(Exception):
            import redis

            redis_version = redis.Redis.from_url(settings.REDIS_URL).info("server").get("redis_version", "")
        return {"postgresql": pg, "redis": redis_version}

    def close(self) -> None:
        self.connection.close()


@dataclass(frozen=True)
class CellRequest:
    """What a cell's wrk sends: ``url``, the body in ``body_file``, ``authorization`` (an Authorization
    value, "" = none), more ``headers`` ("Name: value" lines), and the ``model`` its usage records name."""

    url: str
    body_file: Path
    authorization: str
    model: str
    headers: str = ""


def run_cell(target: Target, *, procs: Processes, settings: Settings, mode: str, stream: bool, connections: int,
             tag: str = "") -> dict:
    """A plain-path cell: OpenAI chat to bench-chat (``stream``: bench-stream) at ``connections``."""
    request = CellRequest(
        url=target.stream_url if stream else target.chat_url,
        body_file=WORK / ("body-stream.json" if stream else "body-chat.json"),
        authorization=target.authorization,
        model=payloads.STREAM_MODEL if stream else payloads.CHAT_MODEL,
    )
    return run_request_cell(target, request, procs=procs, settings=settings, connections=connections,
                            tag=tag or f"{target.name}-{mode}-c{connections}")


def run_request_cell(target: Target, request: CellRequest, *, procs: Processes, settings: Settings, connections: int,
                     tag: str) -> dict:
    """Warm-up, then the measured wrk run of ``request``; the server's RSS and CPU and, for Jetstream,
    the cell's usage records (after they drained)."""
    url, body_file, headers = request.url, request.body_file, request.headers
    server_pid = procs.running[target.server].pid
    meter = target.meter
    cell_start = meter.now() if meter else None
    at_start = meter.count() if meter else 0
    warm = None
    if settings.warmup:
        warm = run_wrk(url=url, body_file=body_file, authorization=request.authorization, connections=connections,
                       seconds=settings.warmup, tag=f"{tag}-warmup", headers=headers)
    procs.ensure_alive(target.server)
    before = meter.count() if meter else 0
    cpu_before = tree_cpu_seconds(server_pid)
    started = time.monotonic()
    result = run_wrk(url=url, body_file=body_file, authorization=request.authorization, connections=connections,
                     seconds=settings.duration, tag=tag, headers=headers)
    window = time.monotonic() - started
    after = meter.count() if meter else 0
    cpu = tree_cpu_seconds(server_pid) - cpu_before
    procs.ensure_alive(target.server)
    result["rss_bytes"] = tree_rss(server_pid)
    result["server_cpu_ms_per_request"] = cpu * 1000 / result["requests"] if result["requests"] else None
    result["warmup_requests"] = warm["requests"] if warm else 0
    if meter:
        window_end = meter.now()
        # At least one record per request wrk counted, before the quiet rule applies.
        drained, drain_s, settled = meter.wait_drained(expect=at_start + result["requests"] + result["warmup_requests"])
        rows = meter.cell_rows(model=request.model, since=cell_start, until=window_end)
        result["metering"] = {
            "records_per_s": (after - before) / window,
            "records_in_window": after - before,
            "drain_after_load_s": drain_s,
            "drain_settled": settled,
            "requests_sent": result["requests"] + result["warmup_requests"],
            **rows,
        }
        for name in target.extra_processes:
            result.setdefault("other_rss_bytes", {})[name] = tree_rss(procs.running[name].pid)
    print(
        f"  {tag:32} {result['rps']:9.0f} req/s  p50 {result['p50_ms']:8.3f} ms  p99 {result['p99_ms']:8.3f} ms  "
        f"RSS {result['rss_bytes'] / 2**20:6.0f} MiB  errors {result['error_total']}",
        flush=True,
    )
    return result


def run_slow(target: Target, *, procs: Processes, settings: Settings, server: str) -> dict:
    needed = settings.slow_streams * 2 + 512
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        raise BenchError(f"open-file limit {soft} is below the {needed} that {settings.slow_streams} streams need; raise ulimit -n")
    server_pid = procs.running[server].pid
    hold = settings.slow_chunks * settings.slow_interval
    timeout = hold + 60
    meter = target.meter
    since = meter.now() if meter else None
    rss_before = tree_rss(server_pid)
    env = {**os.environ, "BENCH_SLOW_AUTHORIZATION": target.authorization}
    name = f"slow-client-{target.name}"
    client = procs.start(
        name,
        [
            str(VENV_PY), "-m", "bench.slow_client", "--url", target.slow_url, "--model", payloads.SLOW_MODEL,
            "--streams", str(settings.slow_streams), "--ramp", str(settings.slow_ramp), "--timeout", str(timeout),
            "--authorization-env", "BENCH_SLOW_AUTHORIZATION",
        ],
        env=env,
    )
    rss_max = rss_before
    deadline = time.monotonic() + settings.slow_ramp + timeout + 60
    while client.poll() is None and time.monotonic() < deadline:
        rss_max = max(rss_max, tree_rss(server_pid))
        time.sleep(0.5)
    timed_out = client.poll() is None
    procs.stop(name)
    output = procs.log_path(name).read_text(errors="replace").strip().splitlines()
    if timed_out or not output or not output[-1].startswith("{"):
        state = "timed out" if timed_out else "failed"
        raise BenchError(f"the slow-stream client against {target.name} {state} (log: {rel(procs.log_path(name))}):\n{log_tail(procs.log_path(name))}")
    result = json.loads(output[-1])
    result["rss_before_bytes"] = rss_before
    result["rss_max_bytes"] = rss_max
    result["server_alive_after"] = procs.alive(server)
    result["hold_s"] = hold
    if meter and result["server_alive_after"]:
        drained, drain_s, settled = meter.wait_drained()
        result["records"] = meter.cell_rows(model=payloads.SLOW_MODEL, since=since, until=meter.now())
    print(
        f"  {target.name}: {result['ok']}/{result['streams']} slow streams ok, {result['errors']} errors, "
        f"peak open {result['peak_open']}, max RSS {rss_max / 2**20:.0f} MiB",
        flush=True,
    )
    return result


def measure(target: Target, *, procs: Processes, settings: Settings, slow_server: str | None, paths: bool = False) -> dict:
    """The plain cells, then (``paths``) issue 8's paths right after them, then the slow streams."""
    out: dict = {"probe": probe(target), "cells": {}}
    for mode, stream in MODES:
        for connections in settings.connections:
            out["cells"][f"{mode}-c{connections}"] = run_cell(target, procs=procs, settings=settings, mode=mode, stream=stream, connections=connections)
    if paths:
        out["paths"] = measure_paths(target, procs=procs, settings=settings)
    if slow_server and settings.slow_streams:
        try:
            out["slow"] = run_slow(target, procs=procs, settings=settings, server=slow_server)
        except BenchError as exc:
            out["slow"] = {"error": str(exc)}
            print(f"  {target.name}: slow streams FAILED: {exc}", file=sys.stderr, flush=True)
    return out


# --- issue 8's paths: failover and translation, beside the plain path -----------------------------


@dataclass(frozen=True)
class PathSpec:
    """One of issue 8's paths through Jetstream, measured in the same modes and connection counts as
    the plain path (OpenAI chat in, OpenAI upstream: the ``cells``) it is compared with.

    ``key``: its results key; ``dialect``: the client's (``openai``: ``POST /v1/chat/completions`` with
    ``Authorization: Bearer``; ``anthropic``: ``POST /v1/messages`` with ``x-api-key`` and
    ``anthropic-version``); ``chat_model`` / ``stream_model``: the public models it asks for;
    ``first_key_429``: its provider's first key is answered 429 by nginx (the failover path)."""

    key: str
    dialect: str
    chat_model: str
    stream_model: str
    first_key_429: bool = False


PATHS = (
    # The same request as the plain path, to a provider whose first key nginx answers 429.
    PathSpec("failover", "openai", payloads.FAILOVER_CHAT_MODEL, payloads.FAILOVER_STREAM_MODEL, first_key_429=True),
    # Anthropic Messages in, the plain path's OpenAI upstream (bench-chat / bench-stream) out.
    PathSpec("anthropic_inbound", "anthropic", payloads.CHAT_MODEL, payloads.STREAM_MODEL),
    # The plain path's OpenAI chat request in, an Anthropic Messages upstream out.
    PathSpec("anthropic_upstream", "openai", payloads.CLAUDE_CHAT_MODEL, payloads.CLAUDE_STREAM_MODEL),
)
RATE_LIMITED_LOG = LOGS / "nginx-429.log"  # one line per 429 nginx served (see nginx.conf.template)


def rate_limited_count() -> int:
    """How many 429s nginx has answered the failover providers' first key so far."""
    try:
        return RATE_LIMITED_LOG.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def path_request(target: Target, spec: PathSpec, *, stream: bool) -> CellRequest:
    """The request ``spec``'s cells send in one mode (its body written under bench/.work)."""
    model = spec.stream_model if stream else spec.chat_model
    body_file = WORK / f"body-{spec.key}-{'stream' if stream else 'chat'}.json"
    if spec.dialect == "anthropic":
        body_file.write_text(json.dumps(payloads.anthropic_request_body(model=model, stream=stream)))
        headers = f"x-api-key: {target.api_key}\nanthropic-version: {payloads.ANTHROPIC_VERSION}"
        return CellRequest(url=target.messages_url, body_file=body_file, authorization="", model=model, headers=headers)
    body_file.write_text(json.dumps(payloads.request_body(model=model, stream=stream)))
    return CellRequest(url=target.chat_url, body_file=body_file, authorization=target.authorization, model=model)


def _check_answer(spec: PathSpec, stream: bool, status: int, content_type: str, answer: bytes) -> None:
    if spec.dialect == "anthropic":
        check = payloads.check_anthropic_stream if stream else payloads.check_anthropic_message
    else:
        check = payloads.check_stream if stream else payloads.check_completion
    check(status, content_type, answer)


def probe_path(target: Target, spec: PathSpec) -> dict:
    """One request per mode, checked for shape in the client's dialect; for the failover path, also
    that it met the 429 first. Raises ``BenchError``."""
    checks = {}
    for mode, stream in MODES:
        request = path_request(target, spec, stream=stream)
        headers = {"Content-Type": "application/json"}
        if request.authorization:
            headers["Authorization"] = request.authorization
        for line in filter(None, request.headers.split("\n")):
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
        limited = rate_limited_count()
        try:
            status, content_type, answer = http_request(request.url, body=request.body_file.read_bytes(), headers=headers)
            _check_answer(spec, stream, status, content_type, answer)
        except (OSError, urllib.error.URLError) as exc:
            raise BenchError(f"{spec.key}: probe POST {request.url} ({request.model}) failed: {exc}") from None
        except payloads.BadResponse as exc:
            raise BenchError(f"{spec.key}: probe POST {request.url} ({request.model}, {mode}) got a bad answer: {exc}") from None
        checks[mode] = f"HTTP {status}, {len(answer)} bytes, well-formed"
        if spec.first_key_429:
            met = rate_limited_count() - limited
            if met != 1:
                raise BenchError(f"{spec.key}: the probe ({mode}) met {met} 429s from the first key, expected 1 "
                                 f"(is the key resting after a 429 with Retry-After: 0?)")
            checks[mode] += ", after one 429 from the first key"
    return checks


def run_path(target: Target, spec: PathSpec, *, procs: Processes, settings: Settings) -> dict:
    """Probe then measure ``spec``'s cells (keys ``<mode>-c<connections>``, as the plain path's). Each
    cell's ``baseline`` is the plain path measured again just before it, in the same mode and
    connection count, and at 1 connection (where the targets compare p50s) its ``baseline_after`` just
    after it too, so a load that drifts steadily cancels out of the mean of the two: the comparison is
    between neighbours, not with cells run minutes earlier on a machine whose load drifts."""
    out: dict = {"dialect": spec.dialect, "models": [spec.chat_model, spec.stream_model],
                 "probe": probe_path(target, spec), "cells": {}}
    for mode, stream in MODES:
        request = path_request(target, spec, stream=stream)
        for connections in settings.connections:
            baseline = run_cell(target, procs=procs, settings=settings, mode=mode, stream=stream, connections=connections,
                                tag=f"{target.name}-{spec.key}-baseline-{mode}-c{connections}")
            limited = rate_limited_count()
            cell = run_request_cell(target, request, procs=procs, settings=settings, connections=connections,
                                    tag=f"{target.name}-{spec.key}-{mode}-c{connections}")
            if spec.first_key_429:
                # Counted after the records drained: every request the cell sent (warm-up included)
                # should have met the first key's 429 before the second key answered it.
                cell["first_key_429s"] = rate_limited_count() - limited
            cell["baseline"] = baseline
            if connections == 1:
                cell["baseline_after"] = run_cell(target, procs=procs, settings=settings, mode=mode, stream=stream,
                                                  connections=connections,
                                                  tag=f"{target.name}-{spec.key}-baseline-after-{mode}-c{connections}")
            out["cells"][f"{mode}-c{connections}"] = cell
    return out


def measure_paths(target: Target, *, procs: Processes, settings: Settings) -> dict:
    """Every ``PATHS`` entry; a path that fails records its error and the others still run."""
    results: dict = {}
    for spec in PATHS:
        try:
            results[spec.key] = run_path(target, spec, procs=procs, settings=settings)
        except BenchError as exc:
            procs.ensure_alive(target.server)  # a dead server fails the whole target, as elsewhere
            results[spec.key] = {"error": str(exc)}
            print(f"  {target.name}: {spec.key} FAILED: {exc}", file=sys.stderr, flush=True)
    return results


# --- upstreams -----------------------------------------------------------------------------


def _nginx_literal(text: str) -> str:
    # The bodies go inside single quotes in nginx.conf, where $ starts a variable and \ escapes.
    if any(ch in text for ch in "'\\$"):
        raise BenchError("a fixed upstream body contains ' \\ or $, which nginx would not return verbatim")
    return text


def nginx_conf(port: int, work: Path = WORK) -> str:
    """bench/nginx.conf.template rendered: listening on 127.0.0.1:``port``, its pid, temp files and
    logs under ``work`` (``work``/nginx, ``work``/logs), the fixed bodies from bench/payloads.py."""
    conf = (BENCH_DIR / "nginx.conf.template").read_text()
    for key, value in {
        "@WORK@": str(work),
        "@PORT@": str(port),
        "@COMPLETION_JSON@": _nginx_literal(json.dumps(payloads.completion(model=payloads.CHAT_MODEL))),
        "@SSE_BODY@": _nginx_literal(payloads.sse_body(model=payloads.STREAM_MODEL)),
        "@RATE_LIMITED_KEY@": _nginx_literal(payloads.RATE_LIMITED_KEY),
        "@RATE_LIMIT_JSON@": _nginx_literal(json.dumps(payloads.rate_limit_error())),
        "@ANTHROPIC_MESSAGE_JSON@": _nginx_literal(json.dumps(payloads.anthropic_message(model=payloads.CLAUDE_CHAT_MODEL))),
        "@ANTHROPIC_SSE_BODY@": _nginx_literal(payloads.anthropic_sse_body(model=payloads.CLAUDE_STREAM_MODEL)),
    }.items():
        conf = conf.replace(key, value)
    return conf


def start_upstreams(procs: Processes, settings: Settings) -> dict:
    nginx_port = free_port()
    (WORK / "nginx").mkdir(exist_ok=True)
    conf_path = WORK / "nginx" / "nginx.conf"
    conf_path.write_text(nginx_conf(nginx_port))
    RATE_LIMITED_LOG.unlink(missing_ok=True)  # counted per cell; a run starts it afresh
    nginx = find_binary("nginx")
    check = subprocess.run([nginx, "-t", "-p", str(WORK / "nginx"), "-e", str(LOGS / "nginx-error.log"), "-c", str(conf_path)], capture_output=True, text=True)
    if check.returncode != 0:
        raise BenchError(f"nginx rejected {conf_path}: {check.stderr.strip()}")
    procs.start("nginx", [nginx, "-p", str(WORK / "nginx"), "-e", str(LOGS / "nginx-error.log"), "-c", str(conf_path)], env=dict(os.environ))
    wait_http(f"http://127.0.0.1:{nginx_port}/healthz", procs=procs, name="nginx", timeout=15)

    slow_port = free_port()
    procs.start(
        "slow-upstream",
        [str(VENV_PY), "-m", "bench.slow_upstream", "--port", str(slow_port), "--chunks", str(settings.slow_chunks), "--interval", str(settings.slow_interval)],
        env=dict(os.environ),
    )
    wait_http(f"http://127.0.0.1:{slow_port}/healthz", procs=procs, name="slow-upstream", timeout=30)
    base = f"http://127.0.0.1:{nginx_port}"
    return {
        "json_base_url": f"{base}/json/v1",
        "sse_base_url": f"{base}/sse/v1",
        "slow_base_url": f"http://127.0.0.1:{slow_port}/v1",
        "failover_json_base_url": f"{base}/failover-json/v1",
        "failover_sse_base_url": f"{base}/failover-sse/v1",
        "anthropic_json_base_url": f"{base}/anthropic-json/v1",
        "anthropic_sse_base_url": f"{base}/anthropic-sse/v1",
    }


def direct_target(upstreams: dict) -> Target:
    return Target(
        name="direct",
        chat_url=upstreams["json_base_url"] + "/chat/completions",
        stream_url=upstreams["sse_base_url"] + "/chat/completions",
        slow_url=upstreams["slow_base_url"] + "/chat/completions",
        authorization="",
        server="nginx",
    )


# --- Jetstream -----------------------------------------------------------------------------


def bench_token() -> str:
    """The bench token's secret: made once per checkout, kept out of git under bench/.work."""
    path = WORK / "bench-token"
    if not path.exists():
        path.write_text("js-" + secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def manage(*args: str, timeout: float = 600) -> None:
    log = LOGS / f"manage-{args[0]}.log"
    with open(log, "wb") as fh:
        try:
            done = subprocess.run([str(VENV_PY), "manage.py", *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"manage.py {args[0]} did not finish within {timeout:.0f} s (log: {rel(log)})") from None
    if done.returncode != 0:
        raise BenchError(f"manage.py {args[0]} failed with exit code {done.returncode} (log: {rel(log)}); its last lines:\n{log_tail(log)}")


def ensure_database() -> str:
    """Create DATABASE_URL's database if the server lacks it (migrate does not). Returns a display name."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        return f"embedded PostgreSQL under {os.environ.get('JETSTREAM_DATA_DIR') or ROOT / '.data'}"
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    dbname = params.get("dbname") or "postgres"
    try:
        psycopg.connect(url, connect_timeout=10).close()
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise BenchError(f"cannot connect to DATABASE_URL: {str(exc).splitlines()[0]}") from None
        with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    parsed = urllib.parse.urlsplit(url)
    return f"{parsed.hostname or 'socket'}{':' + str(parsed.port) if parsed.port else ''}/{dbname} (DATABASE_URL)"


def drop_spend_counters() -> int:
    """Delete the proxy's spend counters in Redis (company funds, token and department windows), so
    the next worker meets them for the first time and seeds them from PostgreSQL. Nothing may be in
    flight. Returns how many keys went."""
    import redis
    from django.conf import settings as django_settings

    client = redis.Redis.from_url(django_settings.REDIS_URL)
    try:
        keys = [key for pattern in ("js:co:*", "js:tk:*", "js:dp:*") for key in client.scan_iter(pattern, count=1000)]
        return client.delete(*keys) if keys else 0
    finally:
        client.close()


def run_cold_start(procs: Processes, upstreams: dict, *, drop_counters: bool) -> dict:
    """A new worker hit at once by COLD_CONNECTIONS connections for one token: wrk for the first
    COLD_SECONDS, no warm-up (deploys and autoscaling start workers under load). With
    ``drop_counters`` the spend counters are not in Redis either (Redis lost them, or the token is
    new), so the worker also seeds them from PostgreSQL. The worker is stopped afterwards; its
    records are drained."""
    dropped = drop_spend_counters() if drop_counters else 0
    target, _ = start_jetstream(procs, upstreams, name="jetstream_cold")
    try:
        result = run_wrk(url=target.chat_url, body_file=WORK / "body-chat.json", authorization=target.authorization,
                         connections=COLD_CONNECTIONS, seconds=COLD_SECONDS,
                         tag="jetstream-cold-start" + ("-no-counters" if drop_counters else ""))
        result["counters_dropped"] = dropped
        if target.meter:
            target.meter.wait_drained()
    finally:
        if target.meter:
            target.meter.close()
        for process in ("jetstream_cold", "meter"):
            procs.stop(process)
    label = "cold worker, no counters" if drop_counters else "cold worker"
    print(f"  {label:32} {result['rps']:9.0f} req/s  p50 {result['p50_ms']:8.3f} ms  "
          f"p99 {result['p99_ms']:8.3f} ms  max {result['max_ms']:8.3f} ms  errors {result['error_total']}", flush=True)
    return result


def start_jetstream(procs: Processes, upstreams: dict, *, name: str = "jetstream", server: str = "uvicorn") -> tuple[Target, dict]:
    """The same app and pipeline under `bin/serve`; `server` picks uvicorn (default) or daphne."""
    info = {"database": ensure_database()}
    manage("migrate", "--noinput")
    rendered = (BENCH_DIR / "bench.yaml").read_text()
    token = bench_token()
    for key, value in {
        "@JSON_BASE_URL@": upstreams["json_base_url"],
        "@SSE_BASE_URL@": upstreams["sse_base_url"],
        "@SLOW_BASE_URL@": upstreams["slow_base_url"],
        "@FAILOVER_JSON_BASE_URL@": upstreams["failover_json_base_url"],
        "@FAILOVER_SSE_BASE_URL@": upstreams["failover_sse_base_url"],
        "@ANTHROPIC_JSON_BASE_URL@": upstreams["anthropic_json_base_url"],
        "@ANTHROPIC_SSE_BASE_URL@": upstreams["anthropic_sse_base_url"],
        "@RATE_LIMITED_KEY@": payloads.RATE_LIMITED_KEY,
        "@FAILOVER_KEY@": payloads.FAILOVER_KEY,
        "@TOKEN_SECRET@": token,
    }.items():
        rendered = rendered.replace(key, value)
    config = WORK / "bench.yaml"
    config.write_text(rendered)
    config.chmod(0o600)
    manage("jetstream_apply", str(config))
    meter = UsageMeter()
    info |= meter.server_versions()
    port = free_port()
    env = {**os.environ, "JETSTREAM_WORKERS": "1", "JETSTREAM_HOST": "127.0.0.1", "JETSTREAM_PORT": str(port),
           "JETSTREAM_SERVER": server}
    # SIGINT: uvicorn re-raises the signal it stopped on, and only SIGINT then leaves through Python's
    # exit path, so the embedded PostgreSQL's handle for this process is released.
    procs.start(name, [str(ROOT / "bin" / "serve")], env=env, stop_signal=signal.SIGINT)
    procs.start("meter", [str(VENV_PY), "manage.py", "jetstream_meter"], env=dict(os.environ))
    wait_http(f"http://127.0.0.1:{port}/healthz", procs=procs, name=name, timeout=60)
    procs.ensure_alive("meter")
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    target = Target(
        name=name, chat_url=url, stream_url=url, slow_url=url, authorization=f"Bearer {token}",
        server=name, extra_processes=["meter"], meter=meter,
        messages_url=f"http://127.0.0.1:{port}/v1/messages", api_key=token,
    )
    return target, info


# --- LiteLLM -------------------------------------------------------------------------------


def litellm_version(venv: Path) -> str:
    return run_quiet([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"])


def start_litellm(procs: Processes, upstreams: dict, settings: Settings) -> Target:
    binary = settings.litellm_venv / "bin" / "litellm"
    if not os.access(binary, os.X_OK):
        raise BenchError(f"LiteLLM is not installed in {rel(settings.litellm_venv)} (bench/run.sh installs it; see {rel(LOGS / 'litellm-install.log')})")
    models = [
        (payloads.CHAT_MODEL, upstreams["json_base_url"]),
        (payloads.STREAM_MODEL, upstreams["sse_base_url"]),
        (payloads.SLOW_MODEL, upstreams["slow_base_url"]),
    ]
    config = {
        "model_list": [
            {"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": base, "api_key": "sk-bench-upstream-ignores-this-key"}}
            for name, base in models
        ],
        "litellm_settings": {"request_timeout": 600, "telemetry": False},
    }
    config_path = WORK / "litellm.yaml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    port = free_port()
    # A clean environment: LiteLLM reads DATABASE_URL / REDIS_URL and would use the bench's.
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ") if key in os.environ}
    env |= {
        "LITELLM_OFFLINE_MODE": "true",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # the offline switch this LiteLLM version reads
        "LITELLM_LOG": "ERROR",  # no per-request access log
        # The issue's setup has no master key; this LiteLLM refuses to start without one unless told.
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    procs.start(
        "litellm",
        [str(binary), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        env=env,
    )
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", procs=procs, name="litellm", timeout=180)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    return Target(name="litellm", chat_url=url, stream_url=url, slow_url=url, authorization="", server="litellm")


# --- the run -------------------------------------------------------------------------------


def machine_info() -> dict:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    git = run_quiet(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"])
    dirty = bool(run_quiet(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"]))
    nginx_v = run_quiet([find_binary("nginx"), "-v"]).removeprefix("nginx version: ")
    wrk_v = run_quiet([find_binary("wrk"), "-v"]).splitlines()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git_commit": git,
        "git_dirty": dirty,
        "debug": os.environ.get("DEBUG", ""),
        # Other work on the machine skews every column; the report shows it.
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "versions": {
            "nginx": nginx_v,
            "wrk": wrk_v[0].split(" [")[0].removeprefix("wrk ") if wrk_v else "",
            "uvicorn": importlib.metadata.version("uvicorn"),
            "aiohttp": importlib.metadata.version("aiohttp"),
        },
    }


def run_target(name: str, entry: dict, *, settings: Settings, procs: Processes, upstreams: dict,
               starters: dict[str, Callable[[], Target]]) -> None:
    """Start one target, measure its cells (and slow streams, and for Jetstream a cold worker) into
    ``entry``, stop it."""
    target = None
    try:
        if name == "jetstream":
            target, entry["servers"] = start_jetstream(procs, upstreams)
        elif name == "jetstream_daphne":
            target, entry["servers"] = start_jetstream(procs, upstreams, name=name, server="daphne")
        else:
            target = starters[name]()
        slow_server = None
        if name in settings.slow_targets:
            slow_server = "slow-upstream" if name == "direct" else target.server
        entry |= measure(target, procs=procs, settings=settings, slow_server=slow_server,
                         paths=name == "jetstream" and settings.dialect_cells)
        if name == "direct" and "slow" in entry:
            entry["slow"]["measured_process"] = "slow upstream (aiohttp)"
        if name == "jetstream" and settings.cold_start:
            procs.stop(name)
            procs.stop("meter")
            entry["cold_start"] = run_cold_start(procs, upstreams, drop_counters=False)
            entry["cold_start_no_counters"] = run_cold_start(procs, upstreams, drop_counters=True)
    except BenchError as exc:
        entry["error"] = str(exc)
        banner = "JETSTREAM FAILED" if name == "jetstream" else f"{name.upper()} FAILED"
        print(f"\n!!! {banner}: {exc}\n", file=sys.stderr, flush=True)
    finally:
        if target and target.meter:
            target.meter.close()
        if name != "direct":  # nginx and the slow upstream serve every target
            for process in (name, "meter"):
                procs.stop(process)


def run(settings: Settings, procs: Processes) -> dict:
    results: dict = {
        "machine": machine_info(),
        "settings": {
            "targets": list(settings.targets), "connections": list(settings.connections), "warmup_s": settings.warmup,
            "duration_s": settings.duration, "slow_targets": list(settings.slow_targets), "slow_streams": settings.slow_streams,
            "slow_chunks": settings.slow_chunks, "slow_interval_s": settings.slow_interval, "slow_ramp_s": settings.slow_ramp,
            "cold_connections": COLD_CONNECTIONS, "cold_seconds": COLD_SECONDS, "dialect_cells": settings.dialect_cells,
        },
        "targets": {},
    }
    if "litellm" in settings.targets:
        results["machine"]["versions"]["litellm"] = litellm_version(settings.litellm_venv) or "not installed"
    for stream in (False, True):
        model = payloads.STREAM_MODEL if stream else payloads.CHAT_MODEL
        (WORK / ("body-stream.json" if stream else "body-chat.json")).write_text(json.dumps(payloads.request_body(model=model, stream=stream)))
    if settings.before:
        results["before"] = load_before(settings.before)
    print("Starting the upstreams (nginx, slow upstream)", flush=True)
    upstreams = start_upstreams(procs, settings)

    starters: dict[str, Callable[[], Target]] = {
        "direct": lambda: direct_target(upstreams),
        "litellm": lambda: start_litellm(procs, upstreams, settings),
    }
    for name in settings.targets:
        print(f"== {name}", flush=True)
        entry: dict = {}
        results["targets"][name] = entry
        run_target(name, entry, settings=settings, procs=procs, upstreams=upstreams, starters=starters)
    if settings.journal_cells:
        print("== journal (the company cabinet at scale)", flush=True)
        try:
            results["journal"] = run_journal_cells(settings)
        except BenchError as exc:
            results["journal"] = {"error": str(exc)}
            print(f"\n!!! JOURNAL CELLS FAILED: {exc}\n", file=sys.stderr, flush=True)
    return results


def journal_database_url() -> str:
    """The scale cells' own database on the bench's PostgreSQL server: ``<database>_journal``
    (created when missing), so 10 million seeded records never mix with the throughput cells'."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        from lib import embedded

        url = embedded.ensure_postgres()
    dbname = (conninfo_to_dict(url).get("dbname") or "postgres") + "_journal"
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True, connect_timeout=10) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    parsed = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parsed._replace(path="/" + dbname))


def run_journal_cells(settings: Settings) -> dict:
    """``bench.journal_cells`` in its own process against ``journal_database_url()``: the seeding
    (once) and the timings. Raises ``BenchError`` with its log when it fails."""
    env = {**os.environ, "DATABASE_URL": journal_database_url()}
    log = LOGS / "journal-cells.log"
    argv = [str(VENV_PY), "-m", "bench.journal_cells", "--records", str(settings.journal_records)]
    with open(log, "wb") as fh:
        try:
            done = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=fh, timeout=4 * 3600)
        except subprocess.TimeoutExpired:
            raise BenchError(f"bench.journal_cells did not finish within 4 h (log: {rel(log)})") from None
    line = next((ln for ln in done.stdout.decode().splitlines() if ln.startswith("BENCH_JOURNAL ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"bench.journal_cells failed (exit {done.returncode}; log: {rel(log)}):\n{log_tail(log)}")
    result = json.loads(line.removeprefix("BENCH_JOURNAL "))
    for cell in ("dashboard", "journal_page", "export_first_byte", "export_first_rows"):
        print(f"  {cell:32} median {result[cell]['median_ms']:8.2f} ms  max {result[cell]['max_ms']:8.2f} ms", flush=True)
    return result


def load_before(path: Path) -> dict:
    """The plain path's numbers from an earlier run's results.json (``BENCH_BEFORE``): its date, commit
    and Jetstream ``cells``. Raises ``BenchError`` if it cannot be read or has no Jetstream cells."""
    try:
        earlier = json.loads(path.read_text())
        cells = earlier["targets"]["jetstream"]["cells"]
        machine = earlier["machine"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"BENCH_BEFORE={path}: not the results.json of a run with Jetstream cells ({exc.__class__.__name__}: {exc})") from None
    keep = ("rps", "p50_ms", "p99_ms", "requests", "error_total")
    return {
        "path": str(path),
        "date": machine.get("date", "?"),
        "git_commit": machine.get("git_commit", "?") + (" (dirty)" if machine.get("git_dirty") else ""),
        "duration_s": earlier.get("settings", {}).get("duration_s"),
        "cells": {key: {k: cell[k] for k in keep if k in cell} for key, cell in cells.items()},
    }


def write_outputs(results: dict, settings: Settings) -> None:
    (WORK / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    settings.output.parent.mkdir(parents=True, exist_ok=True)
    settings.output.write_text(report.render(results))
    print(f"Wrote {settings.output} and {WORK / 'results.json'}", flush=True)


def measure_moderation_stage() -> dict:
    """The moderation stage's own cost (``bench/moderation_stage.py``), in a process of its own."""
    done = subprocess.run([sys.executable, "-m", "bench.moderation_stage"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DJANGO_SETTINGS_MODULE": "jetstream.settings"})
    try:
        return json.loads(done.stdout)
    except ValueError:
        return {"off": {"error": done.stderr.strip()[-300:]}, "on": {"error": "not run"}}


def main() -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    try:
        settings = Settings.from_env()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    procs = Processes()

    def on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        results = run(settings, procs)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["moderation_stage"] = measure_moderation_stage()
    write_outputs(results, settings)
    failed = [name for name, entry in results["targets"].items() if "error" in entry]
    if failed:
        print(f"bench: FAILED targets: {', '.join(failed)} (see {settings.output})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
