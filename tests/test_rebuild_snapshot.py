"""A rebuild on PostgreSQL is exact by transaction id, not by time: a write the scan saw
is never applied on top of it, however late it reaches Redis, and one it did not see
always is, with no wait (``REBUILD_GRACE``) after the swap."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import transaction

from distinct_counter.api import rebuild
from distinct_counter.counting import deltas
from distinct_counter.counting import rebuild as rebuild_module
from distinct_counter.counting.registry import resolve
from tests.test_concurrency import assert_counters_equal_database, in_thread
from tests.testapp.models import Message

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])


# Each write takes ``n`` (0, 1...) and touches rows no other ``n`` touches.
def _save_new(n: int) -> None:
    Message.objects.create(username=f"late{n}", city=f"Lateville{n}")


def _save_changed(n: int) -> None:
    m = Message.objects.get(username=f"u{n}")
    m.city = "Lateville"
    m.save()


def _save_in_atomic(n: int) -> None:
    with transaction.atomic():
        Message.objects.create(username=f"late{n}", city="Lateville")
        Message.objects.filter(username=f"u{n}").update(city=f"Lateville{n}")


def _creates_in_atomic(n: int) -> None:
    # Only the first INSERT returns the transaction's id; the others' deltas share it.
    with transaction.atomic():
        for i in range(3):
            Message.objects.create(username=f"late{n}-{i}", city=f"Lateville{i}")


def _model_delete(n: int) -> None:
    Message.objects.get(username=f"u{n}").delete()


def _queryset_delete(n: int) -> None:
    Message.objects.filter(city=f"c{n}").delete()


def _queryset_update(n: int) -> None:
    Message.objects.filter(city=f"c{n}").update(city="Lateville", username=f"late{n}")


def _bulk_create(n: int) -> None:
    Message.objects.bulk_create([Message(username=f"late{n}", city=f"L{i}") for i in range(5)])


def _bulk_update(n: int) -> None:
    rows = list(Message.objects.filter(city=f"c{n}"))
    for row in rows:
        row.city = "Lateville"
    Message.objects.bulk_update(rows, ["city"])


WRITES: dict[str, Callable[[int], None]] = {
    f.__name__.strip("_"): f
    for f in (
        _save_new,
        _save_changed,
        _save_in_atomic,
        _creates_in_atomic,
        _model_delete,
        _queryset_delete,
        _queryset_update,
        _bulk_create,
        _bulk_update,
    )
}


def _seed() -> None:
    Message.objects.bulk_create([Message(username=f"u{i}", city=f"c{i % 4}") for i in range(40)])
    _rebuild_both()


def _rebuild_both(**kwargs: Any) -> None:
    """Rebuild both counters of ``Message`` from the primary."""
    for field in ("username", "city"):
        rebuild(resolve(field, Message), using="default", **kwargs)


@pytest.mark.parametrize("write", WRITES)
def test_a_write_the_scan_saw_reaching_redis_after_the_swap_is_not_counted_twice(
    write: str, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer commits, then stalls far longer than the grace before its Redis call; both
    # rebuilds run in between (their scans see its rows) and end before it arrives.
    settings.DISTINCT_COUNTER = {**settings.DISTINCT_COUNTER, "REBUILD_GRACE": 0.05}
    _seed()
    committed, release = threading.Event(), threading.Event()
    send = deltas.send

    def stalled_send(*args: Any, **kwargs: Any) -> None:
        if threading.current_thread() is writer:
            committed.set()
            assert release.wait(30)
        send(*args, **kwargs)

    monkeypatch.setattr(deltas, "send", stalled_send)
    writer = in_thread(lambda: WRITES[write](0))
    assert committed.wait(30)
    _rebuild_both()
    release.set()
    writer.join(30)
    assert_counters_equal_database()


@pytest.mark.parametrize("write", WRITES)
def test_a_write_committed_during_the_scan_is_counted_once(
    write: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writes commit and reach Redis while the scan streams (after its snapshot): the
    # scan does not see them, the new counter does.
    _seed()
    done: dict[Any, int] = {}

    def write_once(counter: Any, *args: Any) -> None:
        if counter not in done:  # the first call of each rebuild: while it scans
            done[counter] = len(done)
            in_thread(lambda: WRITES[write](done[counter])).join(30)

    _rebuild_both(progress=write_once)
    assert len(done) == 2
    assert_counters_equal_database()


@pytest.mark.parametrize("write", WRITES)
def test_a_write_reaching_redis_before_the_snapshot_is_published_is_counted_once(
    write: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between the start of the rebuild (writers told to keep their transaction ids) and
    # the scan's snapshot: the scan sees the write, which Redis already holds.
    _seed()
    wait_for_replay = rebuild_module._wait_for_replay
    done: list[int] = []

    def write_then_wait(*args: Any) -> None:
        done.append(len(done))
        in_thread(lambda: WRITES[write](done[-1])).join(30)
        wait_for_replay(*args)

    monkeypatch.setattr(rebuild_module, "_wait_for_replay", write_then_wait)
    _rebuild_both()
    assert_counters_equal_database()


@pytest.mark.parametrize("write", WRITES)
def test_a_transaction_open_across_the_snapshot_is_counted_once(write: str) -> None:
    # The writer's transaction has written (it has an id, below the snapshot's xmax) but not
    # committed when the scan's snapshot is taken: the scan does not see it; its deltas,
    # arriving after the swap, are applied.
    _seed()
    wrote, release = threading.Event(), threading.Event()

    def open_transaction() -> None:
        with transaction.atomic():
            WRITES[write](0)
            wrote.set()
            assert release.wait(30)

    writer = in_thread(open_transaction)
    assert wrote.wait(30)
    _rebuild_both()
    release.set()
    writer.join(30)
    assert_counters_equal_database()


def test_a_rebuild_from_the_primary_does_not_wait_for_the_grace(settings: Any) -> None:
    # A grace far longer than the rebuild: a rebuild that waited for it would not end in time.
    settings.DISTINCT_COUNTER = {**settings.DISTINCT_COUNTER, "REBUILD_GRACE": 600}
    Message.objects.bulk_create([Message(username=f"u{i}", city=f"c{i % 4}") for i in range(40)])
    started = time.monotonic()
    _rebuild_both()
    assert time.monotonic() - started < 60
    Message.objects.create(username="after", city="c9")
    assert_counters_equal_database()
