"""Writes done in one SQL statement that also says what it changed (PostgreSQL).

Django's compiler builds the ``SET`` of the UPDATE, as for any ``save()`` or ``update()``;
the rest of the statement is ours: a ``FROM`` that reads the old values (locked), a
``RETURNING`` that hands them back, or a pk list bound as one array. A write then costs the
statement it costs anyway, not a SELECT, a BEGIN and a COMMIT more. Each also returns its
transaction's id (``pg_current_xact_id()``, :data:`TXID`), which a rebuild checks against
its scan's snapshot (``scripts.APPLY``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.exceptions import EmptyResultSet, FullResultSet
from django.db import connections, models
from django.db.models.sql import DeleteQuery, InsertQuery, UpdateQuery

from distinct_counter.counting.deltas import Deltas, tally_counts
from distinct_counter.counting.registry import Counter

#: The writing transaction's id, as text (the top-level one, even in a savepoint).
TXID = "pg_current_xact_id()::text"


def insert_returning_txid(
    manager: Any, using: str, fields: Any, returning_fields: Any, raw: bool, obj: Any
) -> tuple[list[Any], str]:
    """Django's INSERT of a ``save()`` (``Model._do_insert``), returning also its
    transaction's id: ``(rows, txid)``, ``rows`` as Django's own INSERT returns them.

    Django's compiler builds and runs the statement, and reads what it returns; only
    :data:`TXID` is added to its ``RETURNING`` (which then always names the pk, so that
    there is one), and taken off the row it returns."""
    query = InsertQuery(manager.model)
    query.insert_values(fields, [obj], raw=raw)
    compiler = query.get_compiler(using=using)
    as_sql = compiler.as_sql

    def with_txid() -> list[tuple[str, Any]]:
        [(sql, params)] = as_sql()
        return [(f"{sql}, {TXID}", params)]

    compiler.as_sql = with_txid
    [row] = compiler.execute_sql(list(returning_fields or ()) or [manager.model._meta.pk])
    *values, txid = row
    return ([tuple(values)] if returning_fields else []), txid


def _set_clause(
    model: type[models.Model], using: str, values: list[Any] | dict[str, Any]
) -> tuple[str, list[Any]]:
    """``UPDATE table SET ...`` of a save's ``values`` ((field, model, value) triples) or of
    an ``update()``'s keyword arguments, with no WHERE at all (a fresh query, not one of a
    manager that may filter): the caller adds its own."""
    query = UpdateQuery(model)
    if isinstance(values, dict):
        query.add_update_values(values)
    else:
        query.add_update_fields(values)
    sql, params = query.get_compiler(using).as_sql()
    return sql, list(params)


def update_returning_old(
    base_qs: models.QuerySet[Any], pk: Any, values: list[Any], counters: Sequence[Counter]
) -> tuple[tuple[Any, ...], str] | None:
    """Run the UPDATE of a ``save()`` (Django's ``values``: (field, model, value) triples)
    on the row ``pk``, and return the values ``counters`` had in the row it overwrote, with
    the transaction's id; None when no row matched (no UPDATE happened). PostgreSQL only.

    One statement, in the save's own transaction or in autocommit, with no round trip of
    its own: ``UPDATE t SET ... FROM (SELECT ... FOR UPDATE) AS old ... RETURNING old.*``.
    The subquery locks the row and reads it as it is now (after waiting for a concurrent
    writer, the version that writer committed), so the values returned are those the
    UPDATE replaced, even with concurrent writers (what :func:`locked_rows` gives, with a
    SELECT, a BEGIN and a COMMIT fewer).
    """
    connection = connections[base_qs.db]
    set_sql, params = _set_clause(base_qs.model, base_qs.db, values)
    meta = base_qs.model._meta
    qn = connection.ops.quote_name
    table, key = qn(meta.db_table), qn(str(meta.pk.column))
    columns = [qn(str(c.field.column)) for c in counters]
    # Aliased: a counted column may be the pk itself.
    picked = ", ".join(f"r.{c} AS _dc_{i}" for i, c in enumerate(columns))
    sql = (
        f"{set_sql} FROM (SELECT r.{key} AS _dc_pk, {picked} "
        f"FROM {table} AS r WHERE r.{key} = %s FOR UPDATE) AS _dc_old "
        f"WHERE {table}.{key} = _dc_old._dc_pk "
        f"RETURNING {', '.join(f'_dc_old._dc_{i}' for i in range(len(columns)))}, {TXID}"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [*params, meta.pk.get_db_prep_value(pk, connection)])
        row = cur.fetchone()
    if row is None:
        return None
    *old, txid = row
    return tuple(
        _from_db([value], c, connection)[0] for c, value in zip(counters, old, strict=True)
    ), txid


def _from_db(values: Sequence[Any], counter: Counter, connection: Any) -> list[Any]:
    """Values of ``counter``'s column as the ORM would read them (the converters of
    ``values_list``; most columns have none)."""
    col = counter.field.get_col(counter.model._meta.db_table)
    converters = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
    if not converters:
        return list(values)
    converted = []
    for value in values:
        for convert in converters:
            value = convert(value, col, connection)
        converted.append(value)
    return converted


def update_pks(base_qs: models.QuerySet[Any], kwargs: dict[str, Any], pks: list[Any]) -> int:
    """``base_qs.filter(pk__in=pks).update(**kwargs)`` of a model with no multi-table
    parent, with the pks bound as one array (``= ANY(%s)``): Django's ``IN`` list of
    thousands of parameters costs more to build than the UPDATE does to run. Returns the
    number of rows updated."""
    if not pks:
        return 0
    connection = connections[base_qs.db]
    set_sql, params = _set_clause(base_qs.model, base_qs.db, kwargs)
    meta = base_qs.model._meta
    pk: Any = meta.pk
    qn = connection.ops.quote_name
    array = f"%s::{pk.rel_db_type(connection)}[]"
    with connection.cursor() as cur:
        cur.execute(
            f"{set_sql} WHERE {qn(meta.db_table)}.{qn(str(pk.column))} = ANY({array})",
            [*params, [pk.get_db_prep_value(v, connection) for v in pks]],
        )
        return int(cur.rowcount)


def delete_returning(
    queryset: models.QuerySet[Any], counters: Sequence[Counter]
) -> tuple[int, Deltas, str | None]:
    """Delete the rows of ``queryset`` (of one table, with nothing for Django's collector to
    do) in one ``DELETE ... RETURNING``, and return how many rows went and the deltas of
    ``counters``: the values of the rows the statement itself deleted, grouped in the
    database (``WITH gone AS (DELETE ... RETURNING ...) SELECT ..., count(*) ... GROUP
    BY GROUPING SETS``), so no row is read, locked or sent twice; and the transaction's id
    (None when no row went)."""
    query: Any = queryset.query.clone()
    query.__class__ = DeleteQuery  # as Django's own QuerySet._raw_delete()
    connection = connections[queryset.db]
    try:
        delete_sql, params = query.get_compiler(queryset.db).as_sql()
    except EmptyResultSet:  # .none(), or a filter that matches nothing by construction
        return 0, {}, None
    qn = connection.ops.quote_name
    columns = list(dict.fromkeys(qn(str(c.field.column)) for c in counters))
    listed = ", ".join(columns)
    # Each column grouped apart (GROUPING SETS). Grouping by all columns at once would
    # return about a row per deleted row when one of them is nearly unique.
    sets = ", ".join(f"({c})" for c in columns)
    sql = (
        f"WITH _dc_gone AS ({delete_sql} RETURNING {listed}) "
        f"SELECT {listed}, GROUPING({listed}), {TXID}, count(*) FROM _dc_gone "
        f"GROUP BY GROUPING SETS ({sets})"
    )
    with connection.cursor() as cur:
        cur.execute(sql, params)
        groups = cur.fetchall()
    width = len(columns)
    # The groups of each column: GROUPING(...) has bit (width - 1 - i) clear in column i's.
    grouped = [[g for g in groups if not g[width] & 1 << (width - 1 - i)] for i in range(width)]
    deltas: Deltas = {}
    for c in counters:
        at = columns.index(qn(str(c.field.column)))
        values = _from_db([g[at] for g in grouped[at]], c, connection)
        tally_counts(deltas, c, zip(values, (g[-1] for g in grouped[at]), strict=True), -1)
    # Every deleted row is in one group of each column, NULL's included: count column 0's.
    return sum(g[-1] for g in grouped[0]), deltas, (groups[0][-2] if groups else None)


def _rows_of(queryset: models.QuerySet[Any], columns: list[str]) -> tuple[str, list[Any]]:
    """``SELECT columns`` (SQL of the table's own columns, unqualified) of the rows of
    ``queryset``: with its ``WHERE`` as is when it reads its table alone, as Django's own
    UPDATE does (a range of pks is then a range of an index); else ``WHERE pk IN (its
    query)``, which PostgreSQL may answer by reading the whole table.

    :raises EmptyResultSet: the queryset matches nothing by construction.
    """
    db = queryset.db
    qn = connections[db].ops.quote_name
    meta = queryset.model._meta
    table = qn(meta.db_table)
    query = queryset.order_by().query.chain()
    query.get_initial_alias()
    if (
        query.count_active_tables() > 1
        or query.distinct
        or query.combinator
        or query.group_by is not None
        or query.annotations
    ):
        inner, params = queryset.order_by().values("pk").query.get_compiler(db).as_sql()
        listed = ", ".join(f"r.{c}" for c in columns)
        key = qn(str(meta.pk.column))
        return f"SELECT {listed} FROM {table} AS r WHERE r.{key} IN ({inner})", list(params)
    listed = ", ".join(f"{table}.{c}" for c in columns)
    try:
        where, params = query.get_compiler(db).compile(query.where)
    except FullResultSet:  # every row
        return f"SELECT {listed} FROM {table}", []
    return f"SELECT {listed} FROM {table} WHERE {where}", list(params)


def update_returning(
    queryset: models.QuerySet[Any], kwargs: dict[str, Any], counters: Sequence[Counter]
) -> tuple[int, Deltas, list[Any], str | None]:
    """``queryset.update(**kwargs)`` of a model with no multi-table parent, in one
    statement that also returns the old values of ``counters`` in the rows it updated,
    grouped in the database. Returns the rows updated, their old values' deltas (-1 per
    row), the pks it skipped and the transaction's id (None when no row was updated).

    No row is locked before the UPDATE: the rows are read (``_dc_old``) and updated
    (``_dc_new``) by the statement's one snapshot, joined on their ``ctid``, the address
    of the row version read. A row another transaction changed meanwhile has moved to a
    new version: the UPDATE, rechecking it after that writer committed, no longer finds
    the version read, and leaves it alone. Those rows come back as skipped, for the
    caller to update again, locked; every row updated here was updated from the very
    values returned.
    """
    db = queryset.db
    connection = connections[db]
    meta = queryset.model._meta
    qn = connection.ops.quote_name
    table, key = qn(meta.db_table), qn(str(meta.pk.column))
    columns = list(dict.fromkeys(qn(str(c.field.column)) for c in counters))
    try:
        picked = ["ctid AS _dc_tid", f"{key} AS _dc_pk", *columns]
        rows_sql, rows_params = _rows_of(queryset, picked)
    except EmptyResultSet:
        return 0, {}, [], None
    set_sql, set_params = _set_clause(queryset.model, db, kwargs)
    old = ", ".join(f"n.{c}" for c in columns)
    # The skipped rows are looked for only when fewer rows were updated than read.
    sql = (
        f"WITH _dc_old AS MATERIALIZED ({rows_sql}), "
        f"_dc_new AS ({set_sql} FROM _dc_old WHERE {table}.ctid = _dc_old._dc_tid "
        f"RETURNING _dc_old._dc_pk, {', '.join(f'_dc_old.{c}' for c in columns)}) "
        f"SELECT false, {old}, {TXID}, count(*), NULL FROM _dc_new AS n GROUP BY {old} "
        f"UNION ALL SELECT true, {', '.join('NULL' for _ in columns)}, NULL, 0, o._dc_pk "
        f"FROM _dc_old AS o WHERE (SELECT count(*) FROM _dc_new) < (SELECT count(*) FROM _dc_old) "
        f"AND o._dc_pk NOT IN (SELECT _dc_pk FROM _dc_new)"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [*rows_params, *set_params])
        rows = cur.fetchall()
    groups = [r for r in rows if not r[0]]
    deltas: Deltas = {}
    for c in counters:
        at = columns.index(qn(str(c.field.column))) + 1
        values = _from_db([g[at] for g in groups], c, connection)
        tally_counts(deltas, c, zip(values, (g[-2] for g in groups), strict=True), -1)
    txid = groups[0][-3] if groups else None
    return sum(g[-2] for g in groups), deltas, [r[-1] for r in rows if r[0]], txid
