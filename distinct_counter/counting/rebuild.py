"""Rebuilding a counter from the database while writers keep writing."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, connections, router, transaction

from distinct_counter.connection import REDIS_ERRORS, get_client
from distinct_counter.counting import stale
from distinct_counter.counting.conf import conf
from distinct_counter.counting.registry import Counter
from distinct_counter.counting.scan import grouped_chunks, grouped_counts
from distinct_counter.counting.scripts import PUBLISH, RELEASE, SET_COUNTS, SWAP, run_script
from distinct_counter.counting.state import CounterState
from distinct_counter.exceptions import RebuildInProgress

logger = logging.getLogger("distinct_counter")

#: How long a rebuild's lock and journal outlive a rebuild that died (renewed per batch).
_TTL_MS = 600_000


@dataclass
class RebuildResult:
    """What :func:`rebuild` did: ``rows`` and distinct ``values`` stored, values
    ``recounted`` for the writes that came during the rebuild, and how long it took."""

    counter: Counter
    rows: int
    values: int
    recounted: int
    seconds: float
    #: False when writes never paused for ``REBUILD_GRACE`` within ``REBUILD_SETTLE`` seconds
    #: after the swap: the values touched in the last moments may be off (see ``rebuild``).
    settled: bool = True


Progress = Callable[[Counter, int, int], None]


def rebuild(
    counter: Counter, using: str | None = None, progress: Progress | None = None
) -> RebuildResult:
    """Rebuild one counter from the database, safely while writers keep writing.

    The values are aggregated in the database and streamed into a temporary key in batches
    of ``REBUILD_BATCH_SIZE``, which replaces the live key atomically (``RENAME``; the old
    one is freed by ``UNLINK``). A write reaches Redis just after its transaction commits,
    so what matters for each write arriving during the rebuild is whether the scan saw it.

    On a PostgreSQL primary this is known exactly, by transaction id. The scan reads one
    snapshot (``REPEATABLE READ``), published to Redis before it runs; every write sends its
    transaction's id with its deltas (``scripts.APPLY``), and those the snapshot did not see
    are added to the scan's counts at the swap. The new counter keeps the snapshot: a write the
    scan saw is never applied on top of it, however late it reaches Redis. The rebuild ends
    at the swap, with no wait.

    Elsewhere (a replica, whose snapshots do not list the transactions in progress; SQLite;
    a scan inside a transaction), writers journal the values they touch, recounted from the
    primary database after the swap until no write has touched them for ``REBUILD_GRACE``
    seconds, longer than any commit-to-Redis delay is assumed to be: a recount cannot tell
    whether a write landing right after it read the database was one it saw. Values written
    more often than that (the hottest ones) are recounted, after ``REBUILD_SETTLE`` seconds,
    with the table's writes paused for about ``REBUILD_GRACE`` (a ``SHARE`` lock on
    PostgreSQL); where that is not possible the result says ``settled=False`` and the counts
    of those values may be off by the writes in flight, which ``rebuild_counts --check`` at
    a quieter time shows.

    :raises RebuildInProgress: another rebuild of this counter is running.
    """
    started = time.monotonic()
    # Read first: asking for the write alias counts as a write with a read-your-writes router
    # (PrimaryReplicaRouter), which would send this read to the primary too.
    using = using or router.db_for_read(counter.model)
    primary = router.db_for_write(counter.model)
    client = get_client(conf.write_cache)
    lock_key, token = counter.key("lock"), uuid.uuid4().hex
    if not client.set(lock_key, token, nx=True, px=_TTL_MS):
        raise RebuildInProgress(f"another rebuild of {counter.label} is running")
    keys = [counter.key(p) for p in ("journal", "journal_on", "tmp", "pending", "missed")]
    journal, journal_on, tmp, _, missed = keys
    exact = _reads_snapshots(using)
    try:
        client.delete(journal, tmp, *keys[3:])
        # From here on writers say what the scan needs of them (scripts.APPLY).
        client.set(journal_on, "" if exact else "*", px=_TTL_MS)
        # Every write committed after this moment may be missing from the scan (on a replica,
        # _wait_for_replay makes the scan see everything committed before it).
        snapshot = _server_time(client)
        _wait_for_replay(using, primary)
        rows, values, scanned, seen = _scan(counter, client, using, progress, exact)
        swapped = _as_seconds(
            run_script(
                client,
                SWAP,
                [tmp, counter.key("values"), counter.key("meta"), journal_on, missed],
                [time.time(), rows, seen or ""],
            )
        )
        if progress:
            progress(counter, rows, values)
        # With a snapshot, only writes that sent no transaction id are journaled: recounted
        # if there are any, with no wait for writes in flight otherwise.
        first_end = swapped if seen else max(swapped, scanned + conf.REBUILD_GRACE)
        recounted, settled = _recount_journal(counter, client, primary, snapshot, first_end)
        client.delete(journal_on, journal)
    except BaseException:
        # Writers stop journaling for a rebuild that will not recount; the next one starts
        # afresh. Best effort: Redis may be what failed.
        with contextlib.suppress(*REDIS_ERRORS):
            client.delete(*keys)
        raise
    finally:
        with contextlib.suppress(*REDIS_ERRORS):
            run_script(client, RELEASE, [lock_key], [token])
    CounterState.mark_rebuilt(counter.label)
    stale.forget(counter.label)
    if not settled:
        logger.warning(
            "Rebuild of %s: writes never paused for %ss within %ss; the counts of the "
            "values written in its last moments may be off by writes in flight",
            counter.label,
            conf.REBUILD_GRACE,
            conf.REBUILD_SETTLE,
        )
    return RebuildResult(counter, rows, values, recounted, time.monotonic() - started, settled)


def _reads_snapshots(using: str) -> bool:
    """Whether a scan of ``using`` can read one snapshot that names the transactions it
    saw: a PostgreSQL primary (a hot standby's ``pg_current_snapshot()`` lists no
    transaction in progress), outside any transaction (whose own writes, and snapshot per
    statement, the scan would share)."""
    connection = connections[using]
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return False
    with connection.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        return not cur.fetchone()[0]


def _scan(
    counter: Counter, client: Any, using: str, progress: Progress | None, exact: bool
) -> tuple[int, int, float, str | None]:
    """Stream the database's counts into the counter's ``tmp`` key; return the rows and
    values stored, the server time by which the scan's snapshot was taken and, if
    ``exact``, that snapshot (published before the scan, ``scripts.PUBLISH``).

    Redis stores one batch while the database streams the next: a rebuild takes about the
    longer of the two, not their sum. One batch in flight keeps memory flat.
    """
    tmp, lock_key, journal_on = (counter.key(p) for p in ("tmp", "lock", "journal_on"))

    def store(batch: dict[str, int]) -> None:
        client.pipeline(transaction=False).hset(tmp, mapping=batch).pexpire(
            lock_key, _TTL_MS
        ).pexpire(journal_on, _TTL_MS).execute()

    rows = values = 0
    with contextlib.ExitStack() as stack:
        scanned, seen = _pin_snapshot(using, client, stack, exact)
        if seen is not None:
            keys = [journal_on, counter.key("pending"), counter.key("missed")]
            run_script(client, PUBLISH, keys, [seen])
        writer = stack.enter_context(
            ThreadPoolExecutor(1, thread_name_prefix="distinct_counter-rebuild")
        )
        stored: Future[None] | None = None
        for batch in grouped_chunks(counter, using, chunk_size=conf.REBUILD_BATCH_SIZE):
            if scanned is None:  # Rows arrived: the scan's snapshot was taken by now.
                scanned = _server_time(client)
            if not batch:
                continue
            rows += sum(batch.values())
            values += len(batch)
            if stored is not None:
                stored.result()
            stored = writer.submit(store, batch)
            if progress:
                progress(counter, rows, values)
        if stored is not None:
            stored.result()
    return rows, values, _server_time(client) if scanned is None else scanned, seen


def _pin_snapshot(
    using: str, client: Any, stack: contextlib.ExitStack, exact: bool
) -> tuple[float | None, str | None]:
    """On PostgreSQL outside a transaction, open the scan's transaction (``REPEATABLE
    READ``: the GROUP BY reads the snapshot of its first statement) and return the server
    time by which that snapshot was taken, a bound known before the scan runs (so the wait
    for writes in flight, ``REBUILD_GRACE``, runs along with the scan, not after it); and,
    if ``exact``, the snapshot (``pg_current_snapshot()``). Elsewhere (None, None): the
    first rows the scan returns bound it.
    """
    connection = connections[using]
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return None, None
    stack.enter_context(transaction.atomic(using=using))
    with connection.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # The snapshot is taken here.
        cur.execute("SELECT pg_current_snapshot()::text" if exact else "SELECT NULL")
        seen = cur.fetchone()[0]
    return _server_time(client), seen


def _server_time(client: Any) -> float:
    return _as_seconds(client.time())


def _as_seconds(t: Any) -> float:
    """Redis ``TIME`` (seconds, microseconds) as float seconds."""
    return int(t[0]) + int(t[1]) / 1e6


def _recount_journal(
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
        read_at = _server_time(client)
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
        args += [text, n]
    return _as_seconds(run_script(client, SET_COUNTS, [counter.key("values")], args))


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


def _wait_for_replay(using: str, primary: str, timeout: float = 60.0) -> None:
    """Wait until a PostgreSQL replica has replayed everything the primary has now.

    The journal starts before this, so every write the replica's snapshot misses is journaled.
    """
    if using == primary or connections[using].vendor != "postgresql":
        return
    with connections[primary].cursor() as cur:
        # The insert position, not pg_current_wal_lsn() (the write position): with
        # synchronous_commit off, a committed transaction may not be written out yet.
        cur.execute("SELECT pg_current_wal_insert_lsn()::text")
        lsn = cur.fetchone()[0]
    deadline = time.monotonic() + timeout
    with connections[using].cursor() as cur:
        while True:
            cur.execute(
                "SELECT pg_is_in_recovery(), "
                "COALESCE(pg_last_wal_replay_lsn() >= %s::pg_lsn, true)",
                [lsn],
            )
            in_recovery, caught_up = cur.fetchone()
            if not in_recovery or caught_up:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"database {using!r} did not replay up to {lsn} in {timeout}s")
            time.sleep(0.05)
