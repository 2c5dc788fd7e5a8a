"""The counters in Redis: reading them, applying deltas, rebuilding and checking them.

Each counter is a Redis hash ``value -> number of rows holding it``; its number of distinct
values is ``HLEN``. Beside it a ``meta`` hash says whether the counter has been built and is
fresh (``state``: ``ok`` or ``stale``). Keys are named by :meth:`Counter.key`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, connections, models, router, transaction
from django.db.models import Count
from django.db.models.sql.constants import MULTI

from distinct_counter import connection as redis_connection
from distinct_counter.conf import conf
from distinct_counter.connection import REDIS_ERRORS, Script, breaker, get_client, run_script
from distinct_counter.exceptions import CounterUnavailable, RebuildInProgress
from distinct_counter.registry import Counter, _text_as_is, all_counters, resolve

logger = logging.getLogger("distinct_counter")

# KEYS: values, meta, journal_on, journal. ARGV: value, delta, value, delta...
# Deltas are applied only to a built counter (meta exists), so a counter never built does not
# fill up with partial data. A count that reaches 0 is removed; a negative one is kept, since
# the matching increment of a transaction that committed earlier may still be on its way.
# While a rebuild runs (journal_on), the values touched are journaled for its recount, with
# the server time of their first touch since the rebuild last took them (ZADD NX).
APPLY = Script("""
local built = redis.call('EXISTS', KEYS[2]) == 1
local journal = redis.call('EXISTS', KEYS[3]) == 1
local now
if journal then
  local t = redis.call('TIME')
  now = t[1] .. '.' .. string.format('%06d', t[2])
end
for i = 1, #ARGV, 2 do
  if built then
    if redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) == 0 then
      redis.call('HDEL', KEYS[1], ARGV[i])
    end
  end
  if journal then redis.call('ZADD', KEYS[4], 'NX', now, ARGV[i]) end
end
return 0
""")

# KEYS: tmp, values, meta. ARGV: built_at, rows. The atomic swap at the end of a rebuild.
SWAP = Script("""
redis.call('UNLINK', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[2]) end
redis.call('HSET', KEYS[3], 'state', 'ok', 'built_at', ARGV[1], 'rows', ARGV[2])
redis.call('HDEL', KEYS[3], 'stale_since')
return redis.call('TIME')
""")

# KEYS: values. ARGV: value, count... Absolute counts from the database's recount.
# Returns the server time at which they were set.
SET_COUNTS = Script("""
for i = 1, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) == 0 then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return redis.call('TIME')
""")

# KEYS: meta. ARGV: time of the missed write. Marks a built counter stale unless it was
# rebuilt after the miss.
MARK_STALE = Script("""
local built_at = tonumber(redis.call('HGET', KEYS[1], 'built_at') or '0')
if redis.call('EXISTS', KEYS[1]) == 1 and built_at < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'state', 'stale', 'stale_since', ARGV[1])
  return 1
end
return 0
""")

RELEASE = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")

SCRIPTS = [APPLY, SWAP, SET_COUNTS, MARK_STALE, RELEASE]

#: Counters that missed writes in this process and are not yet marked stale in Redis:
#: label -> time of the first miss.
_pending_stale: dict[str, float] = {}

Deltas = dict[Counter, dict[str, int]]


# -- writing -----------------------------------------------------------------------------------


def apply_deltas(deltas: Deltas) -> None:
    """Send the deltas of one committed transaction to Redis in one round trip.

    Never raises for a Redis failure unless ``ON_ERROR`` is ``"raise"``: the counters that
    missed the write are marked stale (in Redis when it is back, and durably in the database).
    """
    deltas = {c: {v: d for v, d in values.items() if d} for c, values in deltas.items()}
    deltas = {c: values for c, values in deltas.items() if values}
    if not deltas:
        return
    alias = conf.write_cache
    gate = breaker(alias)
    if not gate.allow():
        _missed(deltas, None)
        return
    try:
        pipe = get_client(alias).pipeline(transaction=False)
        for counter, values in deltas.items():
            args: list[Any] = []
            for value, delta in values.items():
                args += [value, delta]
            keys = [counter.key("values"), counter.key("meta"), counter.key("journal_on"),
                    counter.key("journal")]
            run_script(pipe, APPLY, keys, args)
        redis_connection.execute(pipe, SCRIPTS)
    except REDIS_ERRORS as exc:
        gate.failure(exc)
        _missed(deltas, exc)
        return
    _succeeded(alias)


def _missed(deltas: Deltas, exc: BaseException | None) -> None:
    now = time.time()
    new = [c for c in deltas if c.label not in _pending_stale]
    for counter in new:
        _pending_stale[counter.label] = now
    if new:
        _record_stale([c.label for c in new], exc)
    if conf.ON_ERROR == "raise":
        labels = ", ".join(sorted(c.label for c in deltas))
        raise CounterUnavailable(
            f"Redis did not take the writes of {labels}; they are marked stale", "unreachable"
        ) from exc


def _succeeded(alias: str) -> None:
    """After a Redis call worked: on the first one in this process, or the first after a
    failure, copy the stale marks the database holds (of any process, even one that has
    died since) into Redis, with this process's own pending ones."""
    gate = breaker(alias)
    if gate.success() or not gate.synced:
        gate.synced = True
        _load_stale_marks()
    if _pending_stale:
        _push_stale()


def _push_stale() -> None:
    alias = conf.write_cache
    counters = {c.label: c for c in all_counters()}
    try:
        pipe = get_client(alias).pipeline(transaction=False)
        for label, since in _pending_stale.items():
            if label in counters:
                run_script(pipe, MARK_STALE, [counters[label].key("meta")], [since])
        redis_connection.execute(pipe, SCRIPTS)
    except REDIS_ERRORS as exc:
        breaker(alias).failure(exc)
        return
    _pending_stale.clear()


def _record_stale(labels: list[str], exc: BaseException | None, reason: str = "") -> None:
    """Write the stale mark to the database, where it survives Redis and process restarts."""
    from distinct_counter.models import CounterState

    try:
        CounterState.mark_stale(labels, reason or repr(exc))
    except DatabaseError as db_exc:  # The user's write has committed; never fail it now.
        logger.error("could not record stale counters %s in the database: %r", labels, db_exc)


def _load_stale_marks() -> None:
    from distinct_counter.models import CounterState

    try:
        marks = CounterState.stale_marks()
    except Exception as exc:  # No database access here (yet): the next sync will retry.
        logger.debug("stale marks not loaded: %r", exc)
        breaker(conf.write_cache).synced = False
        return
    for label, since in marks.items():
        _pending_stale.setdefault(label, since)


def mark_stale(counters: Iterable[Counter], reason: str) -> None:
    """Mark counters stale: their Redis data is known to be wrong until the next rebuild.

    Used when a write's effect on the counter cannot be known (raw expressions in
    ``QuerySet.update()``, ``bulk_create(ignore_conflicts=True)``...).
    """
    counters = list(counters)
    logger.warning("counters %s marked stale: %s; run manage.py rebuild_counts",
                   ", ".join(c.label for c in counters), reason)
    now = time.time()
    for counter in counters:
        _pending_stale.setdefault(counter.label, now)
    _record_stale([c.label for c in counters], None, reason)
    if breaker(conf.write_cache).allow():
        _push_stale()


def ensure_available(model: type[models.Model]) -> None:
    """With ``ON_ERROR = "raise"``, refuse a write while Redis is known to be down."""
    if conf.ON_ERROR == "raise" and not breaker(conf.write_cache).allow():
        raise CounterUnavailable(
            f"Redis is unreachable; refusing to write {model._meta.label} "
            "(DISTINCT_COUNTER['ON_ERROR'] is 'raise')", "unreachable",
        )


# -- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CountResult:
    """A count and where it came from: ``source`` is ``"redis"`` or ``"database"``; ``state``
    is the counter's: ``"ok"``, ``"stale"``, ``"missing"`` (never built) or ``"unreachable"``."""

    count: int
    source: str
    state: str


def _redis_read(counter: Counter, command: str, *args: Any) -> tuple[str, Any]:
    """Run one read command on the counter's hash with its state, in one round trip.

    Returns (state, result); state is ``"unreachable"`` when Redis failed.
    """
    alias = conf.CACHE
    gate = breaker(alias)
    if not gate.allow():
        return "unreachable", None
    try:
        pipe = get_client(alias, write=False).pipeline(transaction=False)
        pipe.hget(counter.key("meta"), "state")
        getattr(pipe, command)(counter.key("values"), *args)
        state, result = pipe.execute()
    except REDIS_ERRORS as exc:
        gate.failure(exc)
        return "unreachable", None
    _succeeded(alias)
    if counter.label in _pending_stale:  # Known here, not yet written to Redis.
        return "stale", result
    return (state.decode() if state else "missing"), result


def _fallback(counter: Counter, state: str, query: Callable[[str], Any]) -> Any:
    if conf.FALLBACK == "raise":
        hint = "Redis failed" if state == "unreachable" else "run manage.py rebuild_counts"
        raise CounterUnavailable(f"counter {counter.label} is {state} ({hint})", state)
    return query(read_database(counter.model))


def read_database(model: type[models.Model]) -> str:
    """The database alias that fallbacks read from: ``DATABASE``, else the router's choice."""
    return str(conf.DATABASE or router.db_for_read(model))


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
        count = _fallback(counter, state, lambda db: counter.model._base_manager.using(db)
                          .aggregate(n=Count(counter.attname, distinct=True))["n"])
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
        return int(_fallback(counter, state, lambda db: counter.model._base_manager.using(db)
                             .filter(**{counter.attname: denormalize(counter, text)}).count()))

    @staticmethod
    def contains(field: str, value: Any, model: type[models.Model] | str | None = None) -> bool:
        """Whether any row holds ``value`` in ``field``."""
        return DistinctCount.frequency(field, value, model) > 0

    @staticmethod
    def members(field: str, model: type[models.Model] | str | None = None,
                batch_size: int = 1000) -> Iterator[str]:
        """Iterate over the distinct values, in their normalized text form, in no order.

        Uses ``HSCAN`` (never ``HGETALL``), so a counter of millions of values streams.
        """
        counter = resolve(field, model)
        state, _ = _redis_read(counter, "exists")
        if state != "ok":
            yield from _fallback(counter, state, lambda db: (
                counter.normalize(v) for v in counter.model._base_manager.using(db)
                .filter(**{f"{counter.attname}__isnull": False}).order_by()
                .values_list(counter.attname, flat=True).distinct().iterator()))
            return
        client = get_client(conf.CACHE, write=False)
        for value, count in client.hscan_iter(counter.key("values"), count=batch_size):
            if int(count) > 0:
                yield value.decode()


def denormalize(counter: Counter, text: str) -> Any:
    """Turn a normalized value back into one the ORM can filter on."""
    target = counter.field.target_field if counter.field.is_relation else counter.field
    value = target.to_python(text)
    if isinstance(target, models.DateTimeField) and value is not None:
        from django.conf import settings
        from django.utils import timezone

        if settings.USE_TZ and timezone.is_naive(value):
            value = timezone.make_aware(value, timezone.utc)  # type: ignore[attr-defined]
    return value


# -- rebuilding and checking -------------------------------------------------------------------


def grouped_chunks(counter: Counter, using: str | models.QuerySet[Any], chunk_size: int = 5000,
                   values: list[str] | None = None) -> Iterator[dict[str, int]]:
    """``SELECT field, COUNT(*) ... GROUP BY field`` streamed (server-side cursor), normalized,
    in chunks of up to ``chunk_size`` values: ``{normalized value: rows}``.

    ``using`` is a database alias (all rows) or a queryset of the rows to count; ``values``
    restricts the count to those normalized values. Values that normalize alike (rare, e.g.
    datetimes with different offsets) are added up within a chunk. A text column whose
    values need no conversion (the common case) is taken as the database sent it, without
    a Python call per value: a rebuild of millions of values costs little more than its query.
    """
    if isinstance(using, str):
        qs = counter.model._base_manager.using(using).order_by()
    else:
        qs = using.order_by()
    if values is not None:
        qs = qs.filter(**{f"{counter.attname}__in": [denormalize(counter, v) for v in values]})
    else:
        qs = qs.filter(**{f"{counter.attname}__isnull": False})
    query = qs.values_list(counter.attname).annotate(n=Count("*")).query
    compiler = query.get_compiler(using=qs.db)
    chunks = compiler.execute_sql(
        MULTI, chunked_fetch=not connections[qs.db].settings_dict.get(
            "DISABLE_SERVER_SIDE_CURSORS"), chunk_size=chunk_size)
    converters = None
    for chunk in chunks:
        if converters is None:  # Known once the query ran.
            converters = compiler.get_converters([compiler.select[0][0]])
            as_is = not converters and _text_as_is(counter.field)
        if as_is:
            yield dict(chunk)  # GROUP BY: every value once, never NULL
            continue
        merged: dict[str, int] = {}
        for row in compiler.apply_converters(chunk, converters) if converters else chunk:
            text = counter.normalize(row[0])
            if text is not None:
                merged[text] = merged.get(text, 0) + int(row[1])
        yield merged


def grouped_counts(counter: Counter, using: str | models.QuerySet[Any], chunk_size: int = 5000,
                   values: list[str] | None = None) -> Iterator[tuple[str, int]]:
    """:func:`grouped_chunks`, one ``(value, rows)`` at a time."""
    for chunk in grouped_chunks(counter, using, chunk_size, values):
        yield from chunk.items()


@dataclass
class RebuildResult:
    counter: Counter
    rows: int
    values: int
    recounted: int
    seconds: float
    #: False when writes never paused for ``REBUILD_GRACE`` within ``REBUILD_SETTLE`` seconds
    #: after the swap: the values touched in the last moments may be off (see ``rebuild``).
    settled: bool = True


Progress = Callable[[Counter, int, int], None]


def rebuild(counter: Counter, using: str | None = None,
            progress: Progress | None = None) -> RebuildResult:
    """Rebuild one counter from the database, safely while writers keep writing.

    The values are aggregated in the database and streamed into a temporary key in batches
    of ``REBUILD_BATCH_SIZE``, which replaces the live key atomically (``RENAME``; the old
    one is freed by ``UNLINK``). Writers journal the values they touch meanwhile; those are
    recounted from the primary database after the swap, until no write has touched the
    counter for ``REBUILD_GRACE`` seconds, so a write that commits during the rebuild is
    neither lost nor counted twice.

    Why a pause is needed: a write reaches Redis just after its transaction commits, so a
    recount cannot tell, for a write that lands right after it read the database, whether
    the database's answer already included that write. A value is settled once no write
    touched it for ``REBUILD_GRACE`` (longer than any commit-to-Redis delay) around its
    recount. Values written more often than that (the hottest ones) are recounted, after
    ``REBUILD_SETTLE`` seconds, with the table's writes paused for about ``REBUILD_GRACE``
    (a ``SHARE`` lock on PostgreSQL); where that is not possible the result says
    ``settled=False`` and the counts of those values may be off by the writes in flight,
    which ``rebuild_counts --check`` at a quieter time shows.

    :raises RebuildInProgress: another rebuild of this counter is running.
    """
    started = time.monotonic()
    # Read first: asking for the write alias counts as a write with a read-your-writes router
    # (PrimaryReplicaRouter), which would send this read to the primary too.
    using = using or router.db_for_read(counter.model)
    primary = router.db_for_write(counter.model)
    client = get_client(conf.write_cache)
    lock_key, token = counter.key("lock"), uuid.uuid4().hex
    ttl_ms = 600_000
    if not client.set(lock_key, token, nx=True, px=ttl_ms):
        raise RebuildInProgress(f"another rebuild of {counter.label} is running")
    journal, journal_on, tmp = (counter.key(p) for p in ("journal", "journal_on", "tmp"))
    try:
        client.delete(journal, tmp)
        client.set(journal_on, "1", px=ttl_ms)
        # Every write committed after this moment may be missing from the scan (on a replica,
        # _wait_for_replay makes the scan see everything committed before it).
        snapshot = _server_time(client)
        _wait_for_replay(using, primary)
        rows = values = 0
        batch_size = int(conf.REBUILD_BATCH_SIZE)

        def store(batch: dict[str, int]) -> None:
            client.pipeline(transaction=False).hset(tmp, mapping=batch).pexpire(
                lock_key, ttl_ms).pexpire(journal_on, ttl_ms).execute()

        # Redis stores one batch while the database streams the next: a rebuild takes about
        # the longer of the two, not their sum. One batch in flight keeps memory flat.
        with ThreadPoolExecutor(1, thread_name_prefix="distinct_counter-rebuild") as writer:
            stored: Future[None] | None = None
            scanned: float | None = None
            for batch in grouped_chunks(counter, using, chunk_size=batch_size):
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
        if scanned is None:
            scanned = _server_time(client)
        swapped = _as_seconds(run_script(
            client, SWAP, [tmp, counter.key("values"), counter.key("meta")], [time.time(), rows]))
        if progress:
            progress(counter, rows, values)
        recounted, settled = _recount_journal(counter, client, primary, snapshot, scanned,
                                              swapped)
        client.delete(journal_on, journal)
    except BaseException:
        # Writers stop journaling for a rebuild that will not recount; the next one starts
        # afresh. Best effort: Redis may be what failed.
        with contextlib.suppress(*REDIS_ERRORS):
            client.delete(journal_on, journal, tmp)
        raise
    finally:
        with contextlib.suppress(*REDIS_ERRORS):
            run_script(client, RELEASE, [lock_key], [token])
    from distinct_counter.models import CounterState

    CounterState.mark_rebuilt(counter.label)
    _pending_stale.pop(counter.label, None)
    if not settled:
        logger.warning("Rebuild of %s: writes never paused for %ss within %ss; the counts of the "
                       "values written in its last moments may be off by writes in flight",
                       counter.label, conf.REBUILD_GRACE, conf.REBUILD_SETTLE)
    return RebuildResult(counter, rows, values, recounted, time.monotonic() - started, settled)


def _server_time(client: Any) -> float:
    return _as_seconds(client.time())


def _as_seconds(t: Any) -> float:
    """Redis ``TIME`` (seconds, microseconds) as float seconds."""
    return int(t[0]) + int(t[1]) / 1e6


def _recount_journal(counter: Counter, client: Any, primary: str,
                     snapshot: float, scanned: float, swapped: float) -> tuple[int, bool]:
    """Recount, from the primary, the values that writers touched since the rebuild began.

    A value's count is trustworthy once no write touched it from just before its count was
    read from the database until ``REBUILD_GRACE`` seconds after the count was stored: a
    write landing in that window may be one the read already saw (its transaction committed
    before the database took its snapshot, somewhere before the count was stored) or one it
    missed. The scan is such a read for every value: it took its snapshot between
    ``snapshot`` and ``scanned``, and a write it saw that lands after the swap lands before
    ``scanned + REBUILD_GRACE`` (a scan longer than the grace needs no wait at all after the
    swap); each recount is such a read for the values it reads. Values touched inside their
    window are recounted again; values touched after it are left alone, so the recount ends even
    while writers keep writing, unless they touch some value more often than the grace.
    All times are the Redis server's, so writers and the rebuild share one clock. Returns
    the number of values recounted, and False if ``REBUILD_SETTLE`` seconds passed first.
    """
    grace = float(conf.REBUILD_GRACE)
    give_up = time.monotonic() + float(conf.REBUILD_SETTLE)
    journal = counter.key("journal")
    first_window = (snapshot, max(swapped, scanned + grace))
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


def _recount_locked(counter: Counter, client: Any, primary: str,
                    windows: dict[str, tuple[float, float]], now: float,
                    recounted: int) -> tuple[int, bool]:
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
    table = connection.ops.quote_name(counter.model._meta.db_table)
    try:
        with transaction.atomic(using=primary), connection.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = %s", [LOCK_TIMEOUT])
            cur.execute(f"LOCK TABLE {table} IN SHARE MODE")
            time.sleep(float(conf.REBUILD_GRACE))
            journal = counter.key("journal")
            todo = {v.decode() for v, _ in client.zrange(journal, 0, -1, withscores=True)}
            todo.update(v for v, (_, end) in windows.items() if end > now)
            client.delete(journal)
            logger.info("Rebuild of %s: recounting %d values with writes paused",
                        counter.label, len(todo))
            values = sorted(todo)
            for start in range(0, len(values), 1000):
                _recount(counter, client, primary, values[start:start + 1000])
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
            cur.execute("SELECT pg_is_in_recovery(), "
                        "COALESCE(pg_last_wal_replay_lsn() >= %s::pg_lsn, true)", [lsn])
            in_recovery, caught_up = cur.fetchone()
            if not in_recovery or caught_up:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"database {using!r} did not replay up to {lsn} in {timeout}s")
            time.sleep(0.05)


@dataclass
class Drift:
    """How a counter in Redis differs from the database."""

    counter: Counter
    state: str
    redis_distinct: int
    db_distinct: int
    missing: int = 0
    extra: int = 0
    wrong: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state == "ok" and not (self.missing or self.extra or self.wrong)

    def as_dict(self) -> dict[str, Any]:
        return {"counter": self.counter.label, "state": self.state, "ok": self.ok,
                "redis_distinct": self.redis_distinct, "db_distinct": self.db_distinct,
                "missing": self.missing, "extra": self.extra, "wrong": self.wrong,
                "examples": self.examples}


def check(counter: Counter, using: str | None = None) -> Drift:
    """Compare a counter with the database, value by value, without changing it.

    ``missing``: values in the database but not in Redis; ``extra``: values in Redis the
    database does not hold; ``wrong``: values in both with different row counts.
    """
    using = using or read_database(counter.model)
    client = get_client(conf.CACHE, write=False)
    values_key = counter.key("values")
    state = client.hget(counter.key("meta"), "state")
    drift = Drift(counter, state.decode() if state else "missing", 0, 0)
    found = 0
    batch_size = int(conf.REBUILD_BATCH_SIZE)

    def compare(batch: dict[str, int]) -> None:
        nonlocal found
        names = list(batch)
        for name, got in zip(names, client.hmget(values_key, names)):
            if got is None:
                drift.missing += 1
                if len(drift.examples) < 10:
                    drift.examples.append(name)
                continue
            found += 1
            if int(got) != batch[name]:
                drift.wrong += 1
                if len(drift.examples) < 10:
                    drift.examples.append(name)

    batch: dict[str, int] = {}
    for text, n in grouped_counts(counter, using, chunk_size=batch_size):
        if text not in batch:
            drift.db_distinct += 1
        batch[text] = batch.get(text, 0) + n
        if len(batch) >= batch_size:
            compare(batch)
            batch = {}
    if batch:
        compare(batch)
    drift.redis_distinct = int(client.hlen(values_key))
    drift.extra = drift.redis_distinct - found
    drift.examples.sort()
    return drift


def counters_named(names: Iterable[str]) -> list[Counter]:
    """Counters selected by ``app_label``, ``app_label.Model`` or ``app_label.Model.field``.

    :raises ValueError: a name matches no counter.
    """
    counters = all_counters()
    selected: list[Counter] = []
    for name in names:
        parts = name.lower().split(".")
        matches = [c for c in counters if c.label.split(".")[: len(parts)] == parts]
        if not matches or len(parts) > 3:
            known = ", ".join(c.label for c in counters) or "none"
            raise ValueError(f"{name!r} names no counted model or field; counters: {known}")
        selected += [c for c in matches if c not in selected]
    return selected or counters
