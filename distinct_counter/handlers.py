"""Signal handlers that turn saves and deletes of counted models into counter deltas.

Old values are always read from the database, locked (``SELECT ... FOR UPDATE``) inside the
writing transaction, never from a snapshot taken when the instance was loaded: with concurrent
writers only the row as it is now says which value loses a reference.

Deltas are sent after the transaction commits, all of one transaction in one Redis round trip
(:class:`_Batch`); a rolled-back transaction or savepoint sends nothing.
"""

from __future__ import annotations

import contextvars
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connections, models, transaction
from django.db.models.signals import post_delete, post_save, pre_delete, pre_save

from distinct_counter.counting import Deltas, apply_deltas, ensure_available, mark_stale
from distinct_counter.registry import Counter, counters_of

_OLD = "_distinct_counter_old"

#: Old values of rows that ``CountedQuerySet.delete()`` already read, locked, in one query:
#: (model, pk) -> values, so the per-instance handler does not read them again.
prefetched_deletes: contextvars.ContextVar[dict[tuple[type[models.Model], Any], tuple[Any, ...]]] = (
    contextvars.ContextVar("distinct_counter_prefetched_deletes", default={})
)


class _Batch:
    """The deltas of one transaction on one connection, sent once after it commits.

    Each write registers a :class:`_Part` with ``transaction.on_commit``, so Django itself
    drops the parts of a rolled-back savepoint. The batch is kept as the last commit hook with
    no savepoint of its own (it is never dropped): when it runs, every surviving part has
    already added its deltas to it.
    """

    def __init__(self) -> None:
        self.deltas: Deltas = defaultdict(lambda: defaultdict(int))

    def add(self, deltas: Deltas) -> None:
        for counter, values in deltas.items():
            mine = self.deltas[counter]
            for value, delta in values.items():
                mine[value] += delta

    def __call__(self) -> None:
        deltas, self.deltas = self.deltas, defaultdict(lambda: defaultdict(int))
        apply_deltas(deltas)


class _Part:
    def __init__(self, deltas: Deltas) -> None:
        self.deltas = deltas
        self.batch: _Batch | None = None

    def __call__(self) -> None:
        if self.batch is not None:
            self.batch.add(self.deltas)


def record(using: str, deltas: Deltas) -> None:
    """Send ``deltas`` to Redis when the current transaction on ``using`` commits."""
    conn = connections[using]
    if not conn.in_atomic_block:
        apply_deltas(deltas)
        return
    part = _Part(deltas)
    transaction.on_commit(part, using=using)
    hooks = conn.run_on_commit
    # Django stores hooks as (savepoint ids, func, robust). Ours is normally just before the
    # part appended above; another app's hook in between makes us look further.
    index = next((i for i in range(len(hooks) - 2, -1, -1) if isinstance(hooks[i][1], _Batch)),
                 None)
    entry = hooks.pop(index) if index is not None else (set(), _Batch(), False)
    hooks.append(entry)
    part.batch = entry[1]


def on_commit_stale(using: str, counters: list[Counter], reason: str) -> None:
    """Mark counters stale once the current transaction commits (not if it rolls back)."""
    transaction.on_commit(lambda: mark_stale(counters, reason), using=using)


def _tracked(sender: type[models.Model], update_fields: Any) -> tuple[Counter, ...]:
    counters = counters_of(sender)
    if update_fields is not None:
        names = set(update_fields)
        counters = tuple(c for c in counters if c.field.name in names or c.attname in names)
    return counters


#: The absence of a row is locked in one of this many advisory locks per table (a row's pk
#: picks one): a bulk insert of many explicit pks takes at most this many locks.
LOCK_BUCKETS = 1024


def canonical_pk(model: type[models.Model], pk: Any) -> Any:
    """``pk`` as the database gives it back (``"7"`` -> ``7``, a UUID's text -> ``UUID``)."""
    try:
        return model._meta.pk.to_python(pk)  # type: ignore[union-attr]
    except ValidationError:
        return pk  # The query that follows reports it, as Django would.


def locked_rows(model: type[models.Model], using: str, pks: Iterable[Any],
                counters: tuple[Counter, ...]) -> dict[Any, tuple[Any, ...]]:
    """The current values of ``counters`` in the rows ``pks``, locked until the transaction
    ends (``SELECT ... FOR UPDATE``), keyed by :func:`canonical_pk`. A pk with no row gets
    no entry.

    On PostgreSQL the absence of a row is locked too, with a transaction-level advisory lock
    (:func:`lock_absent`) that every insert of an explicit pk takes the same way (a
    ``save()`` of an instance whose row was deleted re-inserts it): without it, the UPDATE or
    DELETE that follows could meet a row that another transaction inserted meanwhile, whose
    values no delta accounts for. Rows that appeared while the lock was awaited are read
    again. This costs a query only when a row is missing, which is rare.
    """
    pks = list(dict.fromkeys(canonical_pk(model, pk) for pk in pks))
    if not pks:
        return {}
    conn = connections[using]
    locking = conn.in_atomic_block
    attnames = [c.attname for c in counters]

    def read(keys: list[Any]) -> dict[Any, tuple[Any, ...]]:
        found: dict[Any, tuple[Any, ...]] = {}
        for start in range(0, len(keys), 1000):
            qs = model._base_manager.using(using).filter(pk__in=keys[start:start + 1000])
            if locking:
                qs = qs.select_for_update()
            found.update((r[0], r[1:]) for r in qs.order_by("pk").values_list("pk", *attnames))
        return found

    rows = read(pks)
    missing = [pk for pk in pks if pk not in rows]
    if missing and locking and lock_absent(model, using, missing):
        rows.update(read(missing))
    return rows


def locked_row(model: type[models.Model], using: str, pk: Any,
               counters: tuple[Counter, ...]) -> tuple[Any, ...] | None:
    """:func:`locked_rows` of one row: its values, or None when it does not exist."""
    return next(iter(locked_rows(model, using, [pk], counters).values()), None)


def lock_absent(model: type[models.Model], using: str, pks: list[Any]) -> bool:
    """Take the advisory locks that cover ``pks`` of ``model``'s table (PostgreSQL only,
    inside a transaction; False elsewhere).

    One of :data:`LOCK_BUCKETS` locks per table covers each pk, taken in sorted order, so
    transactions taking only these locks cannot deadlock on them, and a bulk insert holds a
    bounded number of locks (PostgreSQL's lock table is shared and small).
    """
    conn = connections[using]
    if conn.vendor != "postgresql" or not pks:
        return False
    table = model._meta.db_table
    keys = sorted({f"{table}:{canonical_pk(model, pk)}" for pk in pks})
    with conn.cursor() as cur:
        cur.execute("SELECT count(pg_advisory_xact_lock(hashtext(%s), b)) FROM "
                    "(SELECT DISTINCT hashtext(k) & %s AS b FROM unnest(%s::text[]) AS k "
                    "ORDER BY b) AS buckets", [table, LOCK_BUCKETS - 1, keys])
    return True


def deltas_between(counters: tuple[Counter, ...], old: tuple[Any, ...] | None,
                   new: tuple[Any, ...] | None) -> Deltas:
    """The deltas of one row going from ``old`` to ``new`` values (None: no row)."""
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


def handle_pre_save(sender: type[models.Model], instance: models.Model, using: str,
                    update_fields: Any = None, **kwargs: Any) -> None:
    counters = _tracked(sender, update_fields)
    if not counters:
        return
    ensure_available(sender)
    old = None
    if instance.pk is not None and not (instance._state.adding and sender._meta.pk.has_default()):
        old = locked_row(sender, using, instance.pk, counters)
    instance.__dict__[_OLD] = (counters, old)


def handle_post_save(sender: type[models.Model], instance: models.Model, using: str,
                     created: bool, **kwargs: Any) -> None:
    stash = instance.__dict__.pop(_OLD, None)
    if stash is None:
        return
    counters, old = stash
    new = tuple(getattr(instance, c.attname) for c in counters)
    record(using, deltas_between(counters, None if created else old, new))


def handle_pre_delete(sender: type[models.Model], instance: models.Model, using: str,
                      **kwargs: Any) -> None:
    counters = counters_of(sender)
    if not counters or instance.pk is None:
        return
    ensure_available(sender)
    prefetched = prefetched_deletes.get()
    key = (sender, instance.pk)
    if key in prefetched:
        old = prefetched[key]
    else:
        old = locked_row(sender, using, instance.pk, counters)
    instance.__dict__[_OLD] = (counters, old)


def handle_post_delete(sender: type[models.Model], instance: models.Model, using: str,
                       **kwargs: Any) -> None:
    stash = instance.__dict__.pop(_OLD, None)
    if stash is None:
        return
    counters, old = stash
    record(using, deltas_between(counters, old, None))


def connect(model: type[models.Model]) -> None:
    """Connect the handlers for one counted model (``sender=``, so other models pay nothing)."""
    uid = f"distinct_counter:{model._meta.label}"
    pre_save.connect(handle_pre_save, sender=model, dispatch_uid=uid)
    post_save.connect(handle_post_save, sender=model, dispatch_uid=uid)
    pre_delete.connect(handle_pre_delete, sender=model, dispatch_uid=uid)
    post_delete.connect(handle_post_delete, sender=model, dispatch_uid=uid)
