"""The async reads (``DistinctCount.aget``, ``aread``, ``afrequency``, ``acontains``,
``amembers``) answer as the database does, from inside a running event loop, whether the
counter answers from Redis or falls back to the database (missing, stale, unreachable)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Any, TypeVar

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.exceptions import SynchronousOnlyOperation
from django.core.management import call_command
from django.db import connection, connections

from distinct_counter import DistinctCount
from distinct_counter import connection as redis_connection
from distinct_counter.counting import buckets, stale
from distinct_counter.exceptions import CounterUnavailable, NotCounted
from distinct_counter.models import CounterState
from tests.conftest import distinct_in_db, master
from tests.servers import redis_cache
from tests.testapp.factories import MessageFactory
from tests.testapp.models import Message

pytestmark = pytest.mark.django_db(transaction=True)

T = TypeVar("T")
FIELDS = ("username", "city")


@pytest.fixture(autouse=True)
def built() -> Iterator[None]:
    """Counters start built, as after a deployment's first rebuild_counts; the worker thread
    of ``sync_to_async`` drops its database connection afterwards."""
    call_command("rebuild_counts", verbosity=0)
    yield
    asyncio.run(sync_to_async(connections.close_all)())


def in_loop(make: Callable[[], Awaitable[T]]) -> T:
    """Await ``make()`` inside a running event loop (this thread's, as an ASGI server's)."""

    async def main() -> T:
        return await make()

    return asyncio.run(main())


async def collect(field: str, batch_size: int = 1000) -> list[str]:
    return [v async for v in DistinctCount.amembers(field, Message, batch_size=batch_size)]


def frequencies_in_db(field: str) -> dict[str, int]:
    """The database's own answer: SELECT field, COUNT(*) ... GROUP BY field."""
    table, column = Message._meta.db_table, Message._meta.get_field(field).column
    with connection.cursor() as cur:
        cur.execute(
            f'SELECT "{column}", COUNT(*) FROM "{table}" WHERE "{column}" IS NOT NULL'
            f' GROUP BY "{column}"'
        )
        return {value: int(n) for value, n in cur.fetchall()}


def make_state(state: str, settings: Any) -> None:
    """Bring the counters of Message into ``state``."""
    if state == "missing":
        master().flushall()  # as on a Redis that never saw rebuild_counts
    elif state == "stale":
        # Marked by another process, in the database only: this process learns it on its
        # first Redis call, from the database (so that call must be allowed to query it).
        CounterState.record_stale(["testapp.message.username", "testapp.message.city"], "test")
        redis_connection.reset()
        stale.clear()
    elif state == "unreachable":
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        settings.CACHES = {**settings.CACHES, "default": redis_cache(f"redis://127.0.0.1:{port}/0")}


@pytest.mark.parametrize("state", ["ok", "missing", "stale", "unreachable"])
def test_async_reads_answer_as_the_database_does(state: str, settings: Any) -> None:
    MessageFactory.create_batch(60)
    Message.objects.create(username="only-once", city="Tromsø")
    expected = {f: (distinct_in_db(Message, f), frequencies_in_db(f)) for f in FIELDS}
    make_state(state, settings)

    async def reads(field: str) -> dict[str, Any]:
        probes = [*expected[field][1], "never-seen", None]
        return {
            "read": await DistinctCount.aread(field, Message),
            "get": await DistinctCount.aget(field, Message),
            "frequency": {v: await DistinctCount.afrequency(field, v, Message) for v in probes},
            "contains": {v: await DistinctCount.acontains(field, v, Message) for v in probes},
            "members": await collect(field, batch_size=7),
        }

    source = "redis" if state == "ok" else "database"
    for field in FIELDS:
        count, frequencies = expected[field]
        got = in_loop(partial(reads, field))
        assert (got["read"].count, got["read"].source, got["read"].state) == (
            count,
            source,
            state,
        )
        assert got["get"] == count
        assert got["frequency"] == {**frequencies, "never-seen": 0, None: 0}
        assert got["contains"] == {v: v in frequencies for v in got["contains"]}
        assert sorted(got["members"]) == sorted(frequencies)
        assert len(got["members"]) == count


def test_the_sync_reads_would_raise_inside_the_event_loop() -> None:
    """What the async methods are for: Django refuses the fallback's query inside a loop."""
    MessageFactory.create_batch(5)
    master().flushall()

    async def sync_read_in_loop() -> int:
        return DistinctCount.get("city", Message)

    with pytest.raises(SynchronousOnlyOperation):
        in_loop(sync_read_in_loop)
    assert in_loop(lambda: DistinctCount.aget("city", Message)) == distinct_in_db(Message, "city")


def test_async_reads_under_async_to_sync() -> None:
    """Under ``async_to_sync`` (a sync view calling async code), the database work runs in
    the calling thread, whose connection sees what the test wrote."""
    MessageFactory.create_batch(10)
    master().flushall()

    async def reads() -> tuple[int, list[str]]:
        return await DistinctCount.aget("username", Message), await collect("username")

    count, members = async_to_sync(reads)()
    assert count == len(members) == distinct_in_db(Message, "username")


def ticks_per_value(make: Callable[[], Any]) -> list[int]:
    """For each value of the async iterator, how many times the event loop had run another
    task before it arrived: values of one batch share a tick, each batch waits for a new one."""

    async def main() -> list[int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        try:
            return [ticks async for _ in make()]
        finally:
            task.cancel()

    return asyncio.run(main())


def hgetalls() -> int:
    """The buckets the Redis server has read whole (HGETALL)."""
    return int(master().info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))


def test_amembers_streams_a_few_buckets_per_batch() -> None:
    Message.objects.bulk_create([Message(username=f"user{i}", city=None) for i in range(2500)])
    per_batch = 100 // buckets.LOAD  # buckets of about 100 values

    async def first_value() -> tuple[str, int]:
        before = hgetalls()
        members = DistinctCount.amembers("username", Message, batch_size=100)
        try:
            value = await members.__anext__()
            return value, hgetalls() - before
        finally:
            await members.aclose()

    assert in_loop(first_value)[1] == per_batch  # not the whole set for the first value
    before = hgetalls()
    ticks = ticks_per_value(lambda: DistinctCount.amembers("username", Message, batch_size=100))
    assert len(ticks) == 2500 == distinct_in_db(Message, "username")
    # The loop ran between batches (about 100 values each): never the whole set in one call.
    assert len(set(ticks)) <= -(-(hgetalls() - before) // per_batch)
    assert len(set(ticks)) >= 2500 // 300
    assert in_loop(lambda: collect("username", batch_size=100)).count("user7") == 1


def test_amembers_streams_the_database_fallback_in_batches() -> None:
    Message.objects.bulk_create([Message(username=f"user{i}", city=None) for i in range(2500)])
    master().flushall()
    ticks = ticks_per_value(lambda: DistinctCount.amembers("username", Message, batch_size=100))
    assert len(ticks) == 2500
    assert len(set(ticks)) == 25  # one worker-thread call per 100 rows


def open_cursors() -> int:
    """Server-side cursors open on this thread's database connection."""
    with connection.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM pg_cursors")
        return int(cur.fetchone()[0])


def test_amembers_left_half_read_closes_its_database_cursor() -> None:
    Message.objects.bulk_create([Message(username=f"user{i}", city=None) for i in range(500)])
    master().flushall()

    async def half_read() -> tuple[int, int]:
        members = DistinctCount.amembers("username", Message, batch_size=100)
        await members.__anext__()
        during = await sync_to_async(open_cursors)()
        await members.aclose()
        return during, await sync_to_async(open_cursors)()

    assert in_loop(half_read) == (1, 0)


def test_async_reads_raise_as_the_sync_ones(settings: Any) -> None:
    with pytest.raises(NotCounted):
        in_loop(lambda: DistinctCount.aget("body", Message))
    with pytest.raises(NotCounted):
        in_loop(lambda: collect("body"))
    master().flushall()
    settings.DISTINCT_COUNTER = {**settings.DISTINCT_COUNTER, "FALLBACK": "raise"}
    for read in (
        lambda: DistinctCount.aread("city", Message),
        lambda: DistinctCount.afrequency("city", "Paris", Message),
        lambda: DistinctCount.acontains("city", "Paris", Message),
        lambda: collect("city"),
    ):
        with pytest.raises(CounterUnavailable, match="missing") as exc:
            in_loop(read)
        assert exc.value.state == "missing"


def test_the_first_read_of_a_process_sees_the_stale_marks_of_the_database() -> None:
    """The first read copies the database's marks into Redis after reading the counter's
    state: that state predates them, and must not be answered from (sync reads too)."""
    MessageFactory.create_batch(5)
    CounterState.record_stale(["testapp.message.city"], "another process")
    redis_connection.reset()
    stale.clear()
    assert DistinctCount.read("city", Message).source == "database"
    assert DistinctCount.read("username", Message).source == "redis"
