"""Reading the counters: :class:`DistinctCount`, answered from Redis in one round trip, or
from the database while a counter cannot answer.

The async methods run the sync ones in a worker thread with ``asgiref.sync.sync_to_async``, as
Django's own async ORM does (``QuerySet.acount``): a read may reach the database (the
fallback, and the stale marks it loads on its first Redis call), which Django refuses inside
an event loop, and a sync Redis call would block the loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from asgiref.sync import sync_to_async
from django.db import models, router
from django.db.models import Count

from distinct_counter.connection import REDIS_ERRORS, breaker, get_client, round_trip
from distinct_counter.counting import buckets, stale
from distinct_counter.counting.buckets import hash_of
from distinct_counter.counting.conf import conf
from distinct_counter.counting.deltas import sender
from distinct_counter.counting.registry import Counter, resolve
from distinct_counter.counting.scripts import READ, run_all
from distinct_counter.exceptions import CounterUnavailable


@dataclass(frozen=True)
class CountResult:
    """A count and where it came from: ``source`` is ``"redis"`` or ``"database"``; ``state``
    is the counter's: ``"ok"``, ``"stale"``, ``"missing"`` (never built) or ``"unreachable"``."""

    count: int
    source: str
    state: str


def _redis_read(counter: Counter, *values: str) -> tuple[str, list[Any]]:
    """Read the counter's state, its number of values and the count of each of ``values``,
    in one round trip (two on the process's first call, and on the first after Redis
    failed).

    Returns (state, [number of values, count of each value]); state is ``"unreachable"``
    when Redis failed, ``"missing"`` when the counter has no map (never built, or built by
    a version that laid its values out otherwise). Deltas this process queued (``SEND =
    "background"``) are sent first: a request reads its own writes.
    """
    sender.flush()
    alias = conf.CACHE
    gate = breaker(alias)
    unknown: list[Any] = [None] * (1 + len(values))
    if not gate.allow():
        return "unreachable", unknown
    meta = counter.hot_keys()[0]
    args = [x for v in values for x in (v, hash_of(v))]
    for _ in range(2):
        # A first call (or the first after a failure) copies the stale marks (the database's
        # and this process's) into Redis after reading: the state it read may predate them.
        synced = gate.synced and not gate.failed
        try:
            client = get_client(alias, write=False)
            if values:  # The values' buckets depend on the map's size: read in a script.
                reply = run_all(client, [(READ, [meta], args)])[0]
                if isinstance(reply, Exception):
                    raise reply
            else:
                reply = round_trip(client, ("HMGET", meta, "state", "len"))[0]
        except REDIS_ERRORS as exc:
            gate.failure(exc)
            return "unreachable", unknown
        stale.reached(alias)
        if synced or not gate.allow():  # Not copied: this process still knows its marks.
            break
    state, *result = reply
    if stale.is_pending(counter.label):  # Known here, not yet written to Redis.
        return "stale", result
    if state is None or result[0] is None:
        return "missing", result
    return state.decode(), result


def _fallback(counter: Counter, state: str, query: Callable[[str], Any]) -> Any:
    if conf.FALLBACK == "raise":
        hint = "Redis failed" if state == "unreachable" else "run manage.py rebuild_counts"
        raise CounterUnavailable(f"counter {counter.label} is {state} ({hint})", state)
    return query(read_database(counter.model))


def read_database(model: type[models.Model]) -> str:
    """The database alias that fallbacks read from: ``DATABASE``, else the router's choice."""
    return conf.DATABASE or str(router.db_for_read(model))


class DistinctCount:
    """The distinct values of counted fields, answered from Redis.

    ``field`` names a counted field; ``model`` (a model class or ``"app_label.Model"``) is
    needed only when several counted models count a field of that name. While a counter is
    missing (never built), stale (it missed writes) or Redis is unreachable, each method falls
    back to the database, or raises :class:`~distinct_counter.exceptions.CounterUnavailable`
    when ``DISTINCT_COUNTER["FALLBACK"]`` is ``"raise"``.

    Async code awaits the ``a``-prefixed twins (:meth:`aget`, :meth:`aread`,
    :meth:`afrequency`, :meth:`acontains`, ``async for`` over :meth:`amembers`): the same
    arguments and results, with the sync work (Redis and the database fallback) run in a
    worker thread by ``sync_to_async``, as Django's async ORM does.
    """

    @staticmethod
    def read(field: str, model: type[models.Model] | str | None = None) -> CountResult:
        """The number of distinct non-NULL values, with its source and the counter's state."""
        counter = resolve(field, model)
        state, (count, *_) = _redis_read(counter)
        if state == "ok":
            return CountResult(int(count), "redis", state)
        count = _fallback(
            counter,
            state,
            lambda db: counter.model._base_manager.using(db).aggregate(
                n=Count(counter.attname, distinct=True)
            )["n"],
        )
        return CountResult(int(count), "database", state)

    @staticmethod
    def get(field: str, model: type[models.Model] | str | None = None) -> int:
        """The same number as ``SELECT COUNT(DISTINCT field)``, in one Redis round trip."""
        return DistinctCount.read(field, model).count

    @staticmethod
    def frequency(field: str, value: Any, model: type[models.Model] | str | None = None) -> int:
        """The number of rows whose ``field`` holds ``value`` (0 for NULL, which is not
        counted)."""
        counter = resolve(field, model)
        text = counter.normalize(value)
        if text is None:
            return 0
        state, (_, count) = _redis_read(counter, text)
        if state == "ok":
            return max(int(count or 0), 0)
        return int(
            _fallback(
                counter,
                state,
                lambda db: (
                    counter.model._base_manager.using(db)
                    .filter(**{counter.attname: counter.denormalize(text)})
                    .count()
                ),
            )
        )

    @staticmethod
    def contains(field: str, value: Any, model: type[models.Model] | str | None = None) -> bool:
        """Whether any row holds ``value`` in ``field``."""
        return DistinctCount.frequency(field, value, model) > 0

    @staticmethod
    def members(
        field: str, model: type[models.Model] | str | None = None, batch_size: int = 1000
    ) -> Iterator[str]:
        """Iterate over the distinct values, in their normalized text form, in no order.

        Reads the counter's buckets a few at a time (``batch_size`` values or so per round
        trip), so a counter of millions of values streams. A value may come twice when
        writes move it meanwhile.
        """
        for batch in _member_batches(field, model, batch_size):
            yield from batch

    # -- async -------------------------------------------------------------------------------

    @staticmethod
    async def aread(field: str, model: type[models.Model] | str | None = None) -> CountResult:
        """Async :meth:`read`: the same result, safe inside an event loop."""
        return await sync_to_async(DistinctCount.read)(field, model)

    @staticmethod
    async def aget(field: str, model: type[models.Model] | str | None = None) -> int:
        """Async :meth:`get`: the same number, safe inside an event loop."""
        return await sync_to_async(DistinctCount.get)(field, model)

    @staticmethod
    async def afrequency(
        field: str, value: Any, model: type[models.Model] | str | None = None
    ) -> int:
        """Async :meth:`frequency`: the same number, safe inside an event loop."""
        return await sync_to_async(DistinctCount.frequency)(field, value, model)

    @staticmethod
    async def acontains(
        field: str, value: Any, model: type[models.Model] | str | None = None
    ) -> bool:
        """Async :meth:`contains`: the same answer, safe inside an event loop."""
        return await sync_to_async(DistinctCount.contains)(field, value, model)

    @staticmethod
    async def amembers(
        field: str, model: type[models.Model] | str | None = None, batch_size: int = 1000
    ) -> AsyncIterator[str]:
        """Async :meth:`members`, for ``async for``: the same values, fetched one batch per
        worker-thread call (one round trip, or ``batch_size`` rows of the database fallback),
        so the event loop runs between batches and the set is never held whole."""
        batches = _member_batches(field, model, batch_size)
        try:
            while (batch := await sync_to_async(_next_batch)(batches)) is not None:
                for value in batch:
                    yield value
        finally:  # Closes the database cursor of a fallback left half read, in its thread.
            await sync_to_async(batches.close)()


def _member_batches(
    field: str, model: type[models.Model] | str | None, batch_size: int
) -> Generator[list[str], None, None]:
    """The distinct values, one list per round trip of buckets (empty lists included) or per
    ``batch_size`` rows of the database fallback."""
    counter = resolve(field, model)
    state, _ = _redis_read(counter)
    if state != "ok":
        values = _fallback(
            counter,
            state,
            lambda db: (
                counter.normalize(v)
                for v in counter.model._base_manager.using(db)
                .filter(**{f"{counter.attname}__isnull": False})
                .order_by()
                .values_list(counter.column, flat=True)
                .distinct()
                .iterator(chunk_size=batch_size)
            ),
        )
        while batch := list(islice(values, batch_size)):
            yield batch
        return
    client = get_client(conf.CACHE, write=False)
    for page in buckets.entries(client, counter, batch_size):
        yield [v.decode() for bucket in page for v, count in bucket.items() if int(count) > 0]


def _next_batch(batches: Iterator[list[str]]) -> list[str] | None:
    # StopIteration cannot cross sync_to_async's future: None ends the iteration.
    return next(batches, None)
