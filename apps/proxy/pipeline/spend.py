"""Stages that hold money: estimate → reserve (before the upstream call) and settle + meter (after).

The maximum possible cost is reserved: counted input tokens plus ``max_tokens`` (or the model's
limit) × ``n``, at the sell price. Settle swaps the reservation for the actual cost (from the
upstream's usage or locally counted tokens) and appends the usage event, in one Lua step
(``redis_scripts.SETTLE``) that completes before the response ends. Amounts are micro-RUB.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from apps.billing.models import UsageStatus
from apps.providers.adapters.base import CanonicalRequest
from lib import tokenizer
from lib.money import MICRO, cost_from_units
from lib.resp import Redis

from ..counters import load_initial_counters
from ..exceptions import ApiError, bad_request, gateway_unavailable
from ..redis_scripts import (
    INIT,
    RESERVATIONS_KEY,
    RESERVE,
    SETTLE,
    STREAM_KEY,
    WINDOW_TTL,
    SpendKeys,
    rate_keys,
    reservation_member,
)
from ..snapshot import ModelRoute, SnapshotCache, TokenSnapshot
from ..windows import window_ids
from .context import Call, Reservation
from .refusals import limit_error
from .refusals import rub as rub  # re-exported: relay and info format money with it

logger = logging.getLogger("jetstream.proxy")

def estimate(call: Call) -> None:
    """Fill ``call.input_tokens_estimate`` and ``call.max_output_tokens`` (over all choices) for
    ``call.route`` (``estimate_for``). Raises ``ApiError`` 400 as ``estimate_for`` does."""
    call.input_tokens_estimate, call.max_output_tokens = estimate_for(call.request, call.route)


def estimate_for(request: CanonicalRequest, route: ModelRoute) -> tuple[int, int]:
    """(input tokens counted with the model's tokenizer, the output cap over all choices) of
    ``request`` on ``route``; embeddings have no output (0).

    Raises ``ApiError`` 400 ``max_tokens_too_large`` / ``context_length_exceeded``."""
    body = request.body
    # The model's own tokenizer, as for output counted locally (``price_usage``).
    encoding = tokenizer.encoding_for_model(route.upstream_model)
    if request.endpoint == "chat":
        input_tokens = tokenizer.count_chat_request(body, encoding=encoding)
    elif request.endpoint == "completion":
        input_tokens = tokenizer.count_prompt_input(body["prompt"], encoding=encoding)
    else:
        return tokenizer.count_embedding_input(body["input"], encoding=encoding), 0
    room = max(0, route.context_window - input_tokens)
    if request.max_tokens is not None:
        if request.max_tokens > route.max_output_tokens:
            param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
            raise bad_request(f"'{param}' is {request.max_tokens}, above this model's limit of {route.max_output_tokens}.",
                              param=param, code="max_tokens_too_large")
        max_out = request.max_tokens
    else:
        max_out = min(route.max_output_tokens, room)
    if input_tokens + (request.max_tokens or 0) > route.context_window or room == 0:
        raise bad_request(f"This request needs {input_tokens} input tokens and up to {request.max_tokens or 0} output tokens; "
                          f"the model's context window is {route.context_window}.", param="messages",
                          code="context_length_exceeded")
    return input_tokens, max_out * request.n


def price(route: ModelRoute, input_tokens: int, output_tokens: int, cached_tokens: int, coef_units: int, *,
          cache_write_tokens: int = 0, images: int = 0, requests: int = 0) -> int:
    """The cost in micro-RUB of a request at the route's price version and FX, times the coefficient
    (``coef_units``: 4-decimal fixed point, 1.25 → 12500), rounded up once (docs/billing.md, "How a
    request's price is computed"):

        units = (input − cached − cache_write) × input price + cached × cached price
                + cache_write × cache-write price + output × output price       (prices per 1M tokens)
                + (requests × per-request price + images × per-image price) × 10^6

    Token counts in tokens (``cached_tokens`` and ``cache_write_tokens`` are parts of
    ``input_tokens``); a route without a cache-write price charges cache writes at the input price."""
    assert route.fx_micro is not None, "police() lets only priced routes through"
    write_price = route.price_input if route.price_cache_write is None else route.price_cache_write
    units = ((input_tokens - cached_tokens - cache_write_tokens) * route.price_input + cached_tokens * route.price_cached
             + cache_write_tokens * write_price + output_tokens * route.price_output)
    if requests or images:
        units += (requests * route.price_per_request + images * route.price_per_image) * MICRO
    return cost_from_units(units, route.fx_micro, coef_units)


_IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})


def prompt_extras(request: CanonicalRequest) -> tuple[int, bool]:
    """(the number of images in a chat request's messages, whether it marks anything for prompt
    caching — a ``cache_control`` on a message, a content part or a tool). Other endpoints: (0, False).

    Images are content parts of type ``image_url`` (OpenAI; what the Anthropic dialect maps its
    ``image`` blocks to), ``image`` or ``input_image``; each is billed at the per-image price."""
    if request.endpoint != "chat":
        return 0, False
    images, cache_marked = 0, False
    for message in request.body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        cache_marked = cache_marked or "cache_control" in message
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    images += part.get("type") in _IMAGE_PARTS
                    cache_marked = cache_marked or "cache_control" in part
    tools = request.body.get("tools")
    if not cache_marked and isinstance(tools, list):
        cache_marked = any(isinstance(tool, dict) and "cache_control" in tool for tool in tools)
    return images, cache_marked


def max_cost(call: Call, route: ModelRoute, input_tokens: int, output_tokens: int) -> int:
    """The most a call can cost on ``route`` (micro-RUB, at the company's sell coefficient for that
    model): ``input_tokens`` of prompt (none of it cached; all of it written to the cache at the
    cache-write price when the request marks anything for caching and that price is higher),
    ``output_tokens`` of output, the call's images and the per-request price. What is reserved,
    what ``cheapest`` routing compares, and what a refusal's ``max_tokens_that_fit`` searches."""
    writes = input_tokens if (call.cache_marked and route.price_cache_write is not None
                              and route.price_cache_write > route.price_input) else 0
    return price(route, input_tokens, output_tokens, 0, call.token.sell_coef_for(route.name), cache_write_tokens=writes,
                 images=call.images, requests=1)


def needs_text(usage) -> bool:
    """Whether ``price_usage`` needs the generated text for ``usage`` (an adapter's ``Usage`` or
    None): when there is none, or it reports no output (which may be implausible)."""
    return usage is None or not usage.output_tokens


def count_usage(call: Call, usage, fallback_text: str | None) -> None:
    """Fill the call's token counts from upstream ``usage``, counting locally what it lacks or what is
    implausible (then ``counted_locally`` flags the record), with the model's own tokenizer for input
    and output alike (the estimate's input count):

    - no usage: input = the estimate, output = ``fallback_text`` counted;
    - output 0 while text was generated: output counted; input 0 for a non-empty prompt: the estimate
      (a cached count above the input is cut to it)."""
    encoding = tokenizer.encoding_for_model(call.route.upstream_model)
    if usage is None:
        call.counted_locally = True
        call.input_tokens = call.input_tokens_estimate
        call.output_tokens = tokenizer.count_text(fallback_text, encoding=encoding) if fallback_text else 0
        call.cached_tokens = call.cache_write_tokens = 0
        return
    call.input_tokens, call.output_tokens, call.cached_tokens = usage.input_tokens, usage.output_tokens, usage.cached_tokens
    call.cache_write_tokens = usage.cache_write_tokens
    if not call.output_tokens and fallback_text:
        call.output_tokens = tokenizer.count_text(fallback_text, encoding=encoding)
        call.counted_locally = True
    if not call.input_tokens and call.input_tokens_estimate:
        call.input_tokens = call.input_tokens_estimate
        call.counted_locally = True
    call.cached_tokens = min(call.cached_tokens, call.input_tokens)
    call.cache_write_tokens = min(call.cache_write_tokens, call.input_tokens - call.cached_tokens)
    if call.counted_locally:
        logger.warning("request %s: implausible upstream usage %s; counted locally", call.id, usage)


def price_usage(call: Call, usage, fallback_text: str | None) -> None:
    """Fill the call's token counts (``count_usage``: upstream ``usage``, an adapter's ``Usage``,
    or ``fallback_text`` counted locally) and costs.

    The company is never charged more than was reserved (the request's maximum possible cost,
    checked against every limit): so a wallet can never be overdrawn, even if an upstream
    overshoots max_tokens or counts input differently from us. The supplier is still owed the
    true cost. A local node's buy cost is its own rate (``NodeRoute.cost``), not the model's price."""
    count_usage(call, usage, fallback_text)
    route, reserved = call.route, call.reservation.amount
    # The per-request and per-image prices are owed for a request the upstream billed at all (it
    # reported or was presumed to bill some tokens); nothing delivered and nothing billed costs nothing.
    billed = 1 if call.input_tokens or call.output_tokens else 0
    extras = {"cache_write_tokens": call.cache_write_tokens, "images": call.images * billed, "requests": billed}
    sell = price(route, call.input_tokens, call.output_tokens, call.cached_tokens, call.token.sell_coef_for(route.name),
                 **extras)
    call.sell_capped, call.sell_uncapped = sell > reserved, 0
    if call.sell_capped:
        logger.warning("request %s cost %s micro-RUB, above its reservation of %s; charging the reservation",
                       call.id, sell, reserved)
        call.sell_uncapped, sell = sell, reserved
    call.sell = sell
    # What the platform owes a supplier: when a supplier's key served the request (not the mock);
    # a local node's hardware cost at its own rate (owed to its supplier, or the platform's own).
    if call.node is not None:
        call.buy = call.node.cost(call.input_tokens, call.output_tokens)
    else:
        call.buy = price(route, call.input_tokens, call.output_tokens, call.cached_tokens,
                         call.key.buy_coef_units, **extras) if call.key is not None else 0


def _opt(value: int | None) -> str | int:
    return "" if value is None else value


def _expiry(unix_seconds: float) -> str:
    # A reservation's score in js:reservations, to the millisecond: whole seconds would let a short
    # lifetime's reservation expire up to a second early, before its keeper's next round.
    return f"{unix_seconds:.3f}"


class SpendCounters:
    """The Redis side of spend and rate limits for one worker: reserve, settle, record, seed.

    ``reservation_ttl`` (seconds) is how long a reservation outlives the last sign of life of its
    call before the sweeper releases it as a crashed call's. A live call keeps its reservation
    alive: every ``reservation_ttl / 3`` seconds this worker pushes the expiry of all its unsettled
    reservations ``reservation_ttl`` seconds ahead, in one ``ZADD``. Why not a lifetime long enough
    for the longest request: a stream has no total time limit (a healthy answer may run for an
    hour), so no fixed lifetime could cover it, and a long one would leave a crashed worker's
    reservations blocking limits for that long."""

    def __init__(self, redis: Redis, snapshots: SnapshotCache, *, reservation_ttl: float) -> None:
        self.redis = redis
        self._snapshots = snapshots
        self._reservation_ttl = reservation_ttl
        self._reserve = redis.register_script(RESERVE)
        self._settle = redis.register_script(SETTLE)
        self._init = redis.register_script(INIT)
        self._seeding: dict[tuple[str, ...], asyncio.Future[None]] = {}
        # Unsettled reservations of this worker → the task of the call that holds each: a call that
        # ends without settling (a bug, a crash path) stops being kept alive and the sweeper takes it.
        self._live: dict[bytes, asyncio.Task] = {}
        self._keeper: asyncio.Task | None = None

    def keys_for(self, token: TokenSnapshot, now: float) -> SpendKeys:
        """The token's counter keys in the calendar windows around ``now`` (company time zone)."""
        week, month, _, _ = window_ids(token.time_zone, now)
        return SpendKeys.for_token(token_id=token.id, company_id=token.company_id, department_id=token.department_id,
                                   week=week, month=month)

    async def reserve(self, call: Call) -> Reservation:
        """Check and take the call's maximum cost against balance, limits and budget, and one request
        plus its token estimate against RPM/TPM, all at once. Raises ``refusals.LimitRefusal`` naming the
        limit with its figures — 402/413 (403: RPM 0) when the request can never fit, 429 with
        ``Retry-After`` when it fits later (``refusals.limit_error``) — and 503 if counters cannot be seeded."""
        token = call.token
        amount = max_cost(call, call.route, call.input_tokens_estimate, call.max_output_tokens)
        for fallback in call.fallbacks:  # whichever model answers, its cost fits what is held (at its own coefficient)
            amount = max(amount, max_cost(call, fallback.route, fallback.input_tokens, fallback.max_output_tokens))
        now = time.time()
        keys = self.keys_for(token, now)
        rpm_cur, rpm_prev, tpm_cur, tpm_prev, frac = rate_keys(token.id, now)
        failure = call.usage_event(status=UsageStatus.FAILED, http=500, error=ApiError(500, "", type="api_error", code="gateway_lost"))
        member = reservation_member(request_id=call.id, keys=keys, amount=amount, failure_event=failure)
        tpm_estimate = call.input_tokens_estimate + call.max_output_tokens
        args = [amount, _opt(token.limit_total), _opt(token.limit_weekly), _opt(token.limit_monthly),
                _opt(token.department_budget), _opt(token.rpm), _opt(token.tpm), tpm_estimate, frac,
                _expiry(now + self._reservation_ttl), member, WINDOW_TTL, 1 if keys.has_dept else 0]
        redis_keys = [*keys.as_list(), rpm_cur, rpm_prev, tpm_cur, tpm_prev, RESERVATIONS_KEY, keys.held, keys.dept_held]
        for _attempt in range(3):
            result = await self.redis.evalsha(self._reserve, redis_keys, args)
            code = result[0]
            if code == 0:
                self._keep_alive(member)
                return Reservation(amount, keys, tpm_estimate, tpm_cur, member, int(result[1]), int(result[2]))
            if code == 1:
                await self.seed(token, keys)
                continue
            raise limit_error([r.decode() if isinstance(r, bytes) else str(r) for r in result[1:]], call, amount)
        raise gateway_unavailable("The gateway could not initialise spend counters.")

    def _keep_alive(self, member: bytes) -> None:
        owner = asyncio.current_task()
        if owner is None:
            return
        self._live[member] = owner
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(self._keep_reservations())

    async def _keep_reservations(self) -> None:
        """While this worker has unsettled reservations: every third of their lifetime, push them all
        ``reservation_ttl`` seconds ahead (a Redis failure is logged; the next round retries)."""
        while self._live:
            await asyncio.sleep(self._reservation_ttl / 3)
            for member, owner in list(self._live.items()):
                if owner.done():
                    del self._live[member]
            try:
                await self.extend_reservations(list(self._live))
            except Exception:
                logger.exception("could not extend %d live reservations", len(self._live))

    async def extend_reservations(self, members: list[bytes]) -> None:
        """Set the expiry of these ``js:reservations`` members to ``reservation_ttl`` seconds from now.
        Only members still in the set are touched (``XX``: one settled or swept meanwhile stays gone),
        and an expiry never moves back (``GT``)."""
        expiry = _expiry(time.time() + self._reservation_ttl)
        for start in range(0, len(members), 500):  # bounded commands: members carry their failure event
            args: list[str | bytes] = []
            for member in members[start:start + 500]:
                args += [expiry, member]
            await self.redis.execute("ZADD", RESERVATIONS_KEY, "XX", "GT", *args)

    async def seed(self, token: TokenSnapshot, keys: SpendKeys) -> None:
        """Create the token's and company's counters from PostgreSQL (a first sight, or Redis lost them).

        Concurrent calls for the same counters share one load: a cold worker hit by many requests
        of one token would otherwise queue one database load per request in the loader thread."""
        flight = tuple(keys.as_list())
        pending = self._seeding.get(flight)
        if pending is None:
            pending = asyncio.ensure_future(self._seed(token, keys))
            self._seeding[flight] = pending
            pending.add_done_callback(lambda _done: self._seeding.pop(flight, None))
        await asyncio.shield(pending)

    async def _seed(self, token: TokenSnapshot, keys: SpendKeys) -> None:
        values = await self._snapshots.run_in_loader(load_initial_counters, token.id, token.company_id, token.department_id,
                                                     token.time_zone.key)
        await self.redis.evalsha(self._init, keys.as_list(),
                                 [values.credits, values.debits, values.limit, values.total, values.week, values.month,
                                  values.department, 1 if keys.has_dept else 0, WINDOW_TTL])

    async def settle(self, call: Call, *, status: str, http: int, error: ApiError | None = None) -> None:
        """Swap the reservation for ``call.sell`` and append the usage event, atomically; marks the call settled."""
        reservation = call.reservation
        self._live.pop(reservation.member, None)
        tpm_delta = (call.input_tokens + call.output_tokens) - reservation.tpm_estimate if call.token.tpm else 0
        event = call.usage_event(status=status, http=http, error=error)
        await self.redis.evalsha(self._settle, [*reservation.keys.as_list(), reservation.tpm_key, RESERVATIONS_KEY, STREAM_KEY,
                                                reservation.keys.held, reservation.keys.dept_held],
                                 [reservation.amount, call.sell, tpm_delta, reservation.member, event,
                                  1 if reservation.keys.has_dept else 0])
        call.settled = True

    async def record(self, call: Call, *, status: str, http: int, error: ApiError | None) -> None:
        """Append the usage event of a call that moved no money (refused, invalid, replayed)."""
        await self.redis.execute("XADD", STREAM_KEY, "*", "e", call.usage_event(status=status, http=http, error=error))


def rate_headers(call: Call, now: float | None = None) -> list[tuple[bytes, bytes]]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for a call that passed its rate
    limits (only the kinds the token has). The reset is OpenAI's "time until the limit is back to its
    initial state", in whole seconds ("95s"): the sliding window (this minute's bucket, then the
    previous minute's, weighted down as the minute passes) forgets this call at the end of the next
    minute. ``now`` is Unix seconds (default: the clock)."""
    token, reservation = call.token, call.reservation
    if not (token.rpm or token.tpm):
        return []
    now = time.time() if now is None else now
    reset = f"{math.ceil(120 - now % 60)}s".encode()
    headers = []
    if token.rpm:
        headers += [(b"x-ratelimit-limit-requests", str(token.rpm).encode()),
                    (b"x-ratelimit-remaining-requests", str(max(0, reservation.rpm_left)).encode()),
                    (b"x-ratelimit-reset-requests", reset)]
    if token.tpm:
        headers += [(b"x-ratelimit-limit-tokens", str(token.tpm).encode()),
                    (b"x-ratelimit-remaining-tokens", str(max(0, reservation.tpm_left)).encode()),
                    (b"x-ratelimit-reset-tokens", reset)]
    return headers
