"""A slow OpenAI-compatible upstream for the slow-stream test: one SSE chunk per interval.

    .venv/bin/python -m bench.slow_upstream --port P [--chunks 20] [--interval 1.0]

POST /v1/chat/completions with "stream": true answers a role chunk at once, then one content
chunk per interval, a finish chunk, the usage chunk (when stream_options.include_usage asks for
it) and data: [DONE]. Without "stream" it waits the same time and returns one chat.completion.
Binds 127.0.0.1 only; GET /healthz answers "ok".
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web

from bench import payloads


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return web.json_response(body, status=status)


def make_app(*, chunks: int, interval: float) -> web.Application:
    pieces = tuple(f" word{i}" for i in range(chunks))

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        model = str(body.get("model") or payloads.SLOW_MODEL)
        if not body.get("stream"):
            await asyncio.sleep(chunks * interval)
            return web.json_response(payloads.completion(model=model))
        stream_options = body.get("stream_options") or {}
        include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        events = payloads.stream_chunks(model=model, pieces=pieces)
        await response.write(payloads.sse_event(events[0]).encode())
        for event in events[1:-1]:
            await asyncio.sleep(interval)
            await response.write(payloads.sse_event(event).encode())
        await response.write(payloads.sse_event(events[-1]).encode())
        if include_usage:
            await response.write(payloads.sse_event(payloads.usage_chunk(model=model, completion_tokens=chunks)).encode())
        await response.write(payloads.sse_event("[DONE]").encode())
        await response.write_eof()
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    if args.chunks < 1 or args.interval < 0:
        parser.error("--chunks must be >= 1 and --interval >= 0")
    app = make_app(chunks=args.chunks, interval=args.interval)
    print(json.dumps({"listening": f"127.0.0.1:{args.port}", "chunks": args.chunks, "interval": args.interval}), flush=True)
    web.run_app(app, host="127.0.0.1", port=args.port, backlog=4096, access_log=None, print=None)


if __name__ == "__main__":
    main()
