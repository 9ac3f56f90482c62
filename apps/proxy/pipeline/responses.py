"""Sending answers over ASGI: JSON bodies and errors, and the headers every answer carries.

``answering`` wraps the ASGI ``send`` of every ``/v1`` request once, at the door: whatever stage
answers (a refusal, a body, a stream, an idempotent replay), its response start gets
``x-request-id``, ``openai-processing-ms`` and the CORS headers, and a ``HEAD`` answer loses its
body. ``Cors`` is the cross-origin policy for browser clients (off unless origins are configured).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson

from ..exceptions import ApiError
from .context import Call

HeaderList = list[tuple[bytes, bytes]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
JSON = (b"content-type", b"application/json")
NO_COST = (b"x-jetstream-cost", b"0.000000")


def answering(call: Call, send: Send, *, head: bool = False, extra: HeaderList | None = None) -> Send:
    """``send`` for ``call``: the response start gets ``x-request-id`` (the call's id; also under the
    dialect's own name, ``Dialect.request_id_header``),
    ``openai-processing-ms`` (milliseconds from the request's arrival to the response's first byte)
    and ``extra`` (CORS); with ``head`` (a HEAD request) body bytes are dropped, headers kept."""
    request_id = call.id.encode()
    added = extra or []
    if call.dialect.request_id_header is not None:  # Anthropic's SDK reads `request-id`
        added = [(call.dialect.request_id_header, request_id), *added]

    async def send_answer(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            elapsed = str(int((time.time() - call.started) * 1000)).encode()
            message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", request_id),
                                              (b"openai-processing-ms", elapsed), *added]}
        elif head and message.get("body"):
            message = {**message, "body": b""}
        await send(message)

    return send_answer


async def send_json(send: Send, call: Call, status: int, obj: Any) -> None:
    """``obj`` as a JSON answer (``call`` is the request it answers)."""
    body = orjson.dumps(obj)
    await send({"type": "http.response.start", "status": status,
                "headers": [JSON, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, call: Call, error: ApiError) -> None:
    """``error`` in the call's dialect's shape (``Dialect.render_error``) with its headers and cost 0;
    a client that has left is ignored (the call is recorded all the same)."""
    headers = [JSON, NO_COST, *call.headers, *error.headers]
    try:
        await send({"type": "http.response.start", "status": error.status if error.status != 499 else 400, "headers": headers})
        await send({"type": "http.response.body", "body": call.dialect.render_error(call, error)})
    except (OSError, RuntimeError):
        pass


# Headers a browser script may read from a cross-origin answer (the rest are hidden from it).
EXPOSED = b", ".join([
    b"x-request-id", b"openai-processing-ms", b"x-jetstream-cost", b"retry-after", b"x-should-retry",
    b"idempotent-replayed", b"x-jetstream-replayed-from",
    *(f"x-ratelimit-{part}-{kind}".encode() for part in ("limit", "remaining", "reset") for kind in ("requests", "tokens")),
])
_HEADER_LIST = re.compile(rb"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")
PREFLIGHT_MAX_AGE = b"600"  # seconds a browser may reuse a preflight answer


class Cors:
    """Cross-origin access for browser clients (https://fetch.spec.whatwg.org/#http-cors-protocol).

    ``origins`` are exact origins (``https://app.example.com``) or ``*`` for any; empty (the
    default) turns CORS off, so no answer carries ``Access-Control-*`` and browsers keep other
    sites' scripts out. The allowed origin is echoed (never ``*``) with ``Vary: Origin``; no
    credentials mode: the API authenticates with a bearer token, not cookies."""

    def __init__(self, origins: Iterable[str]) -> None:
        cleaned = {origin.strip().rstrip("/").lower() for origin in origins if origin.strip()}
        self._any = "*" in cleaned
        self._origins = frozenset(origin.encode() for origin in cleaned - {"*"})
        self.enabled = self._any or bool(self._origins)

    def origin(self, scope: dict[str, Any]) -> bytes | None:
        """The request's ``Origin`` when it is allowed, else None."""
        if not self.enabled:
            return None
        for name, value in scope["headers"]:
            if name == b"origin":
                return value if self._any or value.lower() in self._origins else None
        return None

    def headers(self, origin: bytes | None) -> HeaderList:
        """Headers for an actual answer to an allowed ``origin`` (none for None)."""
        if origin is None:
            return []
        return [(b"access-control-allow-origin", origin), (b"vary", b"origin"), (b"access-control-expose-headers", EXPOSED)]

    def preflight_headers(self, scope: dict[str, Any], origin: bytes | None, allowed: tuple[str, ...]) -> HeaderList:
        """Headers answering a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an
        allowed ``origin`` for a path that takes the methods ``allowed``: none for None, or for a
        method or header list the path cannot take."""
        if origin is None:
            return []
        request_headers = b""
        method = None
        for name, value in scope["headers"]:
            if name == b"access-control-request-method":
                method = value.decode("latin-1").strip()
            elif name == b"access-control-request-headers":
                request_headers = value.strip()
        if method not in allowed or (request_headers and not _HEADER_LIST.match(request_headers)):
            return []
        headers = [(b"access-control-allow-origin", origin),
                   (b"access-control-allow-methods", ", ".join(allowed).encode()),
                   (b"access-control-max-age", PREFLIGHT_MAX_AGE),
                   (b"vary", b"origin, access-control-request-method, access-control-request-headers")]
        if request_headers:  # echoed: a token in `Authorization` is never covered by a wildcard
            headers.append((b"access-control-allow-headers", request_headers))
        return headers
