"""Hold many slow streams open at once through one target and count what goes wrong.

    .venv/bin/python -m bench.slow_client --url URL --model M --streams 1000 [--ramp 2] \
        [--timeout 120] [--authorization-env NAME]

Opens --streams streaming chat completions (spread evenly over --ramp seconds, one TCP
connection each), reads every one to data: [DONE], and prints one JSON line: how many finished
well, errors by kind, the peak number of streams open at the same moment, and timings.
Each stream is bounded by --timeout seconds; the whole run by ramp + timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import aiohttp

from bench import payloads


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


class Tally:
    def __init__(self) -> None:
        self.open_now = 0
        self.peak_open = 0
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.first_byte_s: list[float] = []
        self.total_s: list[float] = []
        self.error_samples: list[str] = []

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{kind}: {detail[:200]}")


async def one_stream(session: aiohttp.ClientSession, *, url: str, body: bytes, headers: dict, tally: Tally) -> None:
    started = time.monotonic()
    opened = False
    try:
        async with session.post(url, data=body, headers=headers) as response:
            raw = bytearray()
            first = True
            async for chunk in response.content.iter_any():
                if first:
                    first = False
                    opened = True
                    tally.open_now += 1
                    tally.peak_open = max(tally.peak_open, tally.open_now)
                    tally.first_byte_s.append(time.monotonic() - started)
                raw += chunk
            try:
                payloads.check_stream(response.status, response.headers.get("Content-Type", ""), bytes(raw))
            except payloads.BadResponse as exc:
                kind = f"http_{response.status}" if response.status != 200 else "bad_stream"
                tally.error(kind, str(exc))
                return
        tally.ok += 1
        tally.total_s.append(time.monotonic() - started)
    except TimeoutError:
        tally.error("timeout", "no complete stream within --timeout")
    except aiohttp.ClientError as exc:
        tally.error(exc.__class__.__name__, str(exc))
    except OSError as exc:
        tally.error(exc.__class__.__name__, str(exc))
    finally:
        if opened:
            tally.open_now -= 1


async def run(*, url: str, model: str, streams: int, ramp: float, timeout: float, authorization: str) -> dict:
    body = json.dumps(payloads.request_body(model=model, stream=True)).encode()
    headers = {"Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    client_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=30)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        tasks = []
        for i in range(streams):
            due = started + ramp * i / streams
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one_stream(session, url=url, body=body, headers=headers, tally=tally)))
        await asyncio.gather(*tasks)
    wall = time.monotonic() - started
    return {
        "streams": streams,
        "ok": tally.ok,
        "errors": sum(tally.errors.values()),
        "errors_by_kind": tally.errors,
        "error_samples": tally.error_samples,
        "peak_open": tally.peak_open,
        "first_byte_p50_s": percentile(tally.first_byte_s, 50),
        "first_byte_p99_s": percentile(tally.first_byte_s, 99),
        "stream_p50_s": percentile(tally.total_s, 50),
        "stream_max_s": max(tally.total_s) if tally.total_s else None,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default=payloads.SLOW_MODEL)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--ramp", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--authorization-env", default="", help="name of an environment variable holding the Authorization header")
    args = parser.parse_args()
    if args.streams < 1 or args.ramp < 0 or args.timeout <= 0:
        parser.error("--streams must be >= 1, --ramp >= 0, --timeout > 0")
    authorization = os.environ.get(args.authorization_env, "") if args.authorization_env else ""
    try:
        from uvloop import run as run_loop
    except ImportError:
        run_loop = asyncio.run
    result = run_loop(
        run(url=args.url, model=args.model, streams=args.streams, ramp=args.ramp, timeout=args.timeout, authorization=authorization)
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
