"""The provider-adapter seam: how the gateway speaks to one kind of upstream.

The gateway works on one canonical form, OpenAI's wire format (request bodies of
``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``; ``chat.completion`` responses;
``chat.completion.chunk`` SSE events — https://platform.openai.com/docs/api-reference/chat). What
the *client* speaks (OpenAI chat today, Anthropic Messages and OpenAI Responses next) is the proxy's
inbound dialect, parsed into this form and rendered back from it; what the *upstream* speaks is
an adapter's business:

    CanonicalRequest ──build_request──► UpstreamRequest (url, headers, body) ──send──► UpstreamResponse
    response body    ──parse_body────► Parsed (canonical body, Usage, generated text)
    stream bytes     ──StreamDecoder─► canonical SSE events per network read + final Usage
    status + body    ──map_error─────► UpstreamFailure (what to answer, whether to fail over)
    a 2xx body or stream event that is an error ──body_failure / in_band_error──► UpstreamFailure

Nothing an upstream writes about an error reaches a client, a usage record or a log as it came:
messages go through ``lib.scrub.scrub`` with every supplier key of the provider (``secrets``), and
``type``/``code`` are mapped into the gateway's own closed vocabulary (``rejected`` and
``REQUEST_ERROR_CODES`` here; the other failures have fixed codes).

Authentication is the adapter's ``auth``: a static Bearer key today (``Auth``); a provider that
exchanges a key for a short-lived token (GigaChat's OAuth, Yandex Cloud's IAM token) subclasses
``CachedTokenAuth``, which caches one token per supplier key and lets concurrent requests share
one exchange.

An adapter is stateless apart from such caches: one instance per kind serves every request (see
the registry in ``apps/providers/adapters/__init__.py``).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, cast

import aiohttp

logger = logging.getLogger("jetstream.providers")

# Seconds a failing key rests before it is tried first again.
COOLDOWN_UNREACHABLE = 5.0
COOLDOWN_AUTH_FAILED = 300.0
COOLDOWN_RATE_LIMITED = 10.0
COOLDOWN_SERVER_ERROR = 5.0
# A key whose upstream went silent rests longer: the next requests would most likely hang on it too.
COOLDOWN_TIMED_OUT = 30.0


@dataclass(slots=True, frozen=True)
class Usage:
    """Token counts an upstream reported for one request (tokens)."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int  # of input_tokens, read from the provider's prompt cache
    # Of input_tokens, written to the provider's prompt cache (Anthropic's cache_creation_input_tokens),
    # billed at the price version's cache-write price where it has one.
    cache_write_tokens: int = 0


@dataclass(slots=True)
class CanonicalRequest:
    """One inference request in the gateway's canonical (OpenAI wire) form.

    ``endpoint`` is "chat", "completion" or "embedding"; ``body`` the OpenAI-shaped body with the
    public ``model`` name; ``max_tokens`` as requested (None = not given); ``n`` the number of
    choices that may be generated (``best_of`` included). ``output_cap`` (tokens per choice) is the
    most output the gateway reserved money for on the model being called (set by the upstream stage
    before each model is tried): an adapter whose upstream requires a cap, or whose default could
    exceed it, sends it when the client gave none.
    """

    endpoint: str
    model: str
    body: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    n: int = 1
    output_cap: int | None = None


@dataclass(slots=True, frozen=True)
class Target:
    """Where a request goes: the provider's base URL (no trailing slash), the upstream's own model
    id, and the provider's ``options`` (admin-entered JSON)."""

    base_url: str
    upstream_model: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Credential:
    """One supplier key as an adapter sees it: its id (the cache key for exchanged tokens) and secret."""

    key_id: int
    secret: str = field(repr=False)  # never in a log line or a traceback's repr


@dataclass(slots=True)
class UpstreamRequest:
    """A request ready to send: absolute URL, headers (authentication included) and body bytes."""

    url: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Parsed:
    """A non-streamed upstream answer: the body to relay in canonical form, the usage it reported
    (None when it sent none), and the generated text (for local counting; only when usage is None)."""

    body: bytes
    usage: Usage | None
    text: str | None = None


# The codes an upstream's refusal of the request itself (a 4xx) may keep: OpenAI's codes that tell
# a client what to fix in its request (https://platform.openai.com/docs/guides/error-codes). Any
# other upstream code becomes ``upstream_rejected``; an upstream's ``type`` is never kept.
REQUEST_ERROR_CODES = frozenset({
    "context_length_exceeded", "invalid_value", "invalid_type", "invalid_request", "model_not_found",
    "unsupported_parameter", "unsupported_value", "missing_required_parameter", "string_above_max_length",
    "string_below_min_length", "array_above_max_length", "array_below_min_length", "empty_array",
    "integer_above_max_value", "integer_below_min_value", "decimal_above_max_value", "decimal_below_min_value",
    "invalid_image_url", "invalid_image_format", "image_parse_error", "invalid_prompt", "content_policy_violation",
    "content_filter",
})


class UpstreamFailure(Exception):
    """An upstream answer or connection the client cannot be given as is.

    ``status`` is the gateway's HTTP status for the client, ``type``/``code`` the gateway's own error
    vocabulary (never an upstream's: see ``rejected``), ``message`` safe to show (scrubbed: no key,
    URL, host or address). ``failover`` says whether the next key may be tried (the failure is about
    this key or this moment, not the request); ``cooldown`` how many seconds this key should rest
    (None = not at all).

    What the failure means for the supplier key beyond this request (the balancer,
    ``apps/proxy/health.py``, shares it with every proxy process): ``disable`` — the
    provider refused the key itself (401/403): it is set ``invalid`` until a person re-enables it;
    ``park`` — the key's account is out of quota or money (402, ``insufficient_quota``): set
    ``exhausted`` until a person re-enables it. ``detail`` is what the provider said, scrubbed
    (``lib.scrub``), for the key's status reason and last error in the admin ("" = nothing useful).
    """

    def __init__(self, status: int, message: str, *, type: str = "api_error", code: str = "upstream_error",  # noqa: A002
                 failover: bool = False, cooldown: float | None = None, disable: bool = False, park: bool = False,
                 detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.failover = failover
        self.cooldown = cooldown
        self.disable = disable
        self.park = park
        self.detail = detail


def retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds an upstream asks to wait before the next request, or None when it says nothing usable.

    Reads ``retry-after-ms`` (milliseconds, a number; OpenAI and Azure send it) first, then
    ``Retry-After`` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3,
    https://www.rfc-editor.org/rfc/rfc9110#field.retry-after); ``now`` is Unix seconds (default:
    the clock). A negative, non-finite or unparseable value is ignored; a date in the past is 0.
    ``headers`` must be case-insensitive (aiohttp's are) or use lower-case names.
    """
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis)
        except ValueError:
            value = -1.0
        if math.isfinite(value) and value >= 0:
            return value / 1000
    raw = (headers.get("retry-after") or "").strip()
    if not raw:
        return None
    if raw.isdigit():
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110: an HTTP-date is always GMT
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def unreachable() -> UpstreamFailure:
    """A connection error or a timeout before the answer's headers: try the next key."""
    return UpstreamFailure(502, "The upstream provider could not be reached.", code="upstream_unreachable",
                           failover=True, cooldown=COOLDOWN_UNREACHABLE)


def timed_out(limit: str) -> UpstreamFailure:
    """The upstream did not answer within one of the gateway's time limits: 504 ``upstream_timeout``.

    ``limit`` names the limit for the message ("connect", "first byte", "total", "idle"). Before the
    first byte reaches the client the next key may be tried (``failover``); this key rests
    ``COOLDOWN_TIMED_OUT`` seconds."""
    return UpstreamFailure(504, f"The upstream provider did not answer in time ({limit} timeout).", code="upstream_timeout",
                           failover=True, cooldown=COOLDOWN_TIMED_OUT)


def broken() -> UpstreamFailure:
    """The connection broke while the answer's body was read: try the next key."""
    return UpstreamFailure(502, "The upstream connection broke.", code="upstream_broken",
                           failover=True, cooldown=COOLDOWN_UNREACHABLE)


def rejected(status: int, message: str | None, *, code: str | None) -> UpstreamFailure:
    """The upstream refused the request itself (a 4xx, the same on every key): no failover, type
    ``invalid_request_error``, ``code`` kept only if it is in ``REQUEST_ERROR_CODES`` (else
    ``upstream_rejected``). ``message`` must already be scrubbed; None gets a generic one."""
    return UpstreamFailure(status, message or "The upstream provider rejected the request.", type="invalid_request_error",
                           code=code if code in REQUEST_ERROR_CODES else "upstream_rejected")


def malformed() -> UpstreamFailure:
    """The upstream answered 2xx with a body that is not its format."""
    return UpstreamFailure(502, "The upstream provider returned a malformed response.", code="upstream_malformed")


class UpstreamResponse(Protocol):
    """A started upstream answer, over the network or in-process."""

    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes:
        """The whole body. Raises ``UpstreamFailure`` (``broken``) if the connection breaks."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, one item per network read."""
        ...

    def release(self) -> None:
        """Give the connection back (or close it); safe to call twice."""
        ...


class HttpResponse:
    """An aiohttp response behind the ``UpstreamResponse`` protocol."""

    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = cast("Mapping[str, str]", response.headers)

    async def read(self) -> bytes:
        """See ``UpstreamResponse.read``; the connection is released before ``broken()`` is raised."""
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._response.release()
            raise broken() from exc

    def chunks(self) -> AsyncIterator[bytes]:
        """See ``UpstreamResponse.chunks``."""
        return self._response.content.iter_any()

    def release(self) -> None:
        """See ``UpstreamResponse.release``."""
        self._response.release()


class StreamDecoder(Protocol):
    """Upstream stream bytes in, canonical SSE events out (``b"data: {...}"`` lines, no separator).

    The relay feeds every network read and sends what comes back as one write, so one upstream read
    costs one client write. The usage-only chunk is withheld (the relay renders the stream's end with
    the gateway's cost in it); ``usage_chunk`` keeps it as a canonical ``chat.completion.chunk`` dict.
    """

    done: bool  # the upstream said its stream is complete (or ended it with an error event)
    usage_chunk: dict[str, Any] | None
    # The payload of an error event the upstream sent in the stream (raw, unscrubbed: for
    # ``Adapter.in_band_error`` only, never relayed); ``done`` is set with it and nothing follows.
    error: bytes | None

    def feed(self, data: bytes) -> list[bytes]:
        """Canonical events completed by ``data``."""
        ...

    def finish(self) -> list[bytes]:
        """Canonical events left when the upstream closed the stream."""
        ...

    def usage(self) -> Usage | None:
        """The usage the upstream reported, or None."""
        ...

    def generated_text(self) -> str:
        """Everything generated so far (for local counting when the upstream sent no usage)."""
        ...

    def produced(self) -> bool:
        """Whether any canonical event came out (a stream that broke before one is not billed)."""
        ...


class Auth:
    """Authentication headers for one supplier key: ``Authorization: Bearer <secret>``."""

    async def headers(self, credential: Credential, http: aiohttp.ClientSession | None) -> dict[str, str]:
        """Headers that authenticate ``credential``. Raises ``UpstreamFailure`` if it cannot."""
        return {"Authorization": f"Bearer {credential.secret}"}



class CachedTokenAuth(Auth):
    """A key exchanged for a short-lived access token (OAuth client credentials, an IAM token),
    cached per supplier key until shortly before it expires; concurrent requests share one exchange.

    Subclasses implement ``exchange``; ``header_name``/``scheme`` say how the token is sent.
    """

    header_name: ClassVar[str] = "Authorization"
    scheme: ClassVar[str] = "Bearer"
    refresh_margin: ClassVar[float] = 60.0  # seconds before expiry a token is renewed
    exchange_timeout: float = 20.0  # seconds one exchange may take, connect to last byte

    def __init__(self) -> None:
        self._tokens: dict[int, tuple[str, float]] = {}
        self._running: dict[int, asyncio.Task[tuple[str, float]]] = {}

    async def exchange(self, credential: Credential, http: aiohttp.ClientSession | None) -> tuple[str, float]:
        """(access token, its expiry as Unix seconds) for ``credential``. Raises ``UpstreamFailure``."""
        raise NotImplementedError

    async def headers(self, credential: Credential, http: aiohttp.ClientSession | None) -> dict[str, str]:
        """See ``Auth.headers``: the cached token, exchanged anew (once for all concurrent callers) when
        missing or within ``refresh_margin`` seconds of its expiry."""
        cached = self._tokens.get(credential.key_id)
        if cached is None or cached[1] - self.refresh_margin <= time.time():
            cached = await self._shared_exchange(credential, http)
        return {self.header_name: f"{self.scheme} {cached[0]}"}

    async def _shared_exchange(self, credential: Credential, http: aiohttp.ClientSession | None) -> tuple[str, float]:
        # The exchange is a task of its own that callers only wait for (shielded): a caller's time
        # limit ends its wait, not the exchange — run in the first caller's task, its cancellation
        # would reach every request waiting for the same token — and the token is cached for the
        # others when it comes.
        task = self._running.get(credential.key_id)
        if task is None:
            task = asyncio.ensure_future(self._exchange_and_keep(credential, http))
            self._running[credential.key_id] = task
            task.add_done_callback(functools.partial(self._finished, credential.key_id))
        return await asyncio.shield(task)

    async def _exchange_and_keep(self, credential: Credential, http: aiohttp.ClientSession | None) -> tuple[str, float]:
        # No caller's time limit reaches the exchange: it has its own, or a token service that never
        # answers would hold every later request for this key.
        try:
            async with asyncio.timeout(self.exchange_timeout):
                token = await self.exchange(credential, http)
        except TimeoutError:
            logger.warning("token exchange for supplier key %s took longer than %s s", credential.key_id, self.exchange_timeout)
            raise timed_out("token exchange") from None
        self._tokens[credential.key_id] = token
        return token

    def _finished(self, key_id: int, task: asyncio.Task[tuple[str, float]]) -> None:
        if self._running.get(key_id) is task:
            del self._running[key_id]
        if not task.cancelled():
            task.exception()  # retrieved: an exchange nobody waits for any more logs nothing

    def forget(self, key_id: int) -> None:
        """Drop a cached token (the upstream refused it: the next request exchanges anew)."""
        self._tokens.pop(key_id, None)


class Adapter:
    """One provider kind's wire format. Subclasses set what differs; see the module docstring.

    ``needs_key`` is False for an upstream that takes no supplier key (the in-process mock).
    """

    kind: ClassVar[str] = ""
    needs_key: ClassVar[bool] = True
    auth: Auth = Auth()  # stateless; a CachedTokenAuth is made per adapter instance

    def build_request(self, request: CanonicalRequest, target: Target, auth_headers: Mapping[str, str]) -> UpstreamRequest:
        """The upstream request for ``request`` at ``target``, authenticated by ``auth_headers``."""
        raise NotImplementedError

    async def open(self, http: aiohttp.ClientSession, request: CanonicalRequest, target: Target, credential: Credential | None,
                   *, proxy: str | None) -> UpstreamResponse:
        """Authenticate, build and send ``request``: the started answer, whatever its status.
        Raises ``UpstreamFailure`` when there is no answer to read (see ``send``, ``Auth.headers``)."""
        auth_headers = await self.auth.headers(credential, http) if credential is not None else {}
        return await self.send(http, self.build_request(request, target, auth_headers), proxy=proxy)

    async def send(self, http: aiohttp.ClientSession, prepared: UpstreamRequest, *, proxy: str | None) -> UpstreamResponse:
        """POST ``prepared`` (no redirects followed). Raises ``UpstreamFailure``: ``timed_out`` when the
        session's connect timeout fires, ``unreachable`` on a connection error."""
        try:
            response = await http.post(prepared.url, data=prepared.body, headers=prepared.headers, allow_redirects=False,
                                       proxy=proxy)
        except TimeoutError as exc:  # aiohttp's ConnectionTimeoutError: the session only sets connect limits
            raise timed_out("connect") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise unreachable() from exc
        return HttpResponse(response)

    def parse_body(self, body: bytes, request: CanonicalRequest) -> Parsed:
        """A 2xx non-streamed answer in canonical form. Raises ``UpstreamFailure`` (``malformed``)."""
        raise NotImplementedError

    def stream_decoder(self, request: CanonicalRequest) -> StreamDecoder:
        """A fresh decoder for one streamed answer."""
        raise NotImplementedError

    def map_error(self, status: int, body: bytes, headers: Mapping[str, str], secrets: Sequence[str]) -> UpstreamFailure:
        """What a non-2xx answer means for the client and for the key. ``secrets`` are the provider's
        supplier keys (the one used and the others): scrubbed, with everything else ``lib.scrub``
        removes, from whatever of the body the failure or a log line carries."""
        raise NotImplementedError

    def body_failure(self, body: bytes, secrets: Sequence[str]) -> UpstreamFailure | None:
        """The failure a 2xx non-streamed ``body`` stands for when it is an error object rather than
        an answer (some upstreams answer HTTP 200 with one), or None for an answer. Default: None."""
        return None

    def in_band_error(self, payload: bytes, secrets: Sequence[str]) -> UpstreamFailure:
        """What an error sent inside a 2xx answer means (a 200 error body, a stream's error event
        ``StreamDecoder.error``). Default: the upstream failed, 502, fail over."""
        return UpstreamFailure(502, "The upstream provider failed.", code="upstream_error", failover=True,
                               cooldown=COOLDOWN_SERVER_ERROR)
