"""The SQL side of ``manage.py bench``: loading the tables, and the queries the counters are
compared with (PostgreSQL only)."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator

from django.db import connection, transaction
from django.db.models import Model

from messaging import sample
from messaging.models import Message, PlainMessage

COPY_CHUNK = 100_000
COLUMNS = ("username", "city", "text", "created_at")


def quote(name: str) -> str:
    return str(connection.ops.quote_name(name))


def table(model: type[Model]) -> str:
    return quote(model._meta.db_table)


def column(model: type[Model], field: str) -> str:
    return quote(model._meta.get_field(field).column)


def scalar(sql: str) -> int:
    with connection.cursor() as cur:
        cur.execute(sql)
        return int(cur.fetchone()[0])


# -- loading -----------------------------------------------------------------------------------


def _csv_chunks(count: int, seed: int) -> Iterator[io.StringIO]:
    """The sample messages as CSV (an unquoted empty field is NULL to ``COPY ... csv``)."""
    created = "2026-01-01 00:00:00+00"
    rows = sample.messages(count, seed=seed)
    while chunk := list(itertools.islice(rows, COPY_CHUNK)):
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        for m in chunk:
            writer.writerow((m.username, m.city, m.text, created))
        buffer.seek(0)
        yield buffer


def copy_messages(count: int, seed: int) -> None:
    """``COPY`` ``count`` sample messages into ``Message``'s table: no ORM, so no counting;
    the counters are rebuilt afterwards, as after any write the ORM cannot see."""
    columns = ", ".join(column(Message, f) for f in COLUMNS)
    sql = f"COPY {table(Message)} ({columns}) FROM STDIN WITH (FORMAT csv)"
    with connection.cursor() as cur:
        for buffer in _csv_chunks(count, seed):
            cur.cursor.copy_expert(sql, buffer)


def copy_to_plain() -> None:
    """Give ``PlainMessage`` the same rows as ``Message``, so both tables are alike."""
    columns = ", ".join(column(Message, f) for f in COLUMNS)
    with connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO {table(PlainMessage)} ({columns}) SELECT {columns} FROM {table(Message)}"
        )


def truncate() -> None:
    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {table(Message)}, {table(PlainMessage)}")


def analyze() -> None:
    with connection.cursor() as cur:
        cur.execute(f"VACUUM ANALYZE {table(Message)}")
        cur.execute(f"VACUUM ANALYZE {table(PlainMessage)}")


def ensure_index(field: str) -> bool:
    """An index led by ``field``'s column on ``Message``'s table, created when there is none
    (the example's migration builds one). Returns whether it had to be created."""
    name = Message._meta.get_field(field).column
    with connection.cursor() as cur:
        constraints = connection.introspection.get_constraints(cur, Message._meta.db_table)
        if any(c["index"] and c["columns"][:1] == [name] for c in constraints.values()):
            return False
        cur.execute(
            f"CREATE INDEX {quote(f'bench_{name}_idx')} ON {table(Message)} ({quote(name)})"
        )
    return True


def server_settings(*names: str) -> dict[str, str]:
    with connection.cursor() as cur:
        found = {}
        for name in names:
            cur.execute(f"SHOW {name}")
            found[name] = str(cur.fetchone()[0])
    return found


# -- what the counters are compared with -------------------------------------------------------


def count_distinct_sql(field: str) -> str:
    return f"SELECT COUNT(DISTINCT {column(Message, field)}) FROM {table(Message)}"


def distinct_subquery_sql(field: str) -> str:
    """``SELECT DISTINCT`` counted outside: an index scan and a unique, no sort of the whole
    column. ``count(v)``, not ``count(*)``: NULL is a row of ``DISTINCT``, not a value."""
    col = column(Message, field)
    return f"SELECT count(v) FROM (SELECT DISTINCT {col} AS v FROM {table(Message)}) s"


def skip_scan_sql(field: str) -> str:
    """A recursive skip scan: one index probe per distinct value (a loose index scan)."""
    col, t = column(Message, field), table(Message)
    return (
        f"WITH RECURSIVE s AS ((SELECT min({col}) AS v FROM {t}) UNION ALL "
        f"SELECT (SELECT min({col}) FROM {t} WHERE {col} > s.v) FROM s WHERE s.v IS NOT NULL) "
        "SELECT count(v) FROM s"
    )


DBA_QUERIES = {
    "COUNT(DISTINCT)": count_distinct_sql,
    "SELECT DISTINCT subquery": distinct_subquery_sql,
    "recursive skip scan": skip_scan_sql,
}


def count_distinct(field: str) -> int:
    return scalar(count_distinct_sql(field))


def group_by(field: str, chunk_size: int) -> int:
    """The bare query a rebuild streams: ``SELECT field, COUNT(*) ... GROUP BY field``, read
    to the end through a server-side cursor of ``chunk_size`` rows. Returns its row count."""
    col = column(Message, field)
    sql = f"SELECT {col}, COUNT(*) FROM {table(Message)} WHERE {col} IS NOT NULL GROUP BY {col}"
    connection.ensure_connection()
    with transaction.atomic():
        cur = connection.connection.cursor(name="bench_group_by")
        cur.itersize = chunk_size
        cur.execute(sql)
        rows = sum(1 for _ in cur)
        cur.close()
    return rows
