"""Counter deltas: what one write adds to or takes from each value's row count, and how a
committed transaction's deltas reach Redis."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import models

from distinct_counter.connection import REDIS_ERRORS, breaker, get_client
from distinct_counter.counting import stale
from distinct_counter.counting.conf import conf
from distinct_counter.counting.registry import Counter
from distinct_counter.counting.scripts import APPLY, call
from distinct_counter.exceptions import CounterUnavailable

#: counter -> normalized value -> change in the number of rows holding it.
Deltas = dict[Counter, dict[str, int]]


def merge(into: Deltas, deltas: Deltas) -> None:
    """Add ``deltas`` to ``into``."""
    for counter, values in deltas.items():
        mine = into.setdefault(counter, {})
        for value, delta in values.items():
            mine[value] = mine.get(value, 0) + delta


def tally(deltas: Deltas, counter: Counter, values: Iterable[Any], sign: int) -> None:
    """Add ``sign`` to ``counter``'s delta of each value, once per row holding it (a bulk
    write's rows, counted in one pass).

    Values are grouped by their normalized text, never by Python equality: two datetimes
    that differ only by ``fold`` are equal in Python and an hour apart in the database.
    """
    normalize = counter.normalize
    mine = deltas.setdefault(counter, {})
    for text, n in collections.Counter(normalize(v) for v in values).items():
        if text is not None:
            mine[text] = mine.get(text, 0) + sign * n


def tally_counts(
    deltas: Deltas, counter: Counter, counts: Iterable[tuple[Any, int]], sign: int
) -> None:
    """Add ``sign * rows`` to ``counter``'s delta of each ``(value, rows)``."""
    mine = deltas.setdefault(counter, {})
    for value, n in counts:
        text = counter.normalize(value)
        if text is not None:
            mine[text] = mine.get(text, 0) + sign * n


def between(
    counters: Sequence[Counter], old: Sequence[Any] | None, new: Sequence[Any] | None
) -> Deltas:
    """The deltas of one row going from ``old`` to ``new`` values of ``counters`` (None: no
    row)."""
    deltas: Deltas = {}
    for i, counter in enumerate(counters):
        before = counter.normalize(old[i]) if old is not None else None
        after = counter.normalize(new[i]) if new is not None else None
        if before == after:
            continue
        values = deltas.setdefault(counter, {})
        if before is not None:
            values[before] = values.get(before, 0) - 1
        if after is not None:
            values[after] = values.get(after, 0) + 1
    return deltas


def send(deltas: Deltas, txid: str | None = None) -> None:
    """Send the deltas of one committed transaction to Redis in one command (one round trip),
    with the transaction's id (PostgreSQL's ``pg_current_xact_id()``) where it is known: a
    counter rebuilt from a snapshot that saw the transaction skips its deltas.

    Never raises for a Redis failure unless ``ON_ERROR`` is ``"raise"``: the counters that
    missed the write are marked stale (in Redis when it is back, and durably in the database).
    """
    deltas = {c: {v: d for v, d in values.items() if d} for c, values in deltas.items()}
    deltas = {c: values for c, values in deltas.items() if values}
    if not deltas:
        return
    alias = conf.write_cache
    gate = breaker(alias)
    error: BaseException | None = None
    if gate.allow():
        keys: list[str] = []
        args: list[Any] = [txid or ""]
        for counter, values in deltas.items():
            keys += counter.hot_keys()
            args.append(len(values))
            for value, delta in values.items():
                args += (value, delta)
        try:
            call(get_client(alias), APPLY, keys, args)
        except REDIS_ERRORS as exc:
            gate.failure(exc)
            error = exc
        else:
            stale.reached(alias)
            return
    stale.mark(deltas, repr(error))
    if conf.ON_ERROR == "raise":
        labels = ", ".join(sorted(c.label for c in deltas))
        raise CounterUnavailable(
            f"Redis did not take the writes of {labels}; they are marked stale", "unreachable"
        ) from error


def ensure_available(model: type[models.Model]) -> None:
    """With ``ON_ERROR = "raise"``, refuse a write while Redis is known to be down."""
    if conf.ON_ERROR == "raise" and not breaker(conf.write_cache).allow():
        raise CounterUnavailable(
            f"Redis is unreachable; refusing to write {model._meta.label} "
            "(DISTINCT_COUNTER['ON_ERROR'] is 'raise')",
            "unreachable",
        )
