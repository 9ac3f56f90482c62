"""The dialect seam: what every inbound dialect provides to the pipeline.

A dialect is chosen by the request's path (``apps/proxy/pipeline/app.py``) and travels on the call
(``Call.dialect``). Every stage between parsing and rendering works on the canonical form (OpenAI
chat completions, see ``apps.providers.adapters.base``), so metering, limits, idempotency, rate
headers and the money rules are the same whatever the client speaks. A dialect:

- ``parse``: the raw body → ``CanonicalRequest`` (400 ``ApiError`` naming the field);
- ``render_body``: a canonical non-streamed answer (``chat.completion`` JSON bytes) → its own answer;
- ``stream_renderer``: one ``StreamRenderer`` per stream, turning each upstream read's canonical
  events (``b"data: {chat.completion.chunk}"`` lines) into one client write, and rendering the end
  (usage and the gateway's cost, or an error event);
- ``render_error``: an ``ApiError`` as its own error body (the HTTP status stays the gateway's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import orjson

from apps.providers.adapters.base import CanonicalRequest

from ..exceptions import ApiError, bad_request

if TYPE_CHECKING:
    from ..pipeline.context import Call

HeaderList = list[tuple[bytes, bytes]]
SSE_HEADERS: HeaderList = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class StreamRenderer(Protocol):
    """One streamed answer, rendered for the client. ``keepalive`` is what a silence is filled with
    (an SSE comment, or Anthropic's ``ping`` event); it is never part of an idempotent replay."""

    keepalive: bytes

    def events(self, events: list[bytes]) -> bytes:
        """One client write for the canonical ``events`` of one upstream read (b"": nothing to write)."""
        ...

    def end(self, usage_chunk: dict[str, Any] | None, error: ApiError | None) -> bytes:
        """The stream's last write: its end with the billed usage (``call.input_tokens`` … and
        ``call.sell``, already settled) or, with ``error``, the error event. ``usage_chunk`` is the
        upstream's canonical usage chunk, if it sent one."""
        ...


class Dialect:
    """An inbound dialect (see the module docstring); one stateless instance per dialect."""

    name: ClassVar[str] = ""
    sse_headers: ClassVar[HeaderList] = SSE_HEADERS
    # A header that repeats the request id (``x-request-id`` is always sent) under the dialect's own name.
    request_id_header: ClassVar[bytes | None] = None

    def parse(self, endpoint: str, raw: bytes) -> CanonicalRequest:
        """The canonical request for ``endpoint`` from the raw body. Raises ``ApiError`` 400."""
        raise NotImplementedError

    def render_body(self, call: Call, body: bytes) -> bytes:
        """The client's answer for a canonical non-streamed ``body`` (usage already priced on ``call``)."""
        raise NotImplementedError

    def stream_renderer(self, call: Call) -> StreamRenderer:
        """A fresh renderer for one streamed answer to ``call``."""
        raise NotImplementedError

    def render_error(self, call: Call, error: ApiError) -> bytes:
        """``error`` as this dialect's error body (JSON bytes). Default: OpenAI's shape."""
        return error.body()


def load_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, for every dialect. Raises ``ApiError`` 400 ``invalid_json``
    for an empty body, invalid JSON or anything but an object."""
    if not raw:
        raise bad_request("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc.msg} (at character {exc.pos}).", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return body
