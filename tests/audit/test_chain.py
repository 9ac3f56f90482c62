"""The trail is append-only and tamper-evident: PostgreSQL refuses changes, and ``audit_verify``
names the first broken link when someone with database access makes one anyway."""

from __future__ import annotations

import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, connections, transaction

from apps.audit import services
from apps.audit.chain import GENESIS, row_hash
from apps.audit.models import AuditEvent
from tests.audit.conftest import events, tamper


def _append(n: int, action: str = "price.changed") -> list[AuditEvent]:
    """``n`` events, sealed, as read back."""
    ids = [services.record(action, after={"input_per_1m": 100 + i}, object_type="providers.Price", object_id=i).pk for i in range(n)]
    services.seal_pending()
    return list(AuditEvent.objects.filter(pk__in=ids).order_by("seq"))


def _verify() -> str:
    from io import StringIO

    out = StringIO()
    call_command("audit_verify", stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_it_chains_each_event_to_the_one_before():
    first, second, third = _append(3)
    assert (first.seq, second.seq, third.seq) == (1, 2, 3)
    assert first.prev_hash == GENESIS
    assert second.prev_hash == first.hash and third.prev_hash == second.hash
    for event in events():
        assert row_hash(event) == event.hash  # what is read back hashes as what was written
    assert services.verify_chain().ok
    assert "3 rows" in _verify() and third.hash in _verify()


@pytest.mark.django_db
def test_it_hashes_every_field_so_any_edit_shows():
    event = _append(1)[0]
    for name, value in [("action", "token.created"), ("actor_email", "x@example.com"), ("company_id", 7),
                        ("after", {"input_per_1m": 1}), ("client_ip", "10.0.0.1"), ("object_label", "other")]:
        original = getattr(event, name)
        setattr(event, name, value)
        assert row_hash(event) != event.hash, name
        setattr(event, name, original)
    assert row_hash(event) == event.hash


@pytest.mark.django_db
def test_postgresql_refuses_to_update_or_delete_an_event():
    event = _append(1)[0]
    pending = services.record("token.created")
    for attempt in (
        lambda: AuditEvent.objects.filter(pk=event.pk).update(action="token.created"),
        lambda: AuditEvent.objects.filter(pk=event.pk).update(seq=None, hash=None),
        lambda: AuditEvent.objects.filter(pk=event.pk).update(seq=99, hash="f" * 64),  # sealed once, never again
        lambda: AuditEvent.objects.filter(pk=event.pk).delete(),
        lambda: event.save(),
        lambda: AuditEvent.objects.filter(pk=pending.pk).update(action="price.changed"),  # pending content is fixed too
        lambda: AuditEvent.objects.filter(pk=pending.pk).update(seq=2, hash="f" * 64, actor_email="x@example.com"),
        lambda: AuditEvent.objects.filter(pk=pending.pk).delete(),
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            attempt()
    assert services.seal_pending() == 1  # the one update allowed: the seal
    assert AuditEvent.objects.get(pk=pending.pk).seq == 2
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent")
    assert AuditEvent.objects.get(pk=event.pk).action == "price.changed"


@pytest.mark.django_db(transaction=True)
def test_audit_verify_names_an_edited_row():
    rows = _append(4)
    tamper("UPDATE audit_auditevent SET after = %s WHERE id = %s", ('{"input_per_1m": 1}', rows[2].pk))
    result = services.verify_chain()
    assert result.broken is not None and (result.broken.kind, result.broken.seq) == ("edited", 3)
    assert result.checked == 2
    with pytest.raises(CommandError, match=r"\(edited\): row seq=3 id=\d+ \(price.changed\) was edited"):
        _verify()


@pytest.mark.django_db(transaction=True)
def test_audit_verify_names_a_deleted_row():
    rows = _append(4)
    tamper("DELETE FROM audit_auditevent WHERE id = %s", (rows[1].pk,))
    result = services.verify_chain()
    assert result.broken is not None and (result.broken.kind, result.broken.seq) == ("deleted", 3)
    with pytest.raises(CommandError, match=r"\(deleted\): the row before seq=3 .* is missing \(after seq=1\)"):
        _verify()


@pytest.mark.django_db(transaction=True)
def test_audit_verify_names_a_deleted_first_row():
    rows = _append(2)
    tamper("DELETE FROM audit_auditevent WHERE id = %s", (rows[0].pk,))
    assert services.verify_chain().broken.kind == "deleted"


@pytest.mark.django_db(transaction=True)
def test_audit_verify_names_a_reordered_row():
    rows = _append(4)
    # Swap the positions of rows 2 and 3 (through a free number: seq is unique); their contents stay intact.
    tamper("UPDATE audit_auditevent SET seq = -1 WHERE seq = 2; UPDATE audit_auditevent SET seq = 2 WHERE seq = 3; "
           "UPDATE audit_auditevent SET seq = 3 WHERE seq = -1")
    result = services.verify_chain()
    assert result.broken is not None and result.broken.kind == "reordered"
    assert result.broken.id == rows[2].pk
    assert "was appended after row seq=3 but now follows seq=1" in result.broken.message  # the rows traded places


@pytest.mark.django_db(transaction=True)
def test_audit_verify_exits_non_zero_from_the_command_line(capsys):
    from django.core.management import execute_from_command_line

    rows = _append(2)
    execute_from_command_line(["manage.py", "audit_verify"])
    assert "audit chain intact: 2 rows" in capsys.readouterr().out
    tamper("UPDATE audit_auditevent SET actor_email = 'nobody@example.com' WHERE id = %s", (rows[0].pk,))
    with pytest.raises(SystemExit) as exited:
        execute_from_command_line(["manage.py", "audit_verify"])
    assert exited.value.code == 1
    assert "seq=1" in capsys.readouterr().err


@pytest.mark.django_db(transaction=True)
def test_an_anchor_kept_outside_catches_a_cut_tail():
    rows = _append(3)
    anchor = f"{rows[2].seq}:{rows[2].hash}"
    _verify()
    call_command("audit_verify", anchor=[anchor])
    tamper("DELETE FROM audit_auditevent WHERE seq = 3")
    assert services.verify_chain().ok  # the chain alone cannot see a cut tail…
    with pytest.raises(CommandError, match="anchored row seq=3 is missing"):
        call_command("audit_verify", anchor=[anchor])  # …the anchor can
    with pytest.raises(CommandError, match="SEQ:HASH"):
        call_command("audit_verify", anchor=["3:nothex"])


@pytest.mark.django_db
def test_a_pending_event_is_sealed_on_verify_and_a_rolled_back_one_never_exists():
    _append(1)
    with pytest.raises(RuntimeError), transaction.atomic():
        services.record("token.blocked")
        raise RuntimeError
    services.record("token.revoked")
    assert AuditEvent.objects.filter(seq__isnull=True).count() == 1
    result = services.verify_chain()
    assert result.ok and result.checked == 2 and not AuditEvent.objects.filter(seq__isnull=True).exists()
    assert [e.action for e in events()] == ["price.changed", "token.revoked"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_from_several_threads_keep_one_chain():
    threads_n, per_thread = 6, 15
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                with transaction.atomic():  # each its own transaction, as services record them
                    services.record("token.created", object_type="proxy.ApiToken", object_id=f"{index}-{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    rows = events()
    assert [row.seq for row in rows] == list(range(1, threads_n * per_thread + 1))  # each sealed on its commit
    assert len({row.prev_hash for row in rows}) == len(rows)  # no two rows chained to the same head: no fork
    assert services.verify_chain().ok


@pytest.mark.django_db(transaction=True)
def test_a_transaction_recording_many_events_seals_them_once_after_commit(django_assert_max_num_queries):
    with transaction.atomic():
        for i in range(20):
            services.record("token.created", object_id=i)
        assert AuditEvent.objects.filter(seq__isnull=True).count() == 20  # pending until the commit
    assert not AuditEvent.objects.filter(seq__isnull=True).exists()
    assert [e.seq for e in events()] == list(range(1, 21))
    with django_assert_max_num_queries(10):  # BEGIN, two inserts, COMMIT, then one seal: BEGIN, lock, head, rows, one update, COMMIT
        with transaction.atomic():
            services.record("token.revoked")
            services.record("token.revoked")
