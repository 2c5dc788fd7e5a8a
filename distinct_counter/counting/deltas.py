"""Counter deltas: what one write adds to or takes from each value's row count, and how a
committed transaction's deltas reach Redis."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import models

from distinct_counter.connection import REDIS_ERRORS, breaker, get_client
from distinct_counter.counting import background, stale
from distinct_counter.counting.buckets import hash_of
from distinct_counter.counting.conf import conf
from distinct_counter.counting.registry import Counter
from distinct_counter.counting.scripts import APPLY, run_all
from distinct_counter.counting.values import text_as_is
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
    that differ only by ``fold`` are equal in Python and an hour apart in the database;
    ``1``, ``1.0`` and ``True`` are equal in Python and three texts in a ``CharField``. Only
    where every value is a ``str`` of a field that stores text as is (the common case) are
    equal values the same text: those are counted at C speed, normalized once each.
    """
    values = values if isinstance(values, list) else list(values)
    mine = deltas.setdefault(counter, {})
    counts = collections.Counter(values) if text_as_is(counter.field) else None
    if counts is None or not set(map(type, counts)) <= _TEXT_OR_NULL:
        counts = collections.Counter(map(counter.normalize, values))
    for text, n in counts.items():
        if text is not None:
            mine[text] = mine.get(text, 0) + sign * n


_TEXT_OR_NULL = {str, type(None)}


def tally_counts(
    deltas: Deltas, counter: Counter, counts: Iterable[tuple[Any, int]], sign: int
) -> None:
    """Add ``sign * rows`` to ``counter``'s delta of each ``(value, rows)``."""
    mine = deltas.setdefault(counter, {})
    as_is = text_as_is(counter.field)  # then a str is its own text, as in tally
    for value, n in counts:
        text = value if as_is and type(value) is str else counter.normalize(value)
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


#: One committed transaction's deltas and its id ('' where the database has none to give).
Sent = tuple[Deltas, str]


def send(deltas: Deltas, txid: str | None = None) -> None:
    """Send the deltas of one committed transaction to Redis, with the transaction's id
    (PostgreSQL's ``pg_current_xact_id()``) where it is known: a counter rebuilt from a
    snapshot that saw the transaction skips its deltas.

    With ``SEND = "wait"`` (the default) now, in one command (one round trip);
    with ``"background"`` queued for the process's sender thread
    (:mod:`~distinct_counter.counting.background`).

    Never raises for a Redis failure unless ``ON_ERROR`` is ``"raise"``: the counters that
    missed the write are marked stale (in Redis when it is back, and durably in the database).
    """
    deltas = {c: {v: d for v, d in values.items() if d} for c, values in deltas.items()}
    deltas = {c: values for c, values in deltas.items() if values}
    if not deltas:
        return
    if conf.SEND == "background":
        sender.put((deltas, txid or ""))
        return
    error = deliver([(deltas, txid or "")])
    if error is not None and conf.ON_ERROR == "raise":
        labels = ", ".join(sorted(c.label for c in deltas))
        raise CounterUnavailable(
            f"Redis did not take the writes of {labels}; they are marked stale", "unreachable"
        ) from error


def _apply(deltas: Deltas, txid: str) -> tuple[list[str], list[Any]]:
    """``scripts.APPLY``'s keys and arguments for one transaction's deltas."""
    keys: list[str] = []
    args: list[Any] = [txid]
    for counter, values in deltas.items():
        keys += counter.hot_keys()
        args.append(len(values))
        for value, delta in values.items():
            args += (value, hash_of(value), delta)
    return keys, args


def deliver(batch: Sequence[Sent]) -> BaseException | None:
    """Apply the deltas of committed transactions in Redis, one ``APPLY`` each, all in one
    round trip; mark stale the counters of those Redis did not take, and return the first
    failure (None: all taken). A script Redis does not know (NOSCRIPT) is sent again with
    its source, only for the commands that met it, so none runs twice."""
    alias = conf.write_cache
    gate = breaker(alias)
    failed, error = list(batch), None
    if gate.allow():
        calls = [_apply(deltas, txid) for deltas, txid in batch]
        try:
            replies = run_all(get_client(alias), [(APPLY, keys, args) for keys, args in calls])
        except REDIS_ERRORS as exc:
            error = exc
        else:
            failed = [
                sent for sent, r in zip(batch, replies, strict=True) if isinstance(r, Exception)
            ]
            error = next((r for r in replies if isinstance(r, Exception)), None)
        if error is None:
            stale.reached(alias)
            return None
        gate.failure(error)
    reason = repr(error) if error else "Redis failed moments ago (its circuit breaker is open)"
    stale.mark(dict.fromkeys(c for deltas, _ in failed for c in deltas), reason)
    return error or CounterUnavailable(reason, "unreachable")


#: The process's sender thread of ``SEND = "background"``.
sender = background.Sender(deliver)


def ensure_available(model: type[models.Model]) -> None:
    """With ``ON_ERROR = "raise"``, refuse a write while Redis is known to be down."""
    if conf.ON_ERROR == "raise" and not breaker(conf.write_cache).allow():
        raise CounterUnavailable(
            f"Redis is unreachable; refusing to write {model._meta.label} "
            "(DISTINCT_COUNTER['ON_ERROR'] is 'raise')",
            "unreachable",
        )
