#!/usr/bin/env bash
# make bench: the side-by-side benchmark (direct upstream / Jetstream / LiteLLM proxy).
# Installs what it needs if missing (nginx and wrk from Debian's packages, LiteLLM in its own venv
# under bench/.work), raises the open-file limit, runs bench/runner.py and cleans up every process
# it started. Results: docs/benchmarks.md and bench/.work/results.json. Tunables: see bench/runner.py.
# With no DATABASE_URL / REDIS_URL the bench uses its own embedded PostgreSQL and Redis under
# bench/.work/data (not the developer's .data) and stops them at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
WORK="$ROOT/bench/.work"
LOGS="$WORK/logs"
PY="$ROOT/.venv/bin/python"
mkdir -p "$LOGS"

if [ ! -x "$PY" ]; then
  echo "bench: $PY is missing; run 'make install' (or 'make bench', which does) first" >&2
  exit 1
fi

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "bench: '$*' needs root and there is no sudo" >&2; return 1
  fi
}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing=()
have nginx || missing+=(nginx-light)
have wrk || missing+=(wrk)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bench: installing ${missing[*]} from Debian's packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$LOGS/apt-install.log" 2>&1 \
    || { echo "bench: apt-get install ${missing[*]} failed; see $LOGS/apt-install.log" >&2; exit 1; }
  # The package may start a system-wide nginx on port 80; the bench runs its own on loopback only.
  if [[ " ${missing[*]} " == *" nginx-light "* ]] && command -v systemctl >/dev/null 2>&1 \
     && systemctl is-active --quiet nginx 2>/dev/null; then
    as_root systemctl disable --now nginx || true
  fi
fi

# LiteLLM in its own venv, never in the project's.
LITELLM_VENV="$WORK/litellm-venv"
LITELLM_SPEC="${BENCH_LITELLM_SPEC:-litellm[proxy]}"
case ",${BENCH_TARGETS:-litellm}," in
  *,litellm,*)
    if [ ! -x "$LITELLM_VENV/bin/litellm" ] || [ "$(cat "$LITELLM_VENV/.bench-spec" 2>/dev/null)" != "$LITELLM_SPEC" ]; then
      echo "bench: installing $LITELLM_SPEC into $LITELLM_VENV (takes a while the first time)"
      BASE_PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
      if { [ -x "$LITELLM_VENV/bin/python" ] || "$BASE_PY" -m venv "$LITELLM_VENV"; } \
         && "$LITELLM_VENV/bin/pip" install --quiet --disable-pip-version-check "$LITELLM_SPEC" >"$LOGS/litellm-install.log" 2>&1; then
        echo "$LITELLM_SPEC" >"$LITELLM_VENV/.bench-spec"
      else
        # The runner reports the LiteLLM column as failed, with this log.
        echo "bench: installing LiteLLM failed; see $LOGS/litellm-install.log" >&2
      fi
    fi
    ;;
esac

# 1,000 slow streams need ~2 descriptors each in the proxy, plus the client's and the upstream's.
hard="$(ulimit -Hn)"
if [ "$hard" = unlimited ] || [ "$hard" -ge 65536 ]; then ulimit -n 65536; else ulimit -n "$hard"; fi

STOP_EMBEDDED=""
if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  if [ -z "${JETSTREAM_DATA_DIR:-}" ]; then
    export JETSTREAM_DATA_DIR="$WORK/data"
    STOP_EMBEDDED=1
  fi
fi

cleanup() {
  # The runner stops what it started; this catches anything left if it was killed outright.
  if [ -s "$WORK/pids" ]; then
    while read -r pgid name; do
      if kill -0 -- "-$pgid" 2>/dev/null; then
        echo "bench: stopping leftover $name (process group $pgid)" >&2
        kill -TERM -- "-$pgid" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$pgid" 2>/dev/null || true
      fi
    done <"$WORK/pids"
    : >"$WORK/pids"
  fi
  if [ -n "$STOP_EMBEDDED" ]; then
    "$PY" -m lib.embedded stop >/dev/null 2>&1 || true
    # lib.embedded's stop leaves PostgreSQL up when a process that used it left a stale handle;
    # this postmaster is the bench's own (bench/.work/data), so stop it by its pid (fast shutdown).
    local pidfile="$JETSTREAM_DATA_DIR/postgres/postmaster.pid" pid
    if [ -s "$pidfile" ]; then
      pid="$(head -n 1 "$pidfile")"
      if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$JETSTREAM_DATA_DIR/postgres"; then
        kill -INT "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      fi
    fi
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$PY" -m bench.runner
