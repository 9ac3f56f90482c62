"""Limit resets (apps/proxy/rollover.py): the new calendar window's counters come from the ledger,
running twice or beside requests in flight changes nothing counted; a reached limit blocks the
token with its reason, the window's rollover (or a raised limit) unblocks it; a person's block stays."""

from __future__ import annotations

import time
import zoneinfo

import redis as redis_lib
from django.conf import settings
from django.db.models import Sum

from apps.billing.models import UsageRecord
from apps.proxy import redis_scripts, services
from apps.proxy.models import ApiToken, TokenStatus
from apps.proxy.pipeline.refusals import rub
from apps.proxy.rollover import roll_over
from apps.proxy.tasks import reset_limits
from apps.proxy.windows import calendar_bounds, window_ids
from tests.proxy.helpers import chat, exact_mock, reservation_for


def _next_month(world) -> float:
    """Unix seconds a minute into next month, in the company's zone."""
    return calendar_bounds(zoneinfo.ZoneInfo(world.company.time_zone), time.time())[3].timestamp() + 60


def _keys(world, now: float) -> redis_scripts.SpendKeys:
    week, month, _, _ = window_ids(zoneinfo.ZoneInfo(world.company.time_zone), now)
    return redis_scripts.SpendKeys.for_token(token_id=world.token.pk, company_id=world.company.pk, department_id=None,
                                             week=week, month=month)


def _spent_since(world, since) -> int:
    return UsageRecord.objects.filter(token=world.token, started_at__gte=since).aggregate(s=Sum("sell_cost"))["s"] or 0


def test_the_new_window_is_opened_from_the_ledger_and_a_second_run_changes_nothing(gateway):
    world = gateway.world
    exact_mock(gateway)
    assert [chat(gateway).status_code for _ in range(2)] == [200, 200]
    gateway.drain(expect=2)
    spent = _spent_since(world, calendar_bounds(zoneinfo.ZoneInfo(world.company.time_zone), time.time())[2])
    assert spent == 2 * reservation_for(gateway)
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    later = _next_month(world)
    new = _keys(world, later)
    assert not client.exists(new.month)

    report = roll_over(now=later)
    assert report.opened == [world.token.pk]
    week_start = calendar_bounds(zoneinfo.ZoneInfo(world.company.time_zone), later)[0]
    assert int(client.get(new.month)) == 0  # nothing spent in the new month yet
    assert int(client.get(new.week)) == _spent_since(world, week_start)  # the ISO week may straddle the months
    assert int(client.get(new.total)) == spent
    assert 0 < client.ttl(new.month) <= redis_scripts.WINDOW_TTL

    client.incrby(new.month, 777)  # a request in flight reserves in the new window
    assert roll_over(now=later).opened == []  # twice: nothing re-seeded, the reservation still counted
    assert int(client.get(new.month)) == 777

    current = _keys(world, time.time())
    client.delete(current.month)  # Redis lost the window: the next run re-seeds it from the ledger
    assert roll_over().opened == [world.token.pk]
    assert int(client.get(current.month)) == spent
    assert reset_limits() == 0  # the beat task: everything already open, no limit reached
    client.close()


def test_a_reached_monthly_limit_blocks_the_token_until_the_month_rolls_over(gateway):
    world = gateway.world
    exact_mock(gateway)
    cost = reservation_for(gateway)
    token = world.token
    token.limit_monthly = 2 * cost
    token.save()
    gateway.wait_config()
    assert [chat(gateway).status_code for _ in range(3)] == [200, 200, 402]  # the third can never fit
    gateway.drain(expect=3)

    report = roll_over()
    assert report.blocked == [token.pk]
    token.refresh_from_db()
    month_end = calendar_bounds(zoneinfo.ZoneInfo(world.company.time_zone), time.time())[3]
    assert token.status == TokenStatus.BLOCKED
    assert token.status_reason == (f"Limit reached: the monthly spend limit of {rub(2 * cost)} RUB is spent ({rub(2 * cost)} RUB); "
                                   f"it resets at {month_end.isoformat()}.")
    gateway.wait_config()
    refused = chat(gateway)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "token_blocked"
    assert token.status_reason in refused.json()["error"]["message"]
    assert roll_over().blocked == []  # twice: nothing more

    report = roll_over(now=_next_month(world))  # the month rolled over
    assert report.unblocked == [token.pk] and report.blocked == []
    token.refresh_from_db()
    assert (token.status, token.status_reason) == (TokenStatus.ACTIVE, "")


def test_a_total_limit_stays_blocked_until_a_manager_raises_it_and_a_persons_block_is_never_lifted(gateway):
    world = gateway.world
    exact_mock(gateway)
    cost = reservation_for(gateway)
    token = world.token
    token.limit_total = cost
    token.save()
    gateway.wait_config()
    assert chat(gateway).status_code == 200
    gateway.drain(expect=1)
    assert roll_over().blocked == [token.pk]
    assert roll_over(now=_next_month(world)).unblocked == []  # a total limit has no window
    token.refresh_from_db()
    assert "the total spend limit" in token.status_reason and "a manager can raise it" in token.status_reason

    services.unblock_token(token=token)  # unblocked while still spent: the next run blocks it again
    assert roll_over().blocked == [token.pk]
    token.refresh_from_db()
    services.update_token(token=token, limit_total=3 * cost)  # raised
    assert roll_over().unblocked == [token.pk]
    token.refresh_from_db()
    assert token.status == TokenStatus.ACTIVE

    services.block_token(token=token, reason="Suspicious traffic")
    ApiToken.objects.filter(pk=token.pk).update(limit_total=cost)  # and the limit is reached again
    report = roll_over(now=_next_month(world))
    assert report.blocked == [] and report.unblocked == []
    assert ApiToken.objects.get(pk=token.pk).status_reason == "Suspicious traffic"
