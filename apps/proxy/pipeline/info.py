"""Info endpoints: ``GET /v1/models``, ``GET /v1/models/{name}`` and ``GET /v1/key``.

``/v1/key`` reports the calling token's spend, limits and what remains of each, its rate limits
and the company balance, in rubles as strings with six decimals (OpenRouter's ``/api/v1/key``
fields ``usage``/``limit``/``limit_remaining`` included).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from ..exceptions import not_found
from ..redis_scripts import rate_keys
from ..snapshot import SnapshotCache, TokenSnapshot
from ..windows import window_ids
from .context import Call
from .responses import send_json
from .spend import SpendCounters, rub


def _model_object(name: str, route) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": route.created, "owned_by": route.provider_slug}


async def list_models(call: Call, send, snapshots: SnapshotCache) -> None:
    """The models this token may use, in OpenAI's list shape."""
    data = [_model_object(name, route) for name, route in sorted(snapshots.routes().items()) if call.token.may_use(name)]
    await send_json(send, call, 200, {"object": "list", "data": data})


async def get_model(call: Call, send, snapshots: SnapshotCache, name: str) -> None:
    """One model, or 404 ``model_not_found`` if it is unknown or the token may not use it."""
    route = snapshots.route(name)
    if route is None or not call.token.may_use(name):
        raise not_found(f"The model '{name}' does not exist or you do not have access to it.")
    await send_json(send, call, 200, _model_object(name, route))


async def key_info(call: Call, send, counters: SpendCounters) -> None:
    """``{"data": key_report(...)}``."""
    await send_json(send, call, 200, {"data": await key_report(call.token, counters)})


def _limit_entry(token: TokenSnapshot, limit: int | None, spent: int, resets_at: float | None) -> dict[str, Any]:
    entry = {"limit": rub(limit) if limit is not None else None, "spent": rub(spent),
             "remaining": rub(max(0, limit - spent)) if limit is not None else None}
    if resets_at is not None:
        entry["resets_at"] = datetime.fromtimestamp(resets_at, token.time_zone).isoformat()
    return entry


def _ints(values) -> list[int]:
    return [int(v) if v else 0 for v in values]


async def key_report(token: TokenSnapshot, counters: SpendCounters) -> dict[str, Any]:
    """The token's spend against each limit (micro-RUB shown as RUB strings), rate limits, balance."""
    redis, now = counters.redis, time.time()
    keys = counters.keys_for(token, now)
    exists = await redis.execute("EXISTS", keys.total, keys.week, keys.month)
    if exists < 3 or not await redis.execute("HEXISTS", keys.co, "cr"):
        await counters.seed(token, keys)
    total, week_spent, month_spent, dept_spent = _ints(await redis.execute("MGET", keys.total, keys.week, keys.month, keys.dept))
    cr, db, lim, out = _ints(await redis.execute("HMGET", keys.co, "cr", "db", "lim", "out"))
    available = cr + lim - db - out
    limits = ((token.limit_total, total), (token.limit_weekly, week_spent), (token.limit_monthly, month_spent),
              (token.department_budget, dept_spent))
    remaining = [max(0, available)] + [max(0, limit - spent) for limit, spent in limits if limit is not None]
    _, _, week_end, month_end = window_ids(token.time_zone, now)
    return {
        "label": token.name,
        "name": token.name,
        "company": token.company_name,
        "currency": "RUB",
        # OpenRouter-compatible fields: usage and limit of the key.
        "usage": rub(total),
        "limit": rub(token.limit_total) if token.limit_total is not None else None,
        "limit_remaining": rub(max(0, token.limit_total - total)) if token.limit_total is not None else None,
        "limits": {
            "total": _limit_entry(token, token.limit_total, total, None),
            "weekly": _limit_entry(token, token.limit_weekly, week_spent, week_end),
            "monthly": _limit_entry(token, token.limit_monthly, month_spent, month_end),
            "department_monthly": _limit_entry(token, token.department_budget, dept_spent, month_end) if token.department_id else None,
        },
        "rate_limit": await _rate_limit(token, counters, now),
        "company_balance": {"available": rub(available), "pending": rub(out)},
        "spendable_now": rub(min(remaining)),
        "models_allow": sorted(token.models_allow) or None,
        "models_deny": sorted(token.models_deny) or None,
        "expires_at": datetime.fromtimestamp(token.expires_at, token.time_zone).isoformat() if token.expires_at else None,
    }


async def _rate_limit(token: TokenSnapshot, counters: SpendCounters, now: float) -> dict[str, int | None]:
    rpm_cur, rpm_prev, tpm_cur, tpm_prev, frac = rate_keys(token.id, now)
    r_cur, r_prev, t_cur, t_prev = _ints(await counters.redis.execute("MGET", rpm_cur, rpm_prev, tpm_cur, tpm_prev))
    weight = 1 - float(frac)
    return {
        "requests_per_minute": token.rpm,
        "requests_remaining": max(0, int(token.rpm - (r_prev * weight + r_cur))) if token.rpm else None,
        "tokens_per_minute": token.tpm,
        "tokens_remaining": max(0, int(token.tpm - (t_prev * weight + t_cur))) if token.tpm else None,
    }
