"""Many writer processes, and rebuilds while they write: the counters end exact."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections, transaction
from django.db.models.signals import pre_delete, pre_save

from distinct_counter.api import rebuild
from distinct_counter.counting.registry import resolve
from tests.conftest import master, stored
from tests.testapp.models import Message

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=["default", "replica"]),
    pytest.mark.slow,
]

ROOT = Path(__file__).parent.parent


def spawn(
    seed: int, ops: int, stop_file: Path | None = None, hot: bool = False
) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.workers", str(seed), str(ops)]
    if stop_file is not None:
        args.append(str(stop_file))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    if hot:
        env["WORKERS_CITIES"] = "3"  # a few values, each written many times a second
    return subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def in_thread(fn: Any) -> threading.Thread:
    """Start ``fn`` in a thread of its own, which closes its database connections at the end."""

    def target() -> None:
        try:
            fn()
        finally:
            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    return thread


def finish(procs: list[subprocess.Popen[str]]) -> list[tuple[int, int]]:
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        _, done, failed = out.split()
        results.append((int(done), int(failed)))
    return results


@contextlib.contextmanager
def writers_running(
    tmp_path: Path, seeds: range, hot: bool = False
) -> Iterator[list[tuple[int, int]]]:
    """Writer processes that keep writing (one per seed) while the block runs, a second after
    they started; the list it yields receives their results once they stopped."""
    stop = tmp_path / "stop"
    procs = [spawn(seed, 0, stop, hot=hot) for seed in seeds]
    results: list[tuple[int, int]] = []
    try:
        time.sleep(1.0)
        yield results
    finally:
        stop.touch()
        results += finish(procs)


def assert_counters_equal_database(fields: tuple[str, ...] = ("username", "city")) -> None:
    """Value by value: the Redis hash holds exactly the database's GROUP BY."""
    for field in fields:
        counter = resolve(field, Message)
        assert master().hget(counter.key("meta"), "state") == b"ok"
        in_redis = stored(counter)
        with connections["default"].cursor() as cur:
            cur.execute(
                f'SELECT "{field}", COUNT(*) FROM testapp_message '
                f'WHERE "{field}" IS NOT NULL GROUP BY 1'
            )
            in_db = {value: n for value, n in cur.fetchall()}
        assert in_redis == in_db, field
        assert (
            len(in_redis)
            == Message.objects.values(field).exclude(**{field: None}).distinct().count()
        )


def test_eight_processes_writing_at_once() -> None:
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    results = finish([spawn(seed, 2500) for seed in range(8)])
    assert sum(done for done, _ in results) == 8 * 2500
    assert Message.objects.count() > 0
    assert_counters_equal_database()


def test_rebuilds_while_writers_keep_writing(tmp_path: Path, settings: Any) -> None:
    # Writers never pause: each value settles once no write touched it for the grace.
    settings.DISTINCT_COUNTER = {
        **settings.DISTINCT_COUNTER,
        "REBUILD_GRACE": 0.5,
        "REBUILD_SETTLE": 2.0,
        "REBUILD_BATCH_SIZE": 200,
    }
    Message.objects.bulk_create(
        [Message(username=f"user{i % 60}", city=f"city{i % 25}") for i in range(20000)]
    )
    with writers_running(tmp_path, range(100, 104)) as results:
        for database in ("default", "replica", "default"):
            # No counter to start from on the first rebuild: it is built under the writers.
            call_command("rebuild_counts", "testapp.Message", database=database, verbosity=0)
            time.sleep(0.5)
    assert all(done > 0 for done, _ in results)
    # Exact once the writers stop, without a second rebuild.
    assert_counters_equal_database()
    call_command("rebuild_counts", "testapp.Message", check=True, stdout=StringIO())


def test_a_scan_longer_than_the_grace_needs_no_wait_after_the_swap_and_stays_exact(
    tmp_path: Path, settings: Any
) -> None:
    # The progress callback holds the rebuild after its scan began for longer than the
    # grace: every write the scan saw has reached Redis before the swap, so the first
    # window ends at the swap, while writers keep writing. From the replica: the primary's
    # scans wait for no grace at all.
    settings.DISTINCT_COUNTER = {
        **settings.DISTINCT_COUNTER,
        "REBUILD_GRACE": 0.1,
        "REBUILD_SETTLE": 5.0,
        "REBUILD_BATCH_SIZE": 20,
    }
    Message.objects.bulk_create(
        [Message(username=f"user{i % 60}", city=f"city{i % 25}") for i in range(5000)]
    )
    with writers_running(tmp_path, range(300, 303)):
        for field in ("username", "city"):
            rebuild(
                resolve(field, Message), using="replica", progress=lambda *args: time.sleep(0.05)
            )
    assert_counters_equal_database()


def test_values_written_more_often_than_the_grace_settle_under_a_table_lock(
    tmp_path: Path, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Six values, two writers that never pause: some value is always inside its window.
    # REBUILD_SETTLE 0 makes the rebuild turn to its last resort (a recount with the table's
    # writes paused) at once, whatever the machine's speed. From the replica: a scan of the
    # primary knows its writes by transaction id, and needs no recount.
    settings.DISTINCT_COUNTER = {
        **settings.DISTINCT_COUNTER,
        "REBUILD_GRACE": 0.3,
        "REBUILD_SETTLE": 0,
    }
    Message.objects.bulk_create([Message(username=f"u{i}", city=f"c{i % 6}") for i in range(500)])
    with writers_running(tmp_path, range(200, 202), hot=True):
        with caplog.at_level("INFO", logger="distinct_counter"):
            [result] = rebuild(resolve("city", Message), using="replica")
    assert result.settled is True
    assert "with writes paused" in caplog.text
    assert_counters_equal_database(("city",))


def test_two_rebuilds_of_one_counter_do_not_run_at_once(settings: Any) -> None:
    settings.DISTINCT_COUNTER = {**settings.DISTINCT_COUNTER, "REBUILD_BATCH_SIZE": 10}
    Message.objects.bulk_create([Message(username=f"u{i}", city=f"c{i}") for i in range(100)])
    counter = resolve("city", Message)
    inside, release = threading.Event(), threading.Event()

    def slow_progress(*args: Any) -> None:
        inside.set()
        release.wait(30)

    errors: list[BaseException] = []

    def first() -> None:
        try:
            rebuild(counter, using="default", progress=slow_progress)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = in_thread(first)
    try:
        assert inside.wait(30)
        with pytest.raises(CommandError, match="another rebuild of testapp.message.city"):
            call_command("rebuild_counts", "testapp.Message.city", verbosity=0)
    finally:
        release.set()
        thread.join(60)
    assert not errors
    assert_counters_equal_database(("city",))


# -- a row re-inserted while another transaction found it missing ------------------------------


def _waiting_on_advisory_lock() -> bool:
    with connections["default"].cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        return bool(cur.fetchone()[0])


@pytest.mark.parametrize("second", ["delete", "save"])
def test_a_deleted_row_saved_again_while_another_writer_finds_it_missing(second: str) -> None:
    """``save()`` of an instance whose row was deleted re-inserts it (UPDATE, then INSERT).
    Another writer that found the row missing (its lock read nothing) must not then delete or
    update the re-inserted row without counting it: the absence is locked too."""
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    row = Message.objects.create(username="ann", city="Paris")
    resurrecting, other = Message.objects.get(pk=row.pk), Message.objects.get(pk=row.pk)
    row.delete()
    paused, resume = threading.Event(), threading.Event()
    signal = pre_delete if second == "delete" else pre_save
    main = threading.get_ident()

    def pause(sender: Any, **kwargs: Any) -> None:
        # Runs after the counting handler (connected first) has read the row as missing,
        # and before the DELETE or UPDATE statement.
        if threading.get_ident() != main:
            paused.set()
            resume.wait(30)

    def second_writer() -> None:
        if second == "delete":
            other.delete()
        else:
            other.username = "cid"
            other.save()

    def resurrect() -> None:
        resurrecting.username = "bob"
        resurrecting.save()

    signal.connect(pause, sender=Message, dispatch_uid="test-pause")
    try:
        first = in_thread(second_writer)
        assert paused.wait(30)
        signal.disconnect(sender=Message, dispatch_uid="test-pause")
        again = in_thread(resurrect)
        # The re-insert either completes (nothing locked the absence) or waits for the
        # second writer's advisory lock.
        deadline = time.monotonic() + 30
        while again.is_alive() and not _waiting_on_advisory_lock():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        resume.set()
        first.join(30)
        again.join(30)
    finally:
        resume.set()
        signal.disconnect(sender=Message, dispatch_uid="test-pause")
    assert not first.is_alive() and not again.is_alive()
    assert_counters_equal_database()


def test_an_insert_of_an_explicit_pk_waits_for_a_writer_that_found_it_missing() -> None:
    """``create(pk=...)`` takes the lock a writer holds on a missing row's absence."""
    from distinct_counter.counting.rows import lock_absent

    pk = 987654
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with transaction.atomic():
            lock_absent(Message, "default", [str(pk)])  # the same pk, given as text
            holding.set()
            release.wait(30)

    holder = in_thread(hold)
    try:
        assert holding.wait(30)
        inserter = in_thread(lambda: Message.objects.create(pk=pk, username="ann", city="Paris"))
        deadline = time.monotonic() + 30
        while not _waiting_on_advisory_lock():
            assert inserter.is_alive(), "the insert did not wait for the lock"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        release.set()
        holder.join(30)
    inserter.join(30)
    assert Message.objects.filter(pk=pk).exists()


# -- every model shape, written by many processes at once -------------------------------------


def spawn_shapes(seed: int, ops: int) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.shape_workers", str(seed), str(ops)]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    return subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def test_shapes_written_by_five_processes_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    """Proxies, multi-table children, the delete collector's rewrites, expressions and
    bulk_create's conflicts, under concurrent writers: exact value by value. Only a Tag
    counter may end stale (an update_conflicts that updated a row inserted meanwhile), and
    is exact once rebuilt."""
    from distinct_counter import DistinctCount
    from distinct_counter.counting.registry import all_counters
    from tests.shapes.models import Owner
    from tests.test_write_paths import in_database, in_redis

    call_command("rebuild_counts", verbosity=0)
    Owner.objects.create(name="fallback")  # SET(fallback_owner)'s target, never deleted
    Owner.objects.bulk_create([Owner(name=f"o{i}") for i in range(5)])
    seed = int(os.environ.get("SHAPE_WORKERS_SEED", 0))  # to run other interleavings
    procs = [spawn_shapes(seed + i, 300) for i in range(5)]
    failures: dict[str, int] = {}
    total = 0
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        first, *kinds = out.splitlines()
        _, done, _failed = first.split()
        total += int(done)
        for line in kinds:
            kind, n = line.split()
            failures[kind] = failures.get(kind, 0) + int(n)
    counters = [c for c in all_counters() if c.model._meta.app_label == "shapes"]
    states = {c.label: DistinctCount.read(c.field.name, c.model) for c in counters}
    stale = sorted(label for label, result in states.items() if result.state == "stale")
    with capsys.disabled():
        print(f"\nshapes writers: {total} ops, failed {failures}, stale {stale or 'none'}")
    assert all(label.startswith("shapes.tag.") for label in stale), stale
    if stale:
        call_command("rebuild_counts", stale=True, verbosity=0)
    wrong = {
        c.label: {
            v: (in_redis(c).get(v), n)
            for v, n in {**in_redis(c), **in_database(c)}.items()
            if in_redis(c).get(v) != in_database(c).get(v)
        }
        for c in counters
        if in_redis(c) != in_database(c)
    }
    assert not wrong, wrong
    for counter in counters:
        result = DistinctCount.read(counter.field.name, counter.model)
        assert (result.source, result.state) == ("redis", "ok"), counter.label
        assert result.count == len(in_database(counter)), counter.label


@pytest.mark.parametrize("field", ["vet", "sitter", "carer"])
def test_a_pet_repointed_while_its_owner_is_deleted(field: str) -> None:
    """Django's collector reads the rows pointing at a deleted row before the deletion's
    transaction and signals, and for ``SET_DEFAULT`` and ``SET(callable)`` (not ``SET_NULL``)
    later updates those rows by primary key, whatever they point at by then. A pet re-pointed
    at another owner in between is rewritten too."""
    from django.db.models.deletion import Collector

    from tests.shapes.models import Owner, Pet
    from tests.test_write_paths import assert_exact

    call_command("rebuild_counts", verbosity=0)
    Owner.objects.create(name="fallback")
    ann, bob = Owner.objects.create(name="ann"), Owner.objects.create(name="bob")
    pet = Pet.objects.create(name="p", **{field: ann})
    collected, resume = threading.Event(), threading.Event()
    original = Collector.delete

    def paused_delete(self: Collector) -> Any:
        if threading.get_ident() != main:
            collected.set()
            resume.wait(30)
        return original(self)

    main = threading.get_ident()
    errors: list[BaseException] = []

    def delete_ann() -> None:
        try:
            ann.delete()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with mock.patch.object(Collector, "delete", paused_delete):
        deleter = in_thread(delete_ann)
        try:
            assert collected.wait(30)
            setattr(pet, field, bob)
            pet.save()  # commits before the deletion's transaction begins
        finally:
            resume.set()
            deleter.join(30)
    assert not errors
    assert_exact()


def wait_for_a_lock_wait(statement: str) -> None:
    """Wait until a session runs a ``statement`` (its first word) that waits for a lock."""
    deadline = time.monotonic() + 30
    with connections["default"].cursor() as cur:
        while True:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE %s",
                [f"{statement}%"],
            )
            if cur.fetchone()[0]:
                return
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_a_save_waiting_for_another_writers_lock_takes_away_the_value_it_committed() -> None:
    """Two saves of one row from instances loaded before either: the second waits for the
    first's row lock, then must take a reference from the value the first committed, not
    from the value both loaded (its UPDATE reads the old value as it is when it gets the
    lock)."""
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    row = Message.objects.create(username="ann", city="Paris")
    first, second = Message.objects.get(pk=row.pk), Message.objects.get(pk=row.pk)
    locked, release = threading.Event(), threading.Event()

    def first_writer() -> None:
        with transaction.atomic():
            first.city = "Rome"
            first.save()
            locked.set()
            release.wait(30)

    thread = in_thread(first_writer)
    assert locked.wait(30)
    waiting = in_thread(lambda: (setattr(second, "city", "Oslo"), second.save()))
    wait_for_a_lock_wait("UPDATE")
    release.set()
    thread.join(30)
    waiting.join(30)
    assert Message.objects.get(pk=row.pk).city == "Oslo"
    assert_counters_equal_database()  # Rome taken away, Paris once, not twice


def test_a_save_of_a_loaded_row_is_one_statement() -> None:
    """No BEGIN, SELECT or COMMIT of its own: the UPDATE reads the old values."""
    from django.test.utils import CaptureQueriesContext

    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    row = Message.objects.create(username="ann", city="Paris")
    loaded = Message.objects.get(pk=row.pk)
    loaded.city = "Rome"
    with CaptureQueriesContext(connections["default"]) as queries:
        loaded.save()
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["UPDATE"]
    assert_counters_equal_database()


def test_an_update_meeting_a_row_another_writer_changed_updates_it_from_its_new_value() -> None:
    """``update()`` reads and updates its rows in one statement without locking them
    first; a row another transaction changes meanwhile is updated again, locked, and its
    reference taken from the value that transaction committed."""
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    rows = [Message.objects.create(username=f"u{i}", city="Paris") for i in range(3)]
    locked, release = threading.Event(), threading.Event()

    def first_writer() -> None:
        with transaction.atomic():
            Message.objects.filter(pk=rows[1].pk).update(city="Rome")
            locked.set()
            release.wait(30)

    thread = in_thread(first_writer)
    assert locked.wait(30)
    pks = [r.pk for r in rows]
    waiting = in_thread(lambda: Message.objects.filter(pk__in=pks).update(city="Oslo"))
    wait_for_a_lock_wait("WITH")
    release.set()
    thread.join(30)
    waiting.join(30)
    assert set(Message.objects.filter(pk__in=pks).values_list("city", flat=True)) == {"Oslo"}
    assert_counters_equal_database()  # Rome taken away once, Paris three times
