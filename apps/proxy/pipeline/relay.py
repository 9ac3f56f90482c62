"""The relay stage: the upstream's answer to the client, then settle + meter.

The adapter turns the upstream's bytes into canonical form (``parse_body`` / its stream decoder);
the inbound dialect renders them for the client. A client that disconnects mid-stream is still
billed for what was generated: the relay keeps reading the upstream until its usage arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time

from apps.billing.models import UsageStatus
from apps.providers.adapters.base import StreamDecoder, UpstreamFailure

from ..dialects import openai as dialect
from ..exceptions import ApiError
from .context import Call
from .idempotency import IdempotencyStore
from .responses import JSON, send_error
from .spend import SpendCounters, price_usage, rub
from .upstream import Opened

logger = logging.getLogger("jetstream.proxy")


async def relay_body(call: Call, opened: Opened, send, *, counters: SpendCounters, idempotency: IdempotencyStore) -> None:
    """A non-streamed answer: priced from its usage, settled, stored for idempotent replays, sent."""
    try:
        parsed = opened.adapter.parse_body(opened.body or b"", call.request)
    except UpstreamFailure as failure:
        error = ApiError.from_upstream(failure)
        await counters.settle(call, status=UsageStatus.UPSTREAM_ERROR, http=error.status, error=error)
        await send_error(send, call, error)
        return
    price_usage(call, parsed.usage, parsed.text)
    call.ttft_ms = int((time.time() - call.started) * 1000)
    await counters.settle(call, status=UsageStatus.OK, http=200)
    rename = dialect.model_renamer(call.request.model, call.route.upstream_model)
    payload = parsed.body if rename is None else rename(parsed.body)
    headers = [JSON, (b"content-length", str(len(payload)).encode()), (b"x-jetstream-cost", rub(call.sell).encode()),
               *call.headers]
    await idempotency.store(call, 200, headers, payload)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class _Client:
    """The streaming client's side: writes, disconnect watching, and what was sent (for replays).
    ``rename`` gives each event the public model name (``dialect.model_renamer``; None: as they are)."""

    def __init__(self, send, receive, rename=None) -> None:
        self.send = send
        self.rename = rename
        self.gone = asyncio.Event()
        self.sent: list[bytes] = []
        self._watcher = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone.set()
                return

    async def write(self, events: list[bytes]) -> None:
        """Render ``events`` (canonical SSE lines) as one body write and keep it for an idempotent replay;
        nothing once the client is gone (an ``OSError`` on send marks it gone)."""
        if not events or self.gone.is_set():
            return
        if self.rename is not None:
            events = [self.rename(event) for event in events]
        chunk = dialect.render_events(events)
        self.sent.append(chunk)
        try:
            await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
        except OSError:  # the client is gone (servers that raise rather than drop the write)
            self.gone.set()

    def close(self) -> None:
        """Stop watching for the client's disconnect."""
        self._watcher.cancel()


async def _pump(call: Call, opened: Opened, decoder: StreamDecoder, client: _Client) -> None:
    """Upstream reads → decoder → client writes, one write per read, until the upstream is done."""
    await client.send({"type": "http.response.start", "status": 200,
                       "headers": [*dialect.SSE_HEADERS, *call.headers]})
    async for data in opened.response.chunks():
        events = decoder.feed(data)
        if events and call.ttft_ms is None:
            call.ttft_ms = int((time.time() - call.started) * 1000)
        await client.write(events)
        if decoder.done:
            return
    await client.write(decoder.finish())


async def relay_stream(call: Call, opened: Opened, receive, send, *, counters: SpendCounters,
                       idempotency: IdempotencyStore) -> None:
    """A streamed answer: relayed as it arrives, priced from the usage chunk (or the text counted
    locally), settled, and ended with the usage chunk (if asked for) and ``[DONE]``."""
    decoder = opened.adapter.stream_decoder(call.request)
    client = _Client(send, receive, dialect.model_renamer(call.request.model, call.route.upstream_model))
    status, http, error = UsageStatus.OK, 200, None
    try:
        await _pump(call, opened, decoder, client)
    except Exception as exc:  # a broken upstream stream (timeouts, resets, protocol errors)
        status, http = UsageStatus.UPSTREAM_ERROR, 502
        error = ApiError(502, "The upstream stream broke off.", type="api_error", code="upstream_broken")
        logger.warning("upstream stream for %s broke: %s", call.id, type(exc).__name__)
    finally:
        opened.response.release()
        client.close()
    usage = decoder.usage()
    price_usage(call, usage, None if usage else decoder.generated_text())
    if client.gone.is_set() and status == UsageStatus.OK:
        status, http = UsageStatus.CLIENT_CLOSED, 499
    if status == UsageStatus.UPSTREAM_ERROR and not decoder.produced():
        call.sell = call.buy = 0  # nothing was produced: nothing is billed
    await counters.settle(call, status=status, http=http, error=error)
    if client.gone.is_set():
        return
    tail = _stream_end(call, decoder, error)
    if client.rename is not None:
        tail = client.rename(tail)  # the usage chunk may be the upstream's, with its model id
    client.sent.append(tail)
    if status == UsageStatus.OK:
        await idempotency.store(call, 200, [*dialect.SSE_HEADERS], b"".join(client.sent))
    await send({"type": "http.response.body", "body": tail, "more_body": False})


def _stream_end(call: Call, decoder: StreamDecoder, error: ApiError | None) -> bytes:
    if error is not None:
        return dialect.render_error_event(error) + dialect.DONE
    if call.request.include_usage:
        return dialect.render_usage_chunk(call.request, decoder.usage_chunk, response_id=f"chatcmpl-{call.id}",
                                          created=int(call.started), input_tokens=call.input_tokens,
                                          output_tokens=call.output_tokens, cost=rub(call.sell)) + dialect.DONE
    return dialect.DONE
