"""Sending answers over ASGI: JSON bodies and errors, with the headers every answer carries."""

from __future__ import annotations

from typing import Any

import orjson

from ..exceptions import ApiError
from .context import Call

HeaderList = list[tuple[bytes, bytes]]
JSON = (b"content-type", b"application/json")
NO_COST = (b"x-jetstream-cost", b"0.000000")


async def send_json(send, call: Call, status: int, obj: Any) -> None:
    """``obj`` as a JSON answer with the call's ``x-request-id``."""
    await send({"type": "http.response.start", "status": status, "headers": [JSON, (b"x-request-id", call.id.encode())]})
    await send({"type": "http.response.body", "body": orjson.dumps(obj)})


async def send_error(send, call: Call, error: ApiError) -> None:
    """``error`` in OpenAI's shape with its headers and cost 0; a client that has left is ignored
    (the call is recorded all the same)."""
    headers = [JSON, (b"x-request-id", call.id.encode()), NO_COST, *call.headers, *error.headers]
    try:
        await send({"type": "http.response.start", "status": error.status if error.status != 499 else 400, "headers": headers})
        await send({"type": "http.response.body", "body": error.body()})
    except (OSError, RuntimeError):
        pass
