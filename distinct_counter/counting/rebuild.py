"""Rebuilding a counter from the database while writers keep writing.

The values are aggregated in the database and streamed, in batches, into a new map of
buckets (``tmp``, :mod:`~distinct_counter.counting.buckets`), which replaces the live one
atomically (``scripts.SWAP``; the old one is dropped after). A write reaches Redis just
after its transaction commits, so what matters for each write arriving during the rebuild
is whether the scan saw it.

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
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from django.db import connections, router, transaction

from distinct_counter.connection import REDIS_ERRORS, get_client, round_trip
from distinct_counter.counting import buckets, stale
from distinct_counter.counting.conf import conf
from distinct_counter.counting.recount import as_seconds, recount_journal, server_time
from distinct_counter.counting.registry import Counter
from distinct_counter.counting.scan import grouped_chunks
from distinct_counter.counting.scripts import GROW, PUBLISH, RELEASE, SWAP, run_script
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


def rebuild_all(
    counters: Sequence[Counter], using: str | None = None, progress: Progress | None = None
) -> list[RebuildResult]:
    """:func:`rebuild` each counter, up to ``REBUILD_CONCURRENCY`` at once where the
    databases they are read from allow it (:func:`_postgresql_outside_transaction`), one
    after the other elsewhere. Every counter is rebuilt even if one fails; then the first
    error is raised.
    """
    # The router is asked here: its read-your-writes state is this thread's.
    aliases = [using or router.db_for_read(c.model) for c in counters]
    workers = min(conf.REBUILD_CONCURRENCY, len(counters))
    if workers < 2 or not all(_postgresql_outside_transaction(a) for a in aliases):
        return [rebuild(c, alias, progress) for c, alias in zip(counters, aliases, strict=True)]

    def rebuild_apart(counter: Counter, alias: str) -> RebuildResult:
        try:
            return rebuild(counter, alias, progress)
        finally:
            connections.close_all()  # this thread's own

    with ThreadPoolExecutor(workers, thread_name_prefix="distinct_counter-rebuilds") as pool:
        futures = [pool.submit(rebuild_apart, c, a) for c, a in zip(counters, aliases, strict=True)]
        wait(futures)
    return [f.result() for f in futures]


def _postgresql_outside_transaction(alias: str) -> bool:
    """Whether ``alias`` is PostgreSQL with no transaction open here. Then a scan of it may
    run on a connection of its own, in another thread (SQLite serializes its writers, and
    its test databases live in one connection; the rows of a transaction open here are
    not seen from another connection), and in a transaction of its own, one snapshot."""
    connection = connections[alias]
    return connection.vendor == "postgresql" and not connection.in_atomic_block


def rebuild(
    counter: Counter, using: str | None = None, progress: Progress | None = None
) -> RebuildResult:
    """Rebuild one counter from the database, safely while writers keep writing (how: see
    the module's documentation).

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
    keys = [counter.key(p) for p in ("journal", "journal_on", "pending", "missed")]
    journal, journal_on, _, missed = keys
    exact = _reads_snapshots(using)
    try:
        # What a rebuild that died left, and the one hash of values of earlier versions.
        client.delete(journal, *keys[2:], counter.key("values"))
        buckets.drop(client, counter, "tmp")
        buckets.drop(client, counter, "old")
        # From here on writers say what the scan needs of them (scripts.APPLY).
        client.set(journal_on, "" if exact else "*", px=_TTL_MS)
        # Every write committed after this moment may be missing from the scan (on a replica,
        # _wait_for_replay makes the scan see everything committed before it).
        snapshot = server_time(client)
        _wait_for_replay(using, primary)
        rows, values, scanned, seen = _scan(counter, client, using, progress, exact)
        swap_keys = [counter.key(p) for p in ("tmp", "meta", "journal_on", "missed", "old")]
        swapped = as_seconds(run_script(client, SWAP, swap_keys, [time.time(), rows, seen or ""]))
        buckets.drop(client, counter, "old")
        if progress:
            progress(counter, rows, values)
        # With a snapshot, only writes that sent no transaction id are journaled: recounted
        # if there are any, with no wait for writes in flight otherwise.
        first_end = swapped if seen else max(swapped, scanned + conf.REBUILD_GRACE)
        recounted, settled = recount_journal(counter, client, primary, snapshot, first_end)
        client.delete(journal_on, journal)
    except BaseException:
        # Writers stop journaling for a rebuild that will not recount; the next one starts
        # afresh. Best effort: Redis may be what failed.
        with contextlib.suppress(*REDIS_ERRORS):
            client.delete(*keys)
            buckets.drop(client, counter, "tmp")
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
    if not _postgresql_outside_transaction(using):
        return False
    with connections[using].cursor() as cur:
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
    lock_key, journal_on = counter.key("lock"), counter.key("journal_on")
    filler = _Filler(client, counter, _expected_values(counter, client, using))

    def store(batch: dict[str, int]) -> None:
        # Storing takes longer than streaming (run K: about 400 ms for 220,077 usernames,
        # one HSET per bucket of each batch): that, and the Python that places the values,
        # is what a rebuild adds to its GROUP BY.
        filler.store(batch, ("PEXPIRE", lock_key, _TTL_MS), ("PEXPIRE", journal_on, _TTL_MS))

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
        pending: dict[str, int] = {}
        chunks = grouped_chunks(counter, using, chunk_size=conf.REBUILD_BATCH_SIZE)
        for batch in itertools.chain(chunks, [{}]):  # {}: the end, to store what is left
            if scanned is None:  # Rows arrived: the scan's snapshot was taken by now.
                scanned = server_time(client)
            rows += sum(batch.values())
            values += len(batch)
            for text in pending.keys() & batch.keys():  # values that normalize alike
                batch[text] += pending[text]
            pending.update(batch)
            if pending and (not batch or len(pending) >= filler.batch_size()):
                if stored is not None:
                    stored.result()
                stored, pending = writer.submit(store, pending), {}
            if progress and batch:
                progress(counter, rows, values)
        if stored is not None:
            stored.result()
        filler.finish()
    return rows, values, server_time(client) if scanned is None else scanned, seen


def _expected_values(counter: Counter, client: Any, using: str) -> int:
    """About how many values a rebuild will find, to size its map: the live counter's
    number, else PostgreSQL's own estimate (``pg_stats.n_distinct``, once the table was
    analyzed), else none (the map then grows as the values come)."""
    live = buckets.header(client, counter.key("meta"))
    if live is not None:
        return live[2]
    if connections[using].vendor != "postgresql":
        return 0
    with connections[using].cursor() as cur:
        cur.execute(
            "SELECT CASE WHEN s.n_distinct < 0 THEN -s.n_distinct * c.reltuples"
            " ELSE s.n_distinct END FROM pg_stats s"
            " JOIN pg_class c ON c.relname = s.tablename"
            " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname"
            " WHERE s.tablename = %s AND s.attname = %s AND s.schemaname = current_schema()",
            [counter.model._meta.db_table, counter.field.column],
        )
        row = cur.fetchone()
    return max(0, int(row[0])) if row and row[0] is not None else 0


class _Filler:
    """Fills a rebuild's map (``tmp``, see :mod:`~distinct_counter.counting.buckets`):
    one ``HSET`` per bucket of each batch, the buckets placed here, so Redis runs no
    script per value.

    The map starts with the buckets ``expected`` values need (a power of two) and doubles
    (``scripts.GROW``, a slice of splits per call) whenever it holds twice as many values
    as that. :meth:`finish` writes its number of values, for the swap."""

    def __init__(self, client: Any, counter: Counter, expected: int) -> None:
        self.client, self.counter, self.key = client, counter, counter.key("tmp")
        self.gen = str(client.incr(counter.key("gen")))
        self.prefix = buckets.bucket_prefix(counter, self.gen)  # built once, not per HSET
        self.n, self.len = buckets.sized(expected), 0
        client.hset(self.key, mapping={"gen": self.gen, "n": self.n, "len": 0})

    def batch_size(self) -> int:
        """How many values to store at once: several per bucket (one ``HSET`` each), within
        a bound that keeps a rebuild's memory flat."""
        return min(max(conf.REBUILD_BATCH_SIZE, 8 * self.n), 50_000)

    def store(self, batch: dict[str, int], *extra: tuple[Any, ...]) -> None:
        """Store ``batch`` (and send ``extra`` commands in the same round trip)."""
        while self.len + len(batch) > 2 * self.n * buckets.LOAD:
            self.n = self.grow(2 * self.n)  # a power of two still: buckets.grouped's
        by = buckets.grouped(batch.items(), self.n)
        hsets = [("HSET", f"{self.prefix}{b}", *f) for b, f in by.items()]
        replies = round_trip(self.client, *hsets, *extra)
        self.len += sum(int(r) for r in replies[: len(hsets)])  # new fields only

    def grow(self, target: int) -> int:
        """Split buckets until the map has ``target`` (0: as many as its values need), 256
        splits per call: the swap, atomic, is left with few splits or none."""
        while True:
            n = int(run_script(self.client, GROW, [self.key], [256, self.len, target]))
            if n >= max(target, -(-self.len // buckets.LOAD)):
                return n

    def finish(self) -> None:
        """Leave the map with as many buckets as its values need, and their number."""
        self.n = self.grow(0)


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
    if not _postgresql_outside_transaction(using):
        return None, None
    stack.enter_context(transaction.atomic(using=using))
    with connections[using].cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # The snapshot is taken here.
        cur.execute("SELECT pg_current_snapshot()::text" if exact else "SELECT NULL")
        seen = cur.fetchone()[0]
    return server_time(client), seen


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
