"""Metered usage: the usage event's one definition, and billing's door for writing it.

The proxy makes one ``UsageEvent`` per inference request, whatever its fate, and appends its
encoding to the Redis stream ``js:usage`` (inside the same Lua step that settles the request's
money). The meter writer decodes entries and hands them to ``record_usage_batch``, the only code
that writes ``billing_usagerecord`` rows and the ledger transfers for usage.

Units: token counts in tokens; ``sell_cost``/``buy_cost`` and ``fx_rub_per_unit`` in integer
micro-rubles; ``latency_ms``/``ttft_ms`` in milliseconds; ``started_at``/``finished_at`` in Unix
seconds (float). ``status`` is a ``UsageStatus`` value.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import orjson

from apps.billing.models import UsageStatus


class MalformedUsageEvent(ValueError):
    """A stream entry that is not a usage event (not JSON, not an object, no request id)."""


@dataclass(slots=True)
class UsageEvent:
    """One request's usage, as the proxy records it and ``UsageRecord`` stores it (same names)."""

    request_id: str
    endpoint: str
    status: str  # a UsageStatus value
    http_status: int
    started_at: float  # Unix seconds
    finished_at: float  # Unix seconds
    token_id: int | None = None
    company_id: int | None = None
    department_id: int | None = None
    model_name: str = ""  # the public model name the client asked for
    model_id: int | None = None
    provider_id: int | None = None
    supplier_key_id: int | None = None
    supplier_id: int | None = None
    price_id: int | None = None
    fx_rub_per_unit: int | None = None  # micro-RUB per unit of the price's currency
    stream: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    usage_counted_locally: bool = False
    sell_cost: int = 0  # micro-RUB the company pays
    buy_cost: int = 0  # micro-RUB the platform owes the supplier
    error_type: str = ""
    error_code: str = ""
    latency_ms: int = 0
    ttft_ms: int | None = None
    client_ip: str | None = None

    def encode(self) -> bytes:
        """The event as the JSON object stored in the stream entry's ``e`` field."""
        return orjson.dumps(self)

    @classmethod
    def decode(cls, raw: bytes | str) -> UsageEvent:
        """An event from its stream encoding (also the pre-1.1 short-key form).

        Raises ``MalformedUsageEvent`` for anything that is not an event object."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedUsageEvent(f"not JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise MalformedUsageEvent("not a JSON object")
        if "rid" in obj:
            obj = _from_short_keys(obj)
        if not isinstance(obj.get("request_id"), str) or not obj["request_id"]:
            raise MalformedUsageEvent("no request_id")
        known = {k: v for k, v in obj.items() if k in _FIELD_NAMES}
        known.setdefault("endpoint", "")
        known.setdefault("status", UsageStatus.FAILED)
        known.setdefault("http_status", 0)
        started = known.get("started_at")
        if not isinstance(started, int | float):
            raise MalformedUsageEvent("no started_at")
        known.setdefault("finished_at", started)
        try:
            return cls(**known)
        except TypeError as exc:
            raise MalformedUsageEvent(str(exc)) from None


_FIELD_NAMES = frozenset(f.name for f in fields(UsageEvent))

# The stream's first encoding (short keys); entries written before an upgrade still decode.
_SHORT_KEYS = {
    "rid": "request_id", "ep": "endpoint", "tok": "token_id", "co": "company_id", "dp": "department_id",
    "mn": "model_name", "m": "model_id", "pv": "provider_id", "k": "supplier_key_id", "sup": "supplier_id",
    "pr": "price_id", "fx": "fx_rub_per_unit", "st": "stream", "it": "input_tokens", "ot": "output_tokens",
    "ct": "cached_tokens", "loc": "usage_counted_locally", "sell": "sell_cost", "buy": "buy_cost", "status": "status",
    "http": "http_status", "et": "error_type", "ec": "error_code", "lat": "latency_ms", "ttft": "ttft_ms",
    "ip": "client_ip", "t0": "started_at", "t1": "finished_at",
}


def _from_short_keys(obj: dict[str, Any]) -> dict[str, Any]:
    return {_SHORT_KEYS[k]: v for k, v in obj.items() if k in _SHORT_KEYS and v is not None}
