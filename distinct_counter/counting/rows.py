"""The rows a write changes, read with their counted values and locked until the transaction
ends, so that with concurrent writers only the row as it is now says which value loses a
reference (never a snapshot taken when an instance was loaded)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connections, models

from distinct_counter.counting.registry import Counter, lineage

#: The absence of a row is locked in one of this many advisory locks per table (a row's pk
#: picks one): a bulk insert of many explicit pks takes at most this many locks.
LOCK_BUCKETS = 1024


def canonical_pk(model: type[models.Model], pk: Any) -> Any:
    """``pk`` as the database gives it back (``"7"`` -> ``7``, a UUID's text -> ``UUID``)."""
    try:
        return model._meta.pk.to_python(pk)
    except ValidationError:
        return pk  # The query that follows reports it, as Django would.


def locked_rows(
    model: type[models.Model], using: str, pks: Iterable[Any], counters: Iterable[Counter]
) -> dict[Any, tuple[Any, ...]]:
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
    counters = list(counters)
    if not counters:
        return {}
    pks = list(dict.fromkeys(canonical_pk(model, pk) for pk in pks))
    if not pks:
        return {}
    locking = connections[using].in_atomic_block
    tables = lineage(model)
    direct = [c for c in counters if c.model in tables]
    rows = _read(model, using, pks, direct, locking)
    missing = [pk for pk in pks if pk not in rows]
    if missing and locking and lock_absent(model, using, missing):
        rows.update(_read(model, using, missing, direct, locking))
    # A multi-table descendant's counter of a column of these tables: its value where the
    # row is one of the descendant's, nothing (not counted there) elsewhere.
    values = {c: i for i, c in enumerate(direct)}
    below: dict[Counter, dict[Any, Any]] = {}
    for sub in dict.fromkeys(c.model for c in counters if c.model not in tables):
        subs = [c for c in counters if c.model is sub]
        found = _read(sub, using, list(rows), subs, locking)
        below.update({c: {pk: row[i] for pk, row in found.items()} for i, c in enumerate(subs)})
    return {
        pk: tuple(row[values[c]] if c in values else below[c].get(pk) for c in counters)
        for pk, row in rows.items()
    }


def selected(counters: Iterable[Counter]) -> tuple[list[Any], list[int]]:
    """What to select for ``counters`` after the pk, each column once (a multi-table child's
    counters may name one twice: its own counter of a parent's field, and the parent's),
    and where each counter's value is in a row of ``values_list("pk", *columns)``."""
    counters = list(counters)
    columns = list(dict.fromkeys(c.column for c in counters))
    return columns, [columns.index(c.column) + 1 for c in counters]


def _read(
    model: type[models.Model], using: str, pks: list[Any], counters: list[Counter], locking: bool
) -> dict[Any, tuple[Any, ...]]:
    """The rows ``pks`` of ``model`` with the values of ``counters``, locked if ``locking``."""
    columns, picks = selected(counters)
    found: dict[Any, tuple[Any, ...]] = {}
    for start in range(0, len(pks), 1000):
        qs = model._base_manager.using(using).filter(pk__in=pks[start : start + 1000])
        if locking:
            qs = qs.select_for_update()
        for r in qs.order_by("pk").values_list("pk", *columns):
            found[r[0]] = tuple(r[i] for i in picks)
    return found


def locked_row(
    model: type[models.Model], using: str, pk: Any, counters: Iterable[Counter]
) -> tuple[Any, ...] | None:
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
    # A multi-table child's pk is its root parent's: lock in the root's table, as an insert
    # through the parent or any child of it does.
    concrete = model._meta.concrete_model or model
    table = ([concrete, *concrete._meta.get_parent_list()])[-1]._meta.db_table
    keys = sorted({f"{table}:{canonical_pk(model, pk)}" for pk in pks})
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(pg_advisory_xact_lock(hashtext(%s), b)) FROM "
            "(SELECT DISTINCT hashtext(k) & %s AS b FROM unnest(%s::text[]) AS k "
            "ORDER BY b) AS buckets",
            [table, LOCK_BUCKETS - 1, keys],
        )
    return True
