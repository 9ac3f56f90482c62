"""The refusal table (issue 9, item 5): every limit × "never fits" / "fits later", through the real
gateway — exact status, code, figures in the message and the error object, ``Retry-After`` and
``x-should-retry``; the OpenAI SDK does not retry what can never fit; the issue's reproduction
(50 RUB monthly, 16 spent, 50 concurrent requests without max_tokens)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import openai
import pytest
import redis as redis_lib
from django.conf import settings

from apps.billing import services as ledger
from apps.proxy import redis_scripts
from apps.proxy.pipeline.refusals import FITS_LATER_RETRY_AFTER
from lib import tokenizer
from lib.money import format_rub
from tests.proxy.conftest import RUB
from tests.proxy.helpers import expected_cost

MAX_TOKENS = 300
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What limits apply to me?"}], "max_tokens": MAX_TOKENS}
PROMPT = tokenizer.count_chat_request(BODY, encoding=tokenizer.encoding_for_model("gpt-4o-mini"))
COST = expected_cost(PROMPT, MAX_TOKENS)  # the request's maximum cost at the sell price (coefficient 1.25)


def rub(micro: int) -> str:
    return format_rub(micro, 6)


def fits(budget: int) -> int:
    """The largest max_tokens whose maximum cost is within ``budget`` — counted here, independently."""
    return max((m for m in range(0, 4097) if expected_cost(PROMPT, m) <= budget), default=0)


def send(gateway, body=BODY):
    return httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {gateway.world.secret}"})


def _redis():
    return redis_lib.Redis.from_url(settings.REDIS_URL)


class InFlight:
    """One request held open at the fake upstream (its reservation stays in Redis) until ``release``."""

    def __init__(self, gateway, fake) -> None:
        self.gateway, self.fake = gateway, fake
        self.response: httpx.Response | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.response = send(self.gateway)

    def __enter__(self) -> InFlight:
        self.fake.behavior(hang=True, slow_times=1)
        client = _redis()
        self.thread.start()
        deadline = time.monotonic() + 10
        while client.zcard(redis_scripts.RESERVATIONS_KEY) < 1:
            assert time.monotonic() < deadline, "the request did not reserve"
            time.sleep(0.02)
        client.close()
        return self

    def __exit__(self, *exc) -> None:
        self.fake.reset()
        self.thread.join(15)


def _set_limit(gateway, scope: str, amount: int) -> None:
    from apps.accounts.models import Department

    token = gateway.world.token
    if scope == "balance":
        wallet = ledger.company_wallet(gateway.world.company)
        ledger.transfer(idempotency_id="leave", debit=wallet, credit=ledger.platform_account("platform_revenue"),
                        amount=ledger.balance(wallet).available - amount)
        gateway.drain()
    elif scope == "department":
        token.department = Department.objects.create(company=gateway.world.company, slug="ml", name="ML",
                                                     monthly_budget=amount)
        token.save()
    else:
        setattr(token, f"limit_{scope}", amount)
        token.save()
    gateway.wait_config()


CODES = {"balance": "insufficient_balance", "total": "limit_total", "weekly": "limit_weekly", "monthly": "limit_monthly",
         "department": "limit_department"}
SUBJECTS = {"balance": "The company's funds (balance plus credit limit, less open holds) are",
            "total": "The token's total spend limit is", "weekly": "The token's weekly spend limit is",
            "monthly": "The token's monthly spend limit is", "department": "The department's monthly budget is"}
SCOPES = list(CODES)


@pytest.mark.parametrize("scope", SCOPES)
def test_a_request_that_can_never_fit_is_a_402_without_retry_after(gateway, scope):
    limit = COST - 1
    _set_limit(gateway, scope, limit)
    refused = send(gateway)
    error = refused.json()["error"]
    assert refused.status_code == 402 and error["code"] == CODES[scope] and error["type"] == "insufficient_quota"
    assert "retry-after" not in refused.headers and refused.headers["x-should-retry"] == "false"
    k = fits(limit)
    assert k == MAX_TOKENS - 1  # one output token less fits: the number is worth acting on
    assert {name: error[name] for name in ("scope", "limit", "spent", "held", "held_requests", "remaining",
                                           "remaining_after_in_flight", "request_max_cost", "input_tokens",
                                           "max_output_tokens", "max_output_tokens_source", "max_tokens_that_fit",
                                           "max_tokens_that_fit_after_in_flight", "fits_later", "retry_after")} == {
        "scope": scope, "limit": rub(limit), "spent": rub(0), "held": rub(0), "held_requests": 0, "remaining": rub(limit),
        "remaining_after_in_flight": rub(limit), "request_max_cost": rub(COST), "input_tokens": PROMPT,
        "max_output_tokens": MAX_TOKENS, "max_output_tokens_source": "max_tokens", "max_tokens_that_fit": k,
        "max_tokens_that_fit_after_in_flight": k, "fits_later": False, "retry_after": None}
    message = error["message"]
    assert message.startswith(f"{SUBJECTS[scope]} {rub(limit)} RUB: {rub(0)} RUB ")
    assert f"{rub(0)} RUB held by 0 in-flight request(s), {rub(limit)} RUB remaining." in message
    assert f"This request may cost up to {rub(COST)} RUB ({PROMPT} prompt tokens; max_tokens={MAX_TOKENS} output tokens)." in message
    assert "retrying will not help" in message and f"Send max_tokens ≤ {k}," in message
    assert ("resets at" in message) == (scope in ("weekly", "monthly", "department"))
    # The number is true: max_tokens=k passes.
    assert send(gateway, {**BODY, "max_tokens": k}).status_code == 200


@pytest.mark.parametrize("scope", SCOPES)
def test_a_request_that_fits_once_in_flight_ones_settle_is_a_429_with_retry_after(gateway, fake_openai, scope):
    limit = COST * 3 // 2  # room for one request in flight, not two
    _set_limit(gateway, scope, limit)
    with InFlight(gateway, fake_openai) as first:
        refused = send(gateway)
        error = refused.json()["error"]
        assert refused.status_code == 429 and error["code"] == CODES[scope] and error["type"] == "rate_limit_error"
        assert refused.headers["retry-after"] == str(FITS_LATER_RETRY_AFTER) and "x-should-retry" not in refused.headers
        k = fits(limit - COST)
        assert 0 < k < MAX_TOKENS
        assert (error["spent"], error["held"], error["held_requests"], error["remaining"], error["remaining_after_in_flight"],
                error["request_max_cost"], error["max_tokens_that_fit"], error["fits_later"], error["retry_after"]) == (
            rub(0), rub(COST), 1, rub(limit - COST), rub(limit), rub(COST), k, True, FITS_LATER_RETRY_AFTER)
        message = error["message"]
        assert f"{rub(COST)} RUB held by 1 in-flight request(s), {rub(limit - COST)} RUB remaining." in message
        assert f"It fits once in-flight requests finish: retry after {FITS_LATER_RETRY_AFTER} s, or send max_tokens ≤ {k} to fit now." in message
        assert send(gateway, {**BODY, "max_tokens": k}).status_code == 200  # true now, beside the one in flight
    assert first.response is not None


def test_a_request_too_large_even_once_in_flight_ones_settle_is_a_402_that_names_both_fits(gateway, fake_openai):
    limit = COST * 3 // 2
    _set_limit(gateway, "monthly", limit)
    with InFlight(gateway, fake_openai):
        refused = send(gateway, {**BODY, "max_tokens": 4000})
    error = refused.json()["error"]
    assert refused.status_code == 402 and error["code"] == "limit_monthly" and "retry-after" not in refused.headers
    now, later = fits(limit - COST), fits(limit)
    assert (error["held"], error["held_requests"], error["remaining"], error["remaining_after_in_flight"]) == (
        rub(COST), 1, rub(limit - COST), rub(limit))
    assert (error["max_tokens_that_fit"], error["max_tokens_that_fit_after_in_flight"]) == (now, later) and now < later
    assert f"Send max_tokens ≤ {later} ({now} fits now), or wait for the monthly reset" in error["message"]


def test_the_sdk_does_not_retry_a_402_and_does_retry_a_fits_later_429(gateway, fake_openai):
    sent: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda request: sent.append(str(request.url))]}, timeout=30)
    client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.world.secret, http_client=http, max_retries=1)
    _set_limit(gateway, "monthly", COST * 3 // 2)
    with pytest.raises(openai.APIStatusError) as never:
        client.chat.completions.create(**{**BODY, "max_tokens": 4000})
    assert never.value.status_code == 402 and never.value.code == "limit_monthly" and len(sent) == 1
    with InFlight(gateway, fake_openai), pytest.raises(openai.RateLimitError) as later:
        client.chat.completions.create(**BODY)
    assert later.value.code == "limit_monthly"
    assert len(sent) == 3  # the 402 once; the 429 and the SDK's one retry after Retry-After
    assert gateway.drain(expect=4) == 4


def test_tpm_a_request_above_the_per_minute_limit_is_a_413_never_a_retry_after(gateway):
    token = gateway.world.token
    token.tpm = PROMPT + MAX_TOKENS - 1
    token.save()
    gateway.wait_config()
    refused = send(gateway)
    error = refused.json()["error"]
    assert refused.status_code == 413 and error["code"] == "tpm_request_too_large"
    assert "retry-after" not in refused.headers and refused.headers["x-should-retry"] == "false"
    assert (error["limit"], error["requested"], error["max_tokens_that_fit"], error["retry_after"]) == (
        token.tpm, PROMPT + MAX_TOKENS, MAX_TOKENS - 1, None)
    assert error["message"] == (f"This request counts {PROMPT + MAX_TOKENS} tokens ({PROMPT} prompt + {MAX_TOKENS} output "
                                f"reserved), above the token's limit of {token.tpm} tokens per minute: it can never pass, "
                                f"so retrying will not help. Send max_tokens ≤ {MAX_TOKENS - 1}.")
    assert send(gateway, {**BODY, "max_tokens": MAX_TOKENS - 1}).status_code == 200


def test_tpm_a_request_that_fits_when_the_minute_moves_on_is_a_429_with_the_true_wait(gateway, fake_openai):
    token = gateway.world.token
    token.tpm = 2 * (PROMPT + MAX_TOKENS) - 1
    token.save()
    gateway.wait_config()
    with InFlight(gateway, fake_openai):  # its estimate stays counted in this minute's bucket
        refused = send(gateway)
    s = time.time() % 60
    error = refused.json()["error"]
    assert refused.status_code == 429 and error["code"] == "rate_limit_tpm" and "x-should-retry" not in refused.headers
    wait = int(refused.headers["retry-after"])
    # This minute holds PROMPT + MAX_TOKENS; room for as many again comes only when the sliding window
    # has let almost all of it go: near the end of the NEXT minute (≈ 120 − s; ≈ 60 − s had the
    # minute turned between the two requests) — never a blind "end of this minute".
    assert abs(wait - (120 - s)) <= 2 or abs(wait - (60 - s)) <= 2, (wait, s)
    assert error["retry_after"] == wait and refused.headers["x-ratelimit-reset-tokens"] == f"{wait}s"
    assert error["requested"] == PROMPT + MAX_TOKENS and error["limit"] == token.tpm
    assert error["message"] == (f"Rate limit reached: {token.tpm} tokens per minute for this token, {error['used']} used in "
                                f"the last minute; this request counts {PROMPT + MAX_TOKENS} tokens. Retry after {wait} s.")


def test_rpm_is_a_429_with_the_window_reset_and_a_zero_rpm_is_refused_for_good(gateway):
    token = gateway.world.token
    token.rpm = 1
    token.save()
    gateway.wait_config()
    assert send(gateway).status_code == 200
    refused = send(gateway)
    error = refused.json()["error"]
    assert refused.status_code == 429 and error["code"] == "rate_limit_rpm" and "x-should-retry" not in refused.headers
    wait = int(refused.headers["retry-after"])
    # One request this minute, limit 1: room comes back once it has left the sliding window —
    # after the end of this minute, and no later than the end of the next one.
    # One request counted, limit 1: the sliding window lets it go only at the end of the next
    # minute (≈ 120 − s), or of this one (≈ 60 − s) if the minute turned between the two requests.
    s = time.time() % 60
    assert abs(wait - (120 - s)) <= 2 or abs(wait - (60 - s)) <= 2, (wait, s)
    assert (error["limit"], error["used"], error["retry_after"]) == (1, 1, wait)
    token.rpm = 0
    token.save()
    gateway.wait_config()
    never = send(gateway)
    assert never.status_code == 403 and never.json()["error"]["code"] == "rate_limit_rpm"
    assert "retry-after" not in never.headers and never.headers["x-should-retry"] == "false"


def test_the_issue_50_rub_monthly_16_spent_50_concurrent_requests_without_max_tokens(gateway):
    """The issue's reproduction: the refusals say what is true — 16 RUB spent, the rest held by the
    requests in flight, the cost of a request without max_tokens and why, and a max_tokens that fits."""
    from apps.billing.models import UsageRecord
    from apps.providers.models import Model, Price

    world = gateway.world
    mock = world.mock_model.provider
    mock.options = {"latency_ms": 4000, "words": 5}
    mock.save()
    big = Model.objects.create(name="demo-large", provider=mock, upstream_model="demo-large", max_output_tokens=16384,
                               context_window=128_000)
    Price.objects.create(model=big, currency="RUB", input_per_1m=10 * RUB, output_per_1m=150 * RUB)
    now = datetime.now(UTC)
    UsageRecord.objects.create(request_id="req_earlier", token=world.token, company=world.company, sell_cost=16 * RUB,
                               status="ok", http_status=200, started_at=now, finished_at=now)
    world.token.limit_monthly = 50 * RUB
    world.token.save()
    gateway.wait_config()
    body = {"model": "demo-large", "messages": [{"role": "user", "content": "Summarise the quarter"}]}
    prompt = tokenizer.count_chat_request(body, encoding=tokenizer.encoding_for_model("demo-large"))
    cost = expected_cost(prompt, 16384, price_in=10 * RUB, price_out=150 * RUB, fx=RUB)
    room = 34 * RUB
    fit = room // cost  # requests whose reservations fit beside each other

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(lambda _: send(gateway, body), range(50)))
    refused = [r for r in responses if r.status_code != 200]
    assert sum(r.status_code == 200 for r in responses) == fit and len(refused) == 50 - fit
    for response in refused:
        error = response.json()["error"]
        assert response.status_code == 429 and error["code"] == "limit_monthly"  # fits later: the limit is not reached
        assert response.headers["retry-after"] == str(FITS_LATER_RETRY_AFTER)
        assert "is reached" not in error["message"]
        held = error["held_requests"] * cost
        assert error["held_requests"] <= fit and error["spent"] == rub(16 * RUB) and error["held"] == rub(held)
        assert error["remaining"] == rub(room - held) and error["request_max_cost"] == rub(cost)
        assert (error["max_output_tokens"], error["max_output_tokens_source"]) == (16384, "model_limit")
        expected_fit = max((m for m in range(16385) if expected_cost(prompt, m, price_in=10 * RUB, price_out=150 * RUB, fx=RUB)
                            <= room - held), default=0)
        assert error["max_tokens_that_fit"] == expected_fit
        assert error["message"].startswith(
            f"The token's monthly spend limit is {rub(50 * RUB)} RUB: {rub(16 * RUB)} RUB spent, {rub(held)} RUB held by "
            f"{error['held_requests']} in-flight request(s), {rub(room - held)} RUB remaining. This request may cost up to "
            f"{rub(cost)} RUB ({prompt} prompt tokens; no max_tokens was given, so the model's output limit of 16384 tokens "
            f"is reserved). It fits once in-flight requests finish")
    # At the peak (all `fit` in flight) the refusal names the max_tokens that fits beside them.
    last = [r.json()["error"] for r in refused if r.json()["error"]["held_requests"] == fit]
    assert last, "no refusal saw every reservation in flight"
    k = last[0]["max_tokens_that_fit"]
    assert 0 < k < 16384 and f"send max_tokens ≤ {k} to fit now." in last[0]["message"]
    # The worked example in docs/billing.md ("Limits and refusals").
    assert (prompt, rub(cost), fit, last[0]["held"], last[0]["remaining"], k) == (
        12, "3.072150", 11, "33.793650", "0.206350", 1099)
    mock.options = {"words": 5}
    mock.save()
    gateway.wait_config()
    gateway.drain(expect=51)


def _holds(client, world) -> tuple[int, ...]:
    token = client.hmget(redis_scripts.held_key(world.token.pk), "a", "n")
    company = client.hmget(redis_scripts.company_key(world.company.pk), "ha", "hn")
    return tuple(int(v or 0) for v in (*token, *company))


def test_holds_are_taken_while_in_flight_and_released_once_by_settle_or_sweeper(gateway, fake_openai):
    client = _redis()
    world = gateway.world
    assert [send(gateway).status_code for _ in range(2)] == [200, 200]
    assert _holds(client, world) == (0, 0, 0, 0)  # settled: nothing held
    with InFlight(gateway, fake_openai) as first:
        assert _holds(client, world) == (COST, 1, COST, 1)
        sweep = client.register_script(redis_scripts.SWEEP)
        # The sweeper takes it (as if its worker had died): the hold goes with it...
        assert sweep(keys=[redis_scripts.RESERVATIONS_KEY, redis_scripts.STREAM_KEY], args=[time.time() + 10**6, 10]) == 1
        assert _holds(client, world) == (0, 0, 0, 0)
    # ...and the request's own settle, later, does not release it a second time.
    assert first.response is not None and _holds(client, world) == (0, 0, 0, 0)
    client.close()
