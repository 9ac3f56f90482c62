"""Real parallel connections against the ledger: each thread has its own PostgreSQL session.

The balance limit lives in one place (the account CHECK, evaluated under the row lock the
insert trigger takes), so however many callers spend at once, exactly the money there is gets spent.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from django.db import connection, transaction
from django.utils import timezone

from apps.billing import services
from apps.billing.exceptions import HoldExpired, IdempotencyConflict, InsufficientFunds
from apps.billing.models import Account, Transfer, TransferKind, TransferStatus
from tests.billing.conftest import RUB

pytestmark = pytest.mark.django_db(transaction=True)

UNIT = 1_000_003  # an odd amount, so partial sums are easy to tell apart
SPENDERS = 50


def _in_parallel(count: int, work: Callable[[int], object]) -> list[tuple[str, object]]:
    """Run work(i) in ``count`` threads, each on its own connection, released together by a barrier."""
    barrier = threading.Barrier(count)
    results: list[tuple[str, object]] = [("missing", None)] * count

    def run(i: int) -> None:
        try:
            connection.ensure_connection()  # connect before the barrier, so the calls really overlap
            barrier.wait(timeout=30)
            results[i] = ("ok", work(i))
        except Exception as exc:  # reported to the test thread
            results[i] = ("error", exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return results


def _outcomes(results: list[tuple[str, object]]) -> Counter:
    return Counter("ok" if status == "ok" else type(value).__name__ for status, value in results)


def _wait_until_blocked(pid: int) -> None:
    """Wait until backend ``pid`` waits on a lock held by another session."""
    deadline = time.monotonic() + 10
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT cardinality(pg_blocking_pids(%s))", [pid])
            if cursor.fetchone()[0]:
                return
            time.sleep(0.005)
    raise AssertionError(f"backend {pid} never blocked")


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def test_it_lets_exactly_ten_of_fifty_parallel_spends_through(books):
    services.top_up(company=books.company, amount=10 * UNIT, idempotency_id="t")

    results = _in_parallel(SPENDERS, lambda i: services.transfer(
        idempotency_id=f"spend-{i}", debit=books.wallet, credit=books.revenue, amount=UNIT, kind=TransferKind.USAGE))

    assert _outcomes(results) == {"ok": 10, "InsufficientFunds": 40}
    assert all(0 <= exc.available < UNIT for status, exc in results if status == "error")
    assert services.balance(books.wallet) == services.Balance(posted=0, pending_debits=0, pending_credits=0, available=0)
    assert services.balance(books.revenue).posted == 10 * UNIT
    assert Transfer.objects.filter(kind=TransferKind.USAGE).count() == 10
    assert services.verify_ledger() == []


def test_it_lets_exactly_ten_of_fifty_parallel_holds_through(books):
    services.top_up(company=books.company, amount=10 * UNIT, idempotency_id="t")

    results = _in_parallel(SPENDERS, lambda i: services.hold(
        idempotency_id=f"hold-{i}", debit=books.wallet, credit=books.revenue, amount=UNIT, ttl_seconds=60))

    assert _outcomes(results) == {"ok": 10, "InsufficientFunds": 40}
    assert services.balance(books.wallet) == services.Balance(posted=10 * UNIT, pending_debits=10 * UNIT, pending_credits=0,
                                                              available=0)
    assert services.verify_ledger() == []

    # Settling the ten in parallel for less releases the rest and nothing is counted twice.
    holds = [value for status, value in results if status == "ok"]
    settled = _in_parallel(len(holds), lambda i: services.post_hold(hold=holds[i], idempotency_id=f"settle-{i}", amount=UNIT - i))
    assert _outcomes(settled) == {"ok": 10}
    spent = sum(UNIT - i for i in range(10))
    assert services.balance(books.wallet) == services.Balance(posted=10 * UNIT - spent, pending_debits=0, pending_credits=0,
                                                              available=10 * UNIT - spent)
    assert services.verify_ledger() == []


def test_it_lets_a_wallet_with_a_credit_limit_go_exactly_to_the_limit(books):
    Account.objects.filter(pk=books.wallet.pk).update(credit_limit=4 * UNIT)
    services.top_up(company=books.company, amount=6 * UNIT, idempotency_id="t")

    def spend_or_hold(i: int) -> Transfer:
        if i % 2:
            return services.hold(idempotency_id=f"hold-{i}", debit=books.wallet, credit=books.revenue, amount=UNIT)
        return services.transfer(idempotency_id=f"spend-{i}", debit=books.wallet, credit=books.revenue, amount=UNIT)

    results = _in_parallel(SPENDERS, spend_or_hold)

    assert _outcomes(results) == {"ok": 10, "InsufficientFunds": 40}
    wallet = services.balance(books.wallet)
    assert wallet.available == 0
    assert wallet.posted - wallet.pending_debits == -4 * UNIT
    assert services.verify_ledger() == []


def test_it_creates_one_wallet_when_two_connections_race(db):
    from apps.accounts.models import Company

    company = Company.objects.create(slug="racer", name="Racer")
    created = threading.Event()
    release = threading.Event()
    second: dict[str, object] = {}  # the late caller's pid and result, and the winner's

    def first() -> None:
        try:
            with transaction.atomic():
                second["winner"] = services.company_wallet(company)
                created.set()
                release.wait(timeout=10)
        finally:
            connection.close()

    def late() -> None:
        second["pid"] = _backend_pid()
        created.wait(timeout=10)
        try:
            second["wallet"] = services.company_wallet(company)
        finally:
            connection.close()

    runner = threading.Thread(target=late)
    winner = threading.Thread(target=first)
    winner.start()
    runner.start()
    created.wait(timeout=10)
    while "pid" not in second:
        time.sleep(0.001)
    _wait_until_blocked(second["pid"])  # the late INSERT waits on the unique index
    release.set()
    winner.join(timeout=10)
    runner.join(timeout=10)

    assert second["wallet"] == second["winner"]
    assert Account.objects.filter(company=company).count() == 1


def _race_same_id(books, *, first_amount: int, second_amount: int, first_commits: bool = True) -> tuple[object, object]:
    """Thread A inserts idempotency id "dup" and holds its transaction open; thread B tries the
    same id (its lookup finds nothing yet, so its INSERT blocks on the unique index); then A
    commits or rolls back. Returns (A's result, B's result or exception)."""
    inserted = threading.Event()
    release = threading.Event()
    out: dict[str, object] = {}

    class Rollback(Exception):
        pass

    def a() -> None:
        try:
            with transaction.atomic():
                out["a"] = services.transfer(idempotency_id="dup", debit=books.wallet, credit=books.revenue, amount=first_amount)
                inserted.set()
                release.wait(timeout=10)
                if not first_commits:
                    raise Rollback
        except Rollback:
            pass
        finally:
            connection.close()

    def b() -> None:
        out["b_pid"] = _backend_pid()
        inserted.wait(timeout=10)
        try:
            out["b"] = services.transfer(idempotency_id="dup", debit=books.wallet, credit=books.revenue, amount=second_amount)
        except Exception as exc:
            out["b"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for thread in threads:
        thread.start()
    inserted.wait(timeout=10)
    while "b_pid" not in out:
        time.sleep(0.001)
    _wait_until_blocked(out["b_pid"])
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    return out["a"], out["b"]


def test_it_returns_the_winners_transfer_to_a_concurrent_retry(books):
    services.top_up(company=books.company, amount=10 * RUB, idempotency_id="t")
    first, second = _race_same_id(books, first_amount=RUB, second_amount=RUB)
    assert isinstance(second, Transfer)
    assert second.pk == first.pk
    assert Transfer.objects.filter(idempotency_id="dup").count() == 1
    assert services.balance(books.wallet).posted == 9 * RUB
    assert services.verify_ledger() == []


def test_it_raises_a_conflict_for_a_concurrent_different_transfer_with_the_same_id(books):
    services.top_up(company=books.company, amount=10 * RUB, idempotency_id="t")
    first, second = _race_same_id(books, first_amount=RUB, second_amount=2 * RUB)
    assert isinstance(second, IdempotencyConflict)
    assert second.existing.pk == first.pk
    assert services.balance(books.wallet).posted == 9 * RUB
    assert services.verify_ledger() == []


def test_it_lets_the_retry_through_when_the_first_caller_rolls_back(books):
    services.top_up(company=books.company, amount=10 * RUB, idempotency_id="t")
    _first, second = _race_same_id(books, first_amount=RUB, second_amount=2 * RUB, first_commits=False)
    assert isinstance(second, Transfer)
    assert Transfer.objects.get(idempotency_id="dup").amount == 2 * RUB
    assert services.balance(books.wallet).posted == 8 * RUB
    assert services.verify_ledger() == []


def test_it_expires_each_hold_exactly_once_with_two_sweepers(books):
    services.top_up(company=books.company, amount=1000 * RUB, idempotency_id="t")
    for i in range(300):
        services.hold(idempotency_id=f"h-{i}", debit=books.wallet, credit=books.revenue, amount=RUB + i, ttl_seconds=60)
    later = timezone.now() + dt.timedelta(minutes=2)

    results = _in_parallel(2, lambda i: services.expire_holds(now=later, batch=7))

    assert _outcomes(results) == {"ok": 2}
    assert sum(count for _status, count in results) == 300
    assert Transfer.objects.filter(status=TransferStatus.EXPIRED).count() == 300
    assert services.balance(books.wallet) == services.Balance(posted=1000 * RUB, pending_debits=0, pending_credits=0,
                                                              available=1000 * RUB)
    assert services.balance(books.revenue).pending_credits == 0
    assert services.verify_ledger() == []


def test_it_settles_or_expires_each_hold_when_posting_races_the_sweeper(books):
    services.top_up(company=books.company, amount=100 * RUB, idempotency_id="t")
    holds = [services.hold(idempotency_id=f"h-{i}", debit=books.wallet, credit=books.revenue, amount=RUB, ttl_seconds=60)
             for i in range(60)]
    later = timezone.now() + dt.timedelta(minutes=2)

    def settle_all() -> Counter:
        # Newest first while the sweeper goes oldest first: the two meet somewhere in the middle.
        outcome: Counter = Counter()
        for i, held in reversed(list(enumerate(holds))):
            try:
                services.post_hold(hold=held, idempotency_id=f"settle-{i}", amount=RUB // 2)
                outcome["posted"] += 1
            except HoldExpired:
                outcome["expired"] += 1
        return outcome

    def sweep() -> int:
        return services.expire_holds(now=later, batch=3)

    results = _in_parallel(2, lambda i: settle_all() if i == 0 else sweep())

    assert _outcomes(results) == {"ok": 2}
    posted_count = results[0][1]["posted"]
    assert posted_count + results[0][1]["expired"] == 60
    assert results[1][1] == 60 - posted_count
    assert Transfer.objects.filter(status=TransferStatus.COMMITTED).count() == posted_count
    assert Transfer.objects.filter(status=TransferStatus.EXPIRED).count() == 60 - posted_count
    assert Transfer.objects.filter(pending__isnull=False).count() == posted_count
    assert services.balance(books.wallet) == services.Balance(
        posted=100 * RUB - posted_count * (RUB // 2), pending_debits=0, pending_credits=0, available=100 * RUB - posted_count * (RUB // 2))
    assert services.verify_ledger() == []


def test_it_never_overdraws_when_parallel_spenders_retry_with_the_same_ids(books):
    services.top_up(company=books.company, amount=5 * UNIT, idempotency_id="t")

    # 50 callers, 10 distinct ids (each sent 5 times at once): 5 ids fit, retries never double charge.
    results = _in_parallel(SPENDERS, lambda i: services.transfer(
        idempotency_id=f"spend-{i % 10}", debit=books.wallet, credit=books.revenue, amount=UNIT))

    ok_ids = {value.idempotency_id for status, value in results if status == "ok"}
    assert len(ok_ids) == 5
    assert all(isinstance(value, InsufficientFunds) for status, value in results if status == "error")
    assert Transfer.objects.filter(idempotency_id__startswith="spend-").count() == 5
    assert services.balance(books.wallet).available == 0
    assert services.verify_ledger() == []
