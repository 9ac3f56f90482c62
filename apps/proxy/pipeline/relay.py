"""The relay stage: the upstream's answer to the client, then settle + meter.

The adapter turns the upstream's bytes into canonical form (``parse_body`` / its stream decoder);
the call's inbound dialect (``call.dialect``: ``render_body``, a ``StreamRenderer`` per stream)
renders them for the client.

A client that disconnects mid-stream is still billed for what was generated: the relay keeps
reading the upstream for the usage, but only for ``CLIENT_GONE_DRAIN_SECONDS`` — then it closes
the upstream connection (so a departed client cannot keep an upstream generating for minutes) and
bills the text received so far, counted locally. A client that leaves before the first bytes
closes the upstream at once and pays for the prompt. A stream silent for
``UPSTREAM_IDLE_TIMEOUT_SECONDS`` ends with a 504 ``upstream_timeout`` error event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from apps.billing.models import UsageStatus
from apps.providers.adapters.base import StreamDecoder, UpstreamFailure, timed_out

from ..dialects.base import StreamRenderer
from ..exceptions import ApiError
from .context import Call
from .idempotency import IdempotencyStore
from .responses import JSON, send_error
from .spend import SpendCounters, needs_text, price_usage, rub
from .upstream import Opened, UpstreamClient, provider_secrets

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
    body = parsed.body
    guard = call.moderation.guard if call.moderation is not None else None
    if guard is not None:  # placeholders restored, the answer checked (pipeline.moderate)
        try:
            body = await guard.answer(body)
        except ApiError as error:  # a response-side block: the answer was generated, so it is billed
            await counters.settle(call, status=UsageStatus.REJECTED, http=error.status, error=error)
            await send_error(send, call, error)
            return
    await counters.settle(call, status=UsageStatus.OK, http=200)
    payload = call.dialect.render_body(call, body)
    headers = [JSON, (b"content-length", str(len(payload)).encode()), (b"x-jetstream-cost", rub(call.sell).encode()),
               *call.headers]
    await idempotency.store(call, 200, headers, payload)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


_CUT = "the client left and the drain time ran out"  # the cancel message that ends a drained stream


class _Client:
    """The streaming client's side: the response start, writes (one at a time), disconnect watching,
    keep-alive comments during silences, and what was sent (for idempotent replays).

    The 200 response starts with the first write or keep-alive; until then a failure can still be
    answered with its own status. Keep-alives begin once ``arm`` is called (an upstream accepted the
    call) and go out after ``keepalive`` seconds of silence (0 = never); they are not kept in ``sent``.
    ``renderer`` turns canonical events into the dialect's writes and gives the keep-alive's bytes."""

    def __init__(self, call: Call, send, receive, *, keepalive: float, renderer: StreamRenderer) -> None:
        self.call = call
        self.send = send
        self.renderer = renderer
        self.gone = asyncio.Event()
        self.started = False
        self.sent: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self._last = self._loop.time()  # of the last write: the silence a load balancer measures
        self._keepalive = keepalive
        self._timer: asyncio.TimerHandle | None = None
        self._pinging: asyncio.Task | None = None
        self._closed = False
        self.on_gone: Callable[[], None] | None = None  # called once when the client leaves
        self.watcher = self._loop.create_task(self._watch(receive))

    async def _watch(self, receive) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # noqa: S110 - a server that cannot receive any more has lost the client too
            pass
        self.gone.set()
        if self.on_gone is not None:
            self.on_gone()

    def arm(self) -> None:
        """Start the keep-alive comments (``UpstreamClient.open``'s ``on_accepted``)."""
        if self._keepalive > 0 and self._timer is None and self._pinging is None and not self._closed:
            self._timer = self._loop.call_at(self._last + self._keepalive, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._closed or self.gone.is_set():
            return
        due = self._last + self._keepalive
        if due > self._loop.time():  # something was written meanwhile
            self._timer = self._loop.call_at(due, self._tick)
        else:
            self._pinging = self._loop.create_task(self._ping())

    async def _ping(self) -> None:
        await self._emit(self.renderer.keepalive)
        self._pinging = None
        self.arm()

    async def _emit(self, chunk: bytes, *, more: bool = True) -> None:
        # One writer at a time: a keep-alive and the relay's write must not interleave their messages.
        async with self._lock:
            if self.gone.is_set():
                return
            try:
                if not self.started:
                    self.started = True
                    await self.send({"type": "http.response.start", "status": 200,
                                     "headers": [*self.call.dialect.sse_headers, *self.call.headers]})
                await self.send({"type": "http.response.body", "body": chunk, "more_body": more})
            except OSError:  # the client is gone (servers that raise rather than drop the write)
                self.gone.set()
            self._last = self._loop.time()

    async def write(self, events: list[bytes]) -> None:
        """Render ``events`` (canonical SSE lines) as one body write and keep it for an idempotent replay;
        nothing once the client is gone (an ``OSError`` on send marks it gone)."""
        if not events or self.gone.is_set():
            return
        chunk = self.renderer.events(events)
        if not chunk:
            return
        self.sent.append(chunk)
        await self._emit(chunk)

    async def end(self, tail: bytes) -> None:
        """The last body write (the response starts with it if nothing was written yet)."""
        await self._emit(tail, more=False)

    def close(self) -> None:
        """Stop watching for the client's disconnect and sending keep-alives."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._pinging is not None:
            self._pinging.cancel()
        self.watcher.cancel()


async def _pump(call: Call, opened: Opened, decoder: StreamDecoder, client: _Client, idle: float) -> None:
    """Upstream reads → decoder → client writes, one write per read, until the upstream is done.
    Raises ``TimeoutError`` when the upstream sends nothing for ``idle`` seconds."""
    data: bytes | None = opened.first
    assert opened.chunks is not None, "UpstreamClient.open returns a stream's chunks"
    # The moderation stage's answer guard (restores placeholders, checks the answer as it flows; raises
    # a moderation_blocked ApiError to stop the stream), or None.
    guard = call.moderation.guard if call.moderation is not None else None
    while data is not None:
        events = decoder.feed(data) if data else []
        if events and call.ttft_ms is None:
            call.ttft_ms = int((time.time() - call.started) * 1000)
        await client.write(events if guard is None else await guard.stream(events))
        if decoder.done:
            break
        async with asyncio.timeout(idle):
            data = await anext(opened.chunks, None)
    else:
        events = decoder.finish()
        await client.write(events if guard is None else await guard.stream(events))
    if guard is not None:
        await client.write(await guard.end())


class _StreamRun:
    """One stream's upstream side, run as a task the client's departure can bound: open (up to the
    first bytes, with failover), then pump. Keeps what it got so far for billing."""

    def __init__(self, call: Call, upstream: UpstreamClient, client: _Client) -> None:
        self.call = call
        self.upstream = upstream
        self.client = client
        self.opened: Opened | None = None
        self.decoder: StreamDecoder | None = None
        self.cut = False  # the client left and the drain time ran out: the upstream was closed

    def _accepted(self) -> None:
        # An upstream answered, before any event was rendered: render for the model that answered (a fallback, maybe).
        self.client.renderer = self.call.dialect.stream_renderer(self.call)
        self.client.arm()

    async def _work(self) -> None:
        self.opened = await self.upstream.open(self.call, on_accepted=self._accepted)
        self.decoder = self.opened.adapter.stream_decoder(self.call.request)
        await _pump(self.call, self.opened, self.decoder, self.client, self.upstream.timeouts.idle)

    async def run(self) -> BaseException | None:
        """Run to the end in the request's own task; what it raised (None on success or when cut). A
        client that leaves gets ``client_gone_drain`` seconds more reading for the usage once the
        upstream produced something, none before: then the upstream connection is closed (the
        request's task is cancelled with ``_CUT`` and the cancellation absorbed here)."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        finished = False
        cut_timer: asyncio.TimerHandle | None = None

        def cut() -> None:
            if not finished:
                self.cut = True
                task.cancel(_CUT)

        def on_gone() -> None:
            nonlocal cut_timer
            produced = self.decoder is not None and self.decoder.produced()
            cut_timer = loop.call_later(self.upstream.timeouts.client_gone_drain if produced else 0, cut)

        self.client.on_gone = on_gone
        if self.client.gone.is_set():
            on_gone()
        try:
            await self._work()
        except asyncio.CancelledError:
            if not self.cut:
                raise  # the request itself is cancelled (server shutdown)
            task.uncancel()
        except Exception as exc:
            return exc
        finally:
            finished = True
            self.client.on_gone = None
            if cut_timer is not None:
                cut_timer.cancel()
            if self.opened is not None:
                self.opened.response.release()
        return None


async def relay_stream(call: Call, upstream: UpstreamClient, receive, send, *, counters: SpendCounters,
                       idempotency: IdempotencyStore) -> None:
    """A streamed answer: opened (failover before the first bytes), relayed as it arrives, priced from
    the usage chunk (or the text counted locally), settled, and ended with the usage chunk (if asked
    for) and ``[DONE]``. A failure before the client's response started is answered with its status
    (504 ``upstream_timeout`` for a timeout); after it, as an error event in the stream."""
    client = _Client(call, send, receive, keepalive=upstream.timeouts.keepalive, renderer=call.dialect.stream_renderer(call))
    stream = _StreamRun(call, upstream, client)
    try:
        failure = await stream.run()
    finally:
        client.close()
    status, http, error = _outcome(call, stream, failure)
    decoder = stream.decoder
    if error is None and stream.opened is not None and decoder is not None and decoder.error is not None:
        error = _error_event(call, stream.opened, decoder.error)
        status, http = UsageStatus.UPSTREAM_ERROR, error.status
    if stream.opened is None and error is not None:
        call.sell = call.buy = 0  # no upstream answered: nothing is billed
    else:
        usage = decoder.usage() if decoder is not None else None
        text = decoder.generated_text() if decoder is not None and needs_text(usage) else ""
        price_usage(call, usage, text)
        if status == UsageStatus.UPSTREAM_ERROR and usage is None and not text:
            call.sell = call.buy = 0  # the upstream failed, delivered nothing and billed nothing it told us of
    if client.gone.is_set() and status == UsageStatus.OK:
        status, http = UsageStatus.CLIENT_CLOSED, 499
    await counters.settle(call, status=status, http=http, error=error)
    if client.gone.is_set():
        return
    if error is not None and not client.started:
        await send_error(send, call, error)
        return
    assert error is not None or decoder is not None, "a stream without a decoder ended in an error"
    tail = client.renderer.end(decoder.usage_chunk if decoder is not None else None, error)
    client.sent.append(tail)
    if status == UsageStatus.OK:
        await idempotency.store(call, 200, [*call.dialect.sse_headers], b"".join(client.sent))
    await client.end(tail)


def _error_event(call: Call, opened: Opened, payload: bytes) -> ApiError:
    """The gateway's own error for an error event in the upstream's stream (its text scrubbed, its
    type and code mapped by the adapter); the key rests as after the same failure in a status.

    An error that is the stream's first event was already failed over in ``UpstreamClient.open``;
    one after content ends the stream here: a client that got nothing yet receives the error as its
    answer's status, one that got something receives the error event, then ``[DONE]``. Only what was
    generated is billed."""
    failure = opened.adapter.in_band_error(payload, provider_secrets(call.route))
    if failure.cooldown and call.key is not None:
        call.key.cooldown_until = max(call.key.cooldown_until, time.monotonic() + failure.cooldown)
    logger.warning("upstream stream for %s ended with an error event (%s)", call.id, failure.code)
    return ApiError.from_upstream(failure)


def _outcome(call: Call, stream: _StreamRun, failure: BaseException | None) -> tuple[str, int, ApiError | None]:
    """(usage status, HTTP status for the record, the client's error) of a finished stream."""
    if failure is None:
        return UsageStatus.OK, 200, None
    if isinstance(failure, ApiError) and failure.type == "moderation_blocked":  # a response-side block (billed)
        return UsageStatus.REJECTED, failure.status, failure
    if isinstance(failure, ApiError):  # every key failed before the first bytes
        return UsageStatus.UPSTREAM_ERROR, failure.status, failure
    if stream.opened is None:
        raise failure  # not the upstream's doing: a gateway bug, answered and recorded as one
    if isinstance(failure, TimeoutError):
        error = ApiError.from_upstream(timed_out("idle"))
        logger.warning("upstream stream for %s went silent for %s s", call.id, stream.upstream.timeouts.idle)
    else:  # a broken upstream stream (resets, protocol errors)
        error = ApiError(502, "The upstream stream broke off.", type="api_error", code="upstream_broken")
        logger.warning("upstream stream for %s broke: %s", call.id, type(failure).__name__)
    return UsageStatus.UPSTREAM_ERROR, error.status, error

