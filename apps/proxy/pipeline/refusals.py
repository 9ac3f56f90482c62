"""Refusals a person can act on: what a spend or rate limit refusal says, and whether a retry can help.

Built only when ``redis_scripts.RESERVE`` refuses a call (never on the success path). The rule,
the same for the company's funds, the token's total / weekly / monthly limits, the department's
monthly budget and TPM:

* **never fits** — the request is larger than what would remain once every in-flight reservation
  settled at zero cost: 402 (413 for TPM), no ``Retry-After``, ``x-should-retry: false`` (the
  OpenAI and Anthropic SDKs then do not retry it);
* **fits later** — it fits once in-flight reservations settle (or, for TPM/RPM, once the sliding
  minute has moved on): 429 with a ``Retry-After`` (see ``FITS_LATER_RETRY_AFTER``; TPM/RPM: the
  exact second the window has room again, if nothing new arrives).

The message carries the figures and the error object carries them as fields, next to OpenAI's
``message``/``type``/``param``/``code``: money as RUB strings with six decimals ("16.000000", the
gateway's wire form, exact to the micro-ruble), token counts and seconds as integers. See
docs/billing.md, "Limits and refusals".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from lib.money import format_rub

from ..exceptions import ApiError
from ..windows import window_ids
from .context import Call

# Seconds a "fits later" spend refusal asks the client to wait. A reservation is released the
# moment its request ends, and the gateway cannot know when that is (a stream has no time limit);
# what it knows is that the refusal can change only when some in-flight request of the same token
# (or company, department) ends — typically within seconds. A short fixed wait keeps the OpenAI
# SDK's own retries (max_retries=2, each honouring Retry-After up to 60 s) useful without hammering.
FITS_LATER_RETRY_AFTER = 5

SUBJECTS = {
    "balance": "The company's funds (balance plus credit limit, less open holds) are",
    "total": "The token's total spend limit is",
    "weekly": "The token's weekly spend limit is",
    "monthly": "The token's monthly spend limit is",
    "department": "The department's monthly budget is",
}
CODES = {"balance": "insufficient_balance", "total": "limit_total", "weekly": "limit_weekly", "monthly": "limit_monthly",
         "department": "limit_department"}
REMEDIES = {"balance": "top up the company's wallet", "total": "ask a manager to raise the token's total limit",
            "weekly": "wait for the weekly reset or ask a manager to raise the limit",
            "monthly": "wait for the monthly reset or ask a manager to raise the limit",
            "department": "wait for the monthly reset or ask a manager to raise the department's budget"}


def rub(micro: int) -> str:
    """Micro-RUB as the wire shows rubles: six decimals, e.g. 12_345_678 → "12.345678"."""
    return format_rub(micro, 6)


class LimitRefusal(ApiError):
    """An ``ApiError`` whose error object also carries ``details`` (JSON-able values) beside
    ``message``/``type``/``param``/``code``: ``{"error": {..., "scope": "monthly", "spent": "16.000000", ...}}``."""

    def __init__(self, status: int, message: str, *, details: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(status, message, **kwargs)
        self.details = details

    def body(self) -> bytes:
        """The error object's JSON, with the refusal's figures."""
        return orjson.dumps({"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                                       **self.details}})


@dataclass(frozen=True, slots=True)
class SpendState:
    """One spend limit as RESERVE saw it when it refused (micro-RUB): ``limit``; ``counter`` = spent +
    ``held`` (what ``held_requests`` in-flight reservations hold); ``never`` when the request would not
    fit even once they all settled at zero cost. For ``balance``, ``limit`` is credits + credit limit −
    posted debits and "spent" is charged but not yet posted to the ledger."""

    scope: str
    limit: int
    counter: int
    held: int
    held_requests: int
    never: bool

    @property
    def spent(self) -> int:
        """Settled spend (micro-RUB)."""
        return self.counter - self.held

    @property
    def remaining(self) -> int:
        """What is left now, in-flight reservations counted (micro-RUB, ≥ 0)."""
        return max(0, self.limit - self.counter)

    @property
    def remaining_after_in_flight(self) -> int:
        """What would be left once every in-flight reservation settled at zero cost (micro-RUB, ≥ 0)."""
        return max(0, self.limit - self.spent)


def output_cap(call: Call) -> tuple[int, str]:
    """(output tokens reserved per choice, why): ``"max_tokens"`` (the client's), ``"model_limit"``
    (none given: the model's output limit), ``"context_window"`` (none given: what the context window
    leaves after the prompt), ``"none"`` (embeddings)."""
    request, route = call.request, call.route
    if request.endpoint == "embedding":
        return 0, "none"
    if request.max_tokens is not None:
        return request.max_tokens, "max_tokens"
    room = max(0, route.context_window - call.input_tokens_estimate)
    if route.max_output_tokens <= room:
        return route.max_output_tokens, "model_limit"
    return room, "context_window"


def max_tokens_that_fit(call: Call, budget: int) -> int | None:
    """The largest ``max_tokens`` whose maximum cost (this prompt, ``n`` choices, on the model and on
    every fallback) is ≤ ``budget`` micro-RUB; 0 when none does; None for embeddings (no output).
    A binary search over the model's output range (≤ 17 prices for 128k tokens)."""
    from .spend import max_cost  # spend imports this module

    if call.request.endpoint == "embedding":
        return None
    route, n = call.route, call.request.n
    candidates = [(route, call.input_tokens_estimate), *((c.route, c.input_tokens) for c in call.fallbacks)]

    def fits(tokens: int) -> bool:
        return all(max_cost(call, r, prompt, tokens * n) <= budget for r, prompt in candidates)

    low, high = 0, min(route.max_output_tokens, max(0, route.context_window - call.input_tokens_estimate))
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _why(call: Call, amount: int) -> str:
    tokens, source = output_cap(call)
    n = call.request.n
    choices = f" × n={n}" if n > 1 else ""
    if source == "max_tokens":
        reason = f"max_tokens={tokens}{choices} output tokens"
    elif source == "model_limit":
        reason = f"no max_tokens was given, so the model's output limit of {tokens} tokens{choices} is reserved"
    elif source == "context_window":
        reason = f"no max_tokens was given, so the {tokens} tokens the context window leaves{choices} are reserved"
    else:
        reason = "input only"
    return f"This request may cost up to {rub(amount)} RUB ({call.input_tokens_estimate} prompt tokens; {reason})."


def _resets_at(call: Call, scope: str) -> str | None:
    if scope not in ("weekly", "monthly", "department"):
        return None
    _, _, week_end, month_end = window_ids(call.token.time_zone, time.time())
    end = week_end if scope == "weekly" else month_end
    return datetime.fromtimestamp(end, UTC).astimezone(call.token.time_zone).isoformat()


def spend_refusal(state: SpendState, call: Call, amount: int) -> LimitRefusal:
    """The refusal for a spend limit (``state``) that the call's maximum cost ``amount`` (micro-RUB)
    broke: 402 never fits / 429 fits later (see the module docstring)."""
    fit_now = max_tokens_that_fit(call, state.remaining)
    fit_later = max_tokens_that_fit(call, state.remaining_after_in_flight)
    spent_word = "charged, not yet posted" if state.scope == "balance" else "spent"
    parts = [f"{SUBJECTS[state.scope]} {rub(state.limit)} RUB: {rub(state.spent)} RUB {spent_word}, "
             f"{rub(state.held)} RUB held by {state.held_requests} in-flight request(s), {rub(state.remaining)} RUB remaining.",
             _why(call, amount)]
    resets_at = _resets_at(call, state.scope)
    if state.never:
        parts.append(f"It cannot fit even once in-flight requests finish ({rub(state.remaining_after_in_flight)} RUB "
                     "would remain), so retrying will not help.")
        if fit_later:
            now = f" ({fit_now} fits now)" if fit_now != fit_later else ""
            parts.append(f"Send max_tokens ≤ {fit_later}{now}, or {REMEDIES[state.scope]}.")
        else:
            parts.append(f"No output fits: shorten the prompt or {REMEDIES[state.scope]}.")
    else:
        tail = f"send max_tokens ≤ {fit_now} to fit now" if fit_now else "no max_tokens fits now"
        parts.append(f"It fits once in-flight requests finish: retry after {FITS_LATER_RETRY_AFTER} s, or {tail}.")
    if resets_at:
        parts.append(f"The limit resets at {resets_at}.")
    status = 402 if state.never else 429
    details = {"scope": state.scope, "limit": rub(state.limit), "spent": rub(state.spent), "held": rub(state.held),
               "held_requests": state.held_requests, "remaining": rub(state.remaining),
               "remaining_after_in_flight": rub(state.remaining_after_in_flight), "request_max_cost": rub(amount),
               "input_tokens": call.input_tokens_estimate, "max_output_tokens": output_cap(call)[0],
               "max_output_tokens_source": output_cap(call)[1], "max_tokens_that_fit": fit_now,
               "max_tokens_that_fit_after_in_flight": fit_later, "fits_later": not state.never,
               "retry_after": None if state.never else FITS_LATER_RETRY_AFTER, "resets_at": resets_at}
    headers = [] if state.never else [(b"retry-after", str(FITS_LATER_RETRY_AFTER).encode())]
    return LimitRefusal(status, " ".join(parts), details=details, code=CODES[state.scope], headers=headers,
                        type="insufficient_quota" if state.never else "rate_limit_error", retryable=not state.never)


def rate_refusal(name: str, limit: int, used: int, wait: int, *, never: bool, call: Call) -> LimitRefusal:
    """The refusal for RPM (``name`` "rpm") or TPM ("tpm"): ``used`` requests/tokens in the sliding
    minute, ``wait`` seconds until it has room (RESERVE's figure). Never fits: TPM 413
    ``tpm_request_too_large`` (this request's estimate alone exceeds the limit), RPM 403 (a limit of 0);
    else 429 with ``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers."""
    kind = "requests" if name == "rpm" else "tokens"
    cap = call.max_output_tokens
    need = 1 if name == "rpm" else call.input_tokens_estimate + cap
    details: dict[str, Any] = {"scope": name, "limit": limit, "used": used, "requested": need,
                               "retry_after": None if never else wait}
    if name == "tpm":
        fit = max(0, (limit - call.input_tokens_estimate) // max(1, call.request.n)) if call.request.endpoint != "embedding" else None
        details.update(input_tokens=call.input_tokens_estimate, max_output_tokens=output_cap(call)[0],
                       max_output_tokens_source=output_cap(call)[1], max_tokens_that_fit=fit)
    if never and name == "tpm":
        message = (f"This request counts {need} tokens ({call.input_tokens_estimate} prompt + {cap} output reserved), above "
                   f"the token's limit of {limit} tokens per minute: it can never pass, so retrying will not help. "
                   + (f"Send max_tokens ≤ {details['max_tokens_that_fit']}." if details["max_tokens_that_fit"]
                      else "Shorten the prompt."))
        return LimitRefusal(413, message, details=details, code="tpm_request_too_large", retryable=False)
    if never:
        return LimitRefusal(403, f"The token's limit is {limit} requests per minute: no request can pass. Ask a manager.",
                            details=details, type="permission_error", code="rate_limit_rpm", retryable=False)
    message = f"Rate limit reached: {limit} {kind} per minute for this token, {used} used in the last minute"
    if name == "tpm":
        message += f"; this request counts {need} tokens"
    message += f". Retry after {wait} s."
    headers = [(b"retry-after", str(wait).encode()), (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
               (f"x-ratelimit-remaining-{kind}".encode(), b"0"), (f"x-ratelimit-reset-{kind}".encode(), f"{wait}s".encode())]
    return LimitRefusal(429, message, details=details, type="rate_limit_error", code=f"rate_limit_{name}", headers=headers)


def limit_error(detail: list[str], call: Call, amount: int) -> LimitRefusal:
    """The refusal for a RESERVE result ``detail`` (its fields after the leading 2, as text; see
    ``redis_scripts.RESERVE``) refusing ``call`` whose maximum cost is ``amount`` micro-RUB."""
    name = detail[0]
    if name in ("rpm", "tpm"):
        return rate_refusal(name, int(detail[1]), int(detail[2]), int(detail[3]), never=detail[4] == "1", call=call)
    state = SpendState(name, int(detail[1]), int(detail[2]), int(detail[3]), int(detail[4]), detail[5] == "1")
    return spend_refusal(state, call, amount)
