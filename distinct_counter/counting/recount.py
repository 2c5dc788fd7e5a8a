"""The recount by time of a rebuild that has no snapshot to go by (a scan of a replica, or
of a database other than PostgreSQL; see ``rebuild.rebuild``): the values writers journaled
are recounted from the primary until no write touched them for ``REBUILD_GRACE``."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db import DatabaseError, connections, transaction

from distinct_counter.counting.buckets import hash_of
from distinct_counter.counting.conf import conf
from distinct_counter.counting.registry import Counter
from distinct_counter.counting.scan import grouped_counts
from distinct_counter.counting.scripts import SET_COUNTS, run_script

logger = logging.getLogger("distinct_counter")


def server_time(client: Any) -> float:
    return as_seconds(client.time())


def as_seconds(t: Any) -> float:
    """Redis ``TIME`` (seconds, microseconds) as float seconds."""
    return int(t[0]) + int(t[1]) / 1e6


def recount_journal(
    counter: Counter, client: Any, primary: str, snapshot: float, first_end: float
) -> tuple[int, bool]:
    """Recount, from the primary, the values that writers touched since the rebuild began.

    A value's count is trustworthy once no write touched it from just before its count was
    read from the database until ``REBUILD_GRACE`` seconds after the count was stored: a
    write landing in that window may be one the read already saw (its transaction committed
    before the database took its snapshot, somewhere before the count was stored) or one it
    missed. The scan is such a read for every value: it took its snapshot after
    ``snapshot``, and a write it saw lands before ``first_end``: the swap, or ``REBUILD_GRACE``
    after the snapshot was taken if that is later (a scan longer than the grace needs no
    wait after the swap; a scan by snapshot none, its writes being known by transaction id);
    each recount is such a read for the values it reads. Values touched inside their
    window are recounted again; values touched after it are left alone, so the recount ends even
    while writers keep writing, unless they touch some value more often than the grace.
    All times are the Redis server's, so writers and the rebuild share one clock. Returns
    the number of values recounted, and False if ``REBUILD_SETTLE`` seconds passed first.
    """
    grace = conf.REBUILD_GRACE
    give_up = time.monotonic() + conf.REBUILD_SETTLE
    journal = counter.key("journal")
    first_window = (snapshot, first_end)
    windows: dict[str, tuple[float, float]] = {}
    last_end = first_window[1]
    recounted = 0
    while True:
        # Taken before the pop: writes landing after it are journaled again, at a later time.
        read_at = server_time(client)
        taken = [(v.decode(), t) for v, t in client.zpopmin(journal, 1000)]
        todo = [v for v, touched in taken if touched <= windows.get(v, first_window)[1]]
        if not todo:
            if len(taken) < 1000 and read_at >= last_end:
                return recounted, True  # drained, and every window has closed
            if time.monotonic() > give_up:
                return _recount_locked(counter, client, primary, windows, read_at, recounted)
            if not taken:
                time.sleep(0.02)
            continue
        stored = _recount(counter, client, primary, todo)
        end = stored + grace
        windows.update(dict.fromkeys(todo, (read_at, end)))
        last_end = max(last_end, end)
        recounted += len(todo)
        if time.monotonic() > give_up:
            return _recount_locked(counter, client, primary, windows, read_at, recounted)


def _recount(counter: Counter, client: Any, using: str, values: list[str]) -> float:
    """Store the database's row counts of ``values``; return the server time they were set."""
    counts = dict.fromkeys(values, 0)
    for text, n in grouped_counts(counter, using, values=values):
        if text in counts:
            counts[text] += n
    args: list[Any] = []
    for text, n in counts.items():
        args += [text, hash_of(text), n]
    return as_seconds(run_script(client, SET_COUNTS, [counter.key("meta")], args))


#: How long the last resort of a rebuild may wait for its table lock before giving up.
LOCK_TIMEOUT = "5s"


def _recount_locked(
    counter: Counter,
    client: Any,
    primary: str,
    windows: dict[str, tuple[float, float]],
    now: float,
    recounted: int,
) -> tuple[int, bool]:
    """The last resort for values written more often than the grace: recount them with
    writes to the table paused.

    ``LOCK TABLE ... IN SHARE MODE`` lets readers read but makes writers wait, so nothing
    commits while it is held; after ``REBUILD_GRACE`` every committed write has reached Redis,
    and the counts read then are exact, whatever lands after the lock is released being
    a write they did not see. Writers wait about ``REBUILD_GRACE`` plus one query, once per
    rebuild that needs it. PostgreSQL only; elsewhere, and when the lock is not granted
    within ``LOCK_TIMEOUT``, the rebuild ends unsettled.
    """
    connection = connections[primary]
    if connection.vendor != "postgresql":
        return recounted, False
    # The counter's table, and the parent's holding the column for a multi-table child's
    # counter of an inherited field.
    owners = dict.fromkeys(
        [counter.model, counter.field.model._meta.concrete_model or counter.model]
    )
    table = ", ".join(connection.ops.quote_name(m._meta.db_table) for m in owners)
    try:
        with transaction.atomic(using=primary), connection.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = %s", [LOCK_TIMEOUT])
            cur.execute(f"LOCK TABLE {table} IN SHARE MODE")
            time.sleep(conf.REBUILD_GRACE)
            journal = counter.key("journal")
            todo = {v.decode() for v, _ in client.zrange(journal, 0, -1, withscores=True)}
            todo.update(v for v, (_, end) in windows.items() if end > now)
            client.delete(journal)
            logger.info(
                "Rebuild of %s: recounting %d values with writes paused", counter.label, len(todo)
            )
            values = sorted(todo)
            for start in range(0, len(values), 1000):
                _recount(counter, client, primary, values[start : start + 1000])
    except DatabaseError as exc:
        logger.warning("Rebuild of %s could not lock its table: %s", counter.label, exc)
        return recounted, False
    return recounted + len(todo), True
