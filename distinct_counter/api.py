"""The public API of the counters, re-exported by ``distinct_counter``.

Everything else in the package is internal and may change without notice; the router, the
master/replica cache and the index operations are configured by their dotted paths
(:doc:`router`, :doc:`cache`, :doc:`indexes`).
"""

from __future__ import annotations

from django.db import models

from distinct_counter.counting import drift
from distinct_counter.counting import rebuild as rebuilding
from distinct_counter.counting.drift import Drift
from distinct_counter.counting.queryset import CountedManager, CountedQuerySet
from distinct_counter.counting.reads import CountResult, DistinctCount
from distinct_counter.counting.rebuild import Progress, RebuildResult
from distinct_counter.counting.registry import Counter, counters_named, counters_of
from distinct_counter.exceptions import (
    CounterUnavailable,
    DistinctCounterError,
    NotCounted,
    RebuildInProgress,
)
from distinct_counter.models import CountedModel, CounterState

__all__ = [
    "CountResult",
    "CountedManager",
    "CountedModel",
    "CountedQuerySet",
    "Counter",
    "CounterUnavailable",
    "DistinctCount",
    "DistinctCounterError",
    "Drift",
    "NotCounted",
    "RebuildInProgress",
    "RebuildResult",
    "check",
    "counters",
    "rebuild",
]


def counters(*names: str | Counter | type[models.Model], stale: bool = False) -> list[Counter]:
    """The counters named: ``"app_label"``, ``"app_label.Model"``,
    ``"app_label.Model.field"``, a counted field's name (``"city"``: its counters in every
    model), a counted model class or a :class:`Counter`; every counter when none is named.

    ``stale=True`` keeps only those the database knows to be stale (they missed writes).

    :raises ValueError: a name matches no counter.
    """
    selected = [n for n in names if isinstance(n, Counter)]
    for model in (n for n in names if isinstance(n, type)):
        if not counters_of(model):
            raise ValueError(f"{model.__name__} has no counted field")
        selected += [c for c in counters_of(model) if c not in selected]
    texts = [n for n in names if isinstance(n, str)]
    if texts or not names:
        selected += [c for c in counters_named(texts) if c not in selected]
    if stale:
        marks = CounterState.stale_marks()
        selected = [c for c in selected if c.label in marks]
    return selected


def rebuild(
    *names: str | Counter | type[models.Model],
    using: str | None = None,
    stale: bool = False,
    progress: Progress | None = None,
) -> list[RebuildResult]:
    """Rebuild the counters named (see :func:`counters`) from the database, safely while
    writers keep writing (how: see :doc:`operations`); the results in the counters' order.

    On PostgreSQL, outside a transaction, up to ``REBUILD_CONCURRENCY`` counters are rebuilt
    at once, each scanning on a connection of its own; elsewhere one after the other.

    ``using``: the database alias to read (a replica, say); default: the router's choice.
    ``progress(counter, rows, values)`` is called as batches are stored (from the thread
    rebuilding that counter).

    :raises RebuildInProgress: another rebuild of one of them is running (the others are
        rebuilt all the same).
    :raises ValueError: a name matches no counter.
    """
    return rebuilding.rebuild_all(counters(*names, stale=stale), using, progress)


def check(
    *names: str | Counter | type[models.Model], using: str | None = None, stale: bool = False
) -> list[Drift]:
    """Compare the counters named (see :func:`counters`) with the database, value by value,
    without changing them. ``Drift.ok`` is True for a counter in Redis that matches.

    :raises ValueError: a name matches no counter.
    """
    return [drift.check(c, using) for c in counters(*names, stale=stale)]
