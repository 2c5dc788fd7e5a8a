"""Stale marks: counters known to have missed writes, wrong in Redis until rebuilt.

A mark is kept in three places, each for a reason: in this process at once (reads here say
``stale`` even while Redis is down), in the database (``CounterState``, which survives
Redis and process restarts), and in the counter's ``meta`` hash in Redis (what every other
process reads), written as soon as Redis answers again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from django.db import DatabaseError

from distinct_counter.connection import REDIS_ERRORS, breaker, get_client
from distinct_counter.counting.conf import conf
from distinct_counter.counting.registry import Counter, all_counters
from distinct_counter.counting.scripts import MARK_STALE, execute, run_script
from distinct_counter.counting.state import CounterState

logger = logging.getLogger("distinct_counter")

#: Counters that missed writes in this process and are not yet marked stale in Redis:
#: label -> time of the first miss.
_pending: dict[str, float] = {}


def mark(counters: Iterable[Counter], reason: str) -> None:
    """Mark counters stale: their Redis data is known to be wrong until the next rebuild.

    Recorded in the database once per counter and process (until it is rebuilt), and in
    Redis unless its circuit breaker is open (then on the first call that reaches it).
    """
    now = time.time()
    new = [c.label for c in counters if c.label not in _pending]
    for label in new:
        _pending[label] = now
    if new:
        try:
            CounterState.record_stale(new, reason)
        except DatabaseError as exc:  # The user's write has committed; never fail it now.
            logger.error("could not record stale counters %s in the database: %r", new, exc)
    if _pending and breaker(conf.write_cache).allow():
        _push()


def is_pending(label: str) -> bool:
    """Whether this process knows the counter missed writes (Redis may not know yet)."""
    return label in _pending


def forget(label: str) -> None:
    """After a rebuild: the counter is exact again."""
    _pending.pop(label, None)


def clear() -> None:
    """Forget every mark of this process (in tests)."""
    _pending.clear()


def reached(alias: str) -> None:
    """After a Redis call worked: on the first one in this process, or the first after a
    failure, copy the stale marks the database holds (of any process, even one that has
    died since) into Redis, with this process's own pending ones."""
    gate = breaker(alias)
    if gate.success() or not gate.synced:
        gate.synced = True
        _load()
    if _pending:
        _push()


def _push() -> None:
    alias = conf.write_cache
    counters = {c.label: c for c in all_counters()}
    try:
        pipe = get_client(alias).pipeline(transaction=False)
        for label, since in _pending.items():
            if label in counters:
                run_script(pipe, MARK_STALE, [counters[label].key("meta")], [since])
        execute(pipe)
    except REDIS_ERRORS as exc:
        breaker(alias).failure(exc)
        return
    _pending.clear()


def _load() -> None:
    try:
        marks = CounterState.stale_marks()
    except Exception as exc:  # No database access here (yet): the next sync will retry.
        logger.debug("stale marks not loaded: %r", exc)
        breaker(conf.write_cache).synced = False
        return
    for label, since in marks.items():
        _pending.setdefault(label, since)
