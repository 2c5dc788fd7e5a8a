"""The rows a write changes, read with their counted values and locked until the transaction
ends, so that with concurrent writers only the row as it is now says which value loses a
reference (never a snapshot taken when an instance was loaded)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connections, models
from django.db.models.sql import UpdateQuery

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
    pks = list(dict.fromkeys(canonical_pk(model, pk) for pk in pks))
    counters = list(counters)
    if not pks or not counters:
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


def update_returning_old(
    base_qs: models.QuerySet[Any], pk: Any, values: list[Any], counters: Sequence[Counter]
) -> tuple[Any, ...] | None:
    """Run the UPDATE of a ``save()`` (Django's ``values``: (field, model, value) triples)
    on the row ``pk``, and return the values ``counters`` had in the row it overwrote, or
    None when no row matched (no UPDATE happened). PostgreSQL only.

    One statement, in the save's own transaction or in autocommit, with no round trip of
    its own: ``UPDATE t SET ... FROM (SELECT ... FOR UPDATE) AS old ... RETURNING old.*``.
    The subquery locks the row and reads it as it is now (after waiting for a concurrent
    writer, the version that writer committed), so the values returned are those the
    UPDATE replaced, even with concurrent writers (what :func:`locked_rows` gives, with a
    SELECT, a BEGIN and a COMMIT fewer).
    """
    query: Any = base_qs.query.chain(UpdateQuery)
    query.add_update_fields(values)
    query.annotations = {}
    using = base_qs.db
    connection = connections[using]
    set_sql, params = query.get_compiler(using).as_sql()
    meta = base_qs.model._meta
    qn = connection.ops.quote_name
    table, key = qn(meta.db_table), qn(str(meta.pk.column))
    columns = [qn(str(c.field.column)) for c in counters]
    sql = (
        f"{set_sql} FROM (SELECT r.{key}, {', '.join(f'r.{c}' for c in columns)} "
        f"FROM {table} AS r WHERE r.{key} = %s FOR UPDATE) AS _dc_old "
        f"WHERE {table}.{key} = _dc_old.{key} "
        f"RETURNING {', '.join(f'_dc_old.{c}' for c in columns)}"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [*params, meta.pk.get_db_prep_value(pk, connection)])
        row = cur.fetchone()
    if row is None:
        return None
    return tuple(_from_db(c, value, connection) for c, value in zip(counters, row, strict=True))


def _from_db(counter: Counter, value: Any, connection: Any) -> Any:
    """A column's value as the ORM would read it (the converters of ``values_list``)."""
    col = counter.field.get_col(counter.model._meta.db_table)
    for convert in connection.ops.get_db_converters(col) + col.get_db_converters(connection):
        value = convert(value, col, connection)
    return value
