"""Deltas held until their transaction commits, all of one transaction sent in one Redis
round trip (:class:`_Batch`); a rolled-back transaction or savepoint sends nothing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.db import connections, transaction

from distinct_counter.counting import deltas as _deltas
from distinct_counter.counting import stale
from distinct_counter.counting.deltas import Deltas
from distinct_counter.counting.registry import Counter

logger = logging.getLogger("distinct_counter")


class _Batch:
    """The deltas of one transaction on one connection, sent once after it commits.

    Each write registers a :class:`_Part` with ``transaction.on_commit``, so Django itself
    drops the parts of a rolled-back savepoint. The batch is kept as the last commit hook with
    no savepoint of its own (it is never dropped): when it runs, every surviving part has
    already added its deltas to it.
    """

    def __init__(self) -> None:
        self.deltas: Deltas = {}

    def __call__(self) -> None:
        deltas, self.deltas = self.deltas, {}
        _deltas.send(deltas)


class _Part:
    def __init__(self, deltas: Deltas) -> None:
        self.deltas = deltas
        self.batch: _Batch | None = None

    def __call__(self) -> None:
        if self.batch is not None:
            _deltas.merge(self.batch.deltas, self.deltas)


def record(using: str, deltas: Deltas) -> None:
    """Send ``deltas`` to Redis when the current transaction on ``using`` commits (at once
    outside a transaction)."""
    conn = connections[using]
    if not conn.in_atomic_block:
        _deltas.send(deltas)
        return
    part = _Part(deltas)
    transaction.on_commit(part, using=using)
    hooks: list[Any] = conn.run_on_commit
    # Django stores hooks as (savepoint ids, func, robust). Ours is normally just before the
    # part appended above; another app's hook in between makes us look further.
    index = next(
        (i for i in range(len(hooks) - 2, -1, -1) if isinstance(hooks[i][1], _Batch)), None
    )
    entry = hooks.pop(index) if index is not None else (set(), _Batch(), False)
    hooks.append(entry)
    part.batch = entry[1]


def stale_on_commit(using: str, counters: Sequence[Counter], reason: str) -> None:
    """Mark counters stale once the current transaction commits (not if it rolls back), for
    a write whose effect on them cannot be known."""

    def mark() -> None:
        logger.warning(
            "counters %s marked stale: %s; run manage.py rebuild_counts",
            ", ".join(c.label for c in counters),
            reason,
        )
        stale.mark(counters, reason)

    transaction.on_commit(mark, using=using)
