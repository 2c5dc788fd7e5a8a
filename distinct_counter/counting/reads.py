"""Reading the counters: :class:`DistinctCount`, answered from Redis in one round trip, or
from the database while a counter cannot answer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from django.db import models, router
from django.db.models import Count

from distinct_counter.connection import REDIS_ERRORS, breaker, get_client
from distinct_counter.counting import stale
from distinct_counter.counting.conf import conf
from distinct_counter.counting.registry import Counter, resolve
from distinct_counter.exceptions import CounterUnavailable


@dataclass(frozen=True)
class CountResult:
    """A count and where it came from: ``source`` is ``"redis"`` or ``"database"``; ``state``
    is the counter's: ``"ok"``, ``"stale"``, ``"missing"`` (never built) or ``"unreachable"``."""

    count: int
    source: str
    state: str


def _redis_read(counter: Counter, command: str, *args: Any) -> tuple[str, Any]:
    """Run one read command on the counter's hash with its state, in one round trip (two on
    the process's first call, and on the first after Redis failed).

    Returns (state, result); state is ``"unreachable"`` when Redis failed.
    """
    alias = conf.CACHE
    gate = breaker(alias)
    if not gate.allow():
        return "unreachable", None
    for _ in range(2):
        # A first call (or the first after a failure) copies the stale marks (the database's
        # and this process's) into Redis after reading: the state it read may predate them.
        synced = gate.synced and not gate.failed
        try:
            pipe = get_client(alias, write=False).pipeline(transaction=False)
            pipe.hget(counter.key("meta"), "state")
            getattr(pipe, command)(counter.key("values"), *args)
            state, result = pipe.execute()
        except REDIS_ERRORS as exc:
            gate.failure(exc)
            return "unreachable", None
        stale.reached(alias)
        if synced or not gate.allow():  # Not copied: this process still knows its marks.
            break
    if stale.is_pending(counter.label):  # Known here, not yet written to Redis.
        return "stale", result
    return (state.decode() if state else "missing"), result


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
    """

    @staticmethod
    def read(field: str, model: type[models.Model] | str | None = None) -> CountResult:
        """The number of distinct non-NULL values, with its source and the counter's state."""
        counter = resolve(field, model)
        state, count = _redis_read(counter, "hlen")
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
        state, count = _redis_read(counter, "hget", text)
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

        Uses ``HSCAN`` (never ``HGETALL``), so a counter of millions of values streams.
        """
        counter = resolve(field, model)
        state, _ = _redis_read(counter, "exists")
        if state != "ok":
            yield from _fallback(
                counter,
                state,
                lambda db: (
                    counter.normalize(v)
                    for v in counter.model._base_manager.using(db)
                    .filter(**{f"{counter.attname}__isnull": False})
                    .order_by()
                    .values_list(counter.attname, flat=True)
                    .distinct()
                    .iterator()
                ),
            )
            return
        client = get_client(conf.CACHE, write=False)
        for value, count in client.hscan_iter(counter.key("values"), count=batch_size):
            if int(count) > 0:
                yield value.decode()
