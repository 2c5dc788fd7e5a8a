"""A migration operation that adds a unique constraint without locking writes.

``AddConstraint`` of a ``UniqueConstraint`` runs ``ALTER TABLE ... ADD CONSTRAINT ... UNIQUE``,
which builds the index under an ACCESS EXCLUSIVE lock: no read or write of the table for the
whole build. :class:`AddUniqueConstraintConcurrently` builds the unique index with ``CREATE
UNIQUE INDEX CONCURRENTLY`` (writes go on), then attaches it with ``ALTER TABLE ... ADD
CONSTRAINT ... UNIQUE USING INDEX``, a catalog change of milliseconds whose lock is asked for
with a short ``lock_timeout`` and retried with backoff, so it never queues writers behind it
for longer (the approach of kraken-tech's django-pg-migration-tools)::

    from django.db import migrations, models
    import distinct_counter.indexes.constraints

    class Migration(migrations.Migration):
        atomic = False
        dependencies = [("shop", "0007_previous")]
        operations = [
            distinct_counter.indexes.constraints.AddUniqueConstraintConcurrently(
                model_name="order",
                constraint=models.UniqueConstraint(fields=["number"], name="order_number_uniq"),
            ),
        ]

A unique constraint with a ``condition``, ``include``, ``opclasses`` or expressions is a
unique index in Django (no ``ALTER TABLE`` can attach it): that index is built concurrently,
and that is all. On PostgreSQL the operation, like :mod:`~distinct_counter.indexes.operations`'
ones, refuses a transaction, lifts the session's timeouts for the build, drops an INVALID
leftover of an interrupted build first, holds an advisory lock on the name so two ``migrate``
runs do not build it twice, and finds a constraint already there done. Duplicates in the
table fail it with the first duplicate values named, the table left as it was. Elsewhere it is
``AddConstraint``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from django.db import DatabaseError, IntegrityError, OperationalError, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.operations import AddConstraint

from distinct_counter.indexes.operations import (
    _Concurrently,
    _lifted_timeouts,
    _one_build_at_a_time,
    build_concurrently,
)

__all__ = ["AddUniqueConstraintConcurrently"]

logger = logging.getLogger("distinct_counter")

#: SQLSTATE of a lock not granted within ``lock_timeout``.
_LOCK_NOT_AVAILABLE = "55P03"
#: Duplicate values named in the error of a constraint the table's rows break.
_EXAMPLES = 3


class AddUniqueConstraintConcurrently(_Concurrently, AddConstraint):
    """``AddConstraint`` of a ``UniqueConstraint`` that does not lock writes on PostgreSQL
    (see the module's documentation); ``AddConstraint`` elsewhere. The migration must have
    ``atomic = False``.

    ``lock_timeout`` (PostgreSQL's syntax, default ``"2s"``) bounds each wait for the short
    lock of the final ``ALTER TABLE``; it is tried ``retries`` more times (default 5), after
    waits doubling from 0.5 s, before the migration fails (the valid unique index is kept:
    the next run only attaches it).
    """

    creates = True

    def __init__(
        self,
        model_name: str,
        constraint: models.UniqueConstraint,
        lock_timeout: str = "2s",
        retries: int = 5,
    ) -> None:
        if not isinstance(constraint, models.UniqueConstraint):
            raise ValueError(
                f"AddUniqueConstraintConcurrently takes a UniqueConstraint, not {constraint!r}"
            )
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries!r}")
        super().__init__(model_name, constraint)
        self.lock_timeout = lock_timeout
        self.retries = retries

    @property
    def unique(self) -> Any:
        """The ``UniqueConstraint`` (``AddConstraint`` types it as any constraint)."""
        return self.constraint

    def deconstruct(self) -> tuple[str, Any, dict[str, Any]]:
        name, args, kwargs = super().deconstruct()
        if self.lock_timeout != "2s":
            kwargs["lock_timeout"] = self.lock_timeout
        if self.retries != 5:
            kwargs["retries"] = self.retries
        return name, args, kwargs

    def describe(self) -> str:
        return (
            f"Concurrently create unique constraint {self.constraint.name} on model "
            f"{self.model_name}"
        )

    @property
    def index_name(self) -> str:
        return str(self.constraint.name)

    def _concurrently(
        self,
        schema_editor: BaseDatabaseSchemaEditor,
        model: type[models.Model],
        model_state: Any,
        create: bool,
    ) -> None:
        name = self.constraint.name
        with _one_build_at_a_time(schema_editor, name), _lifted_timeouts(schema_editor):
            if create:
                self._build(schema_editor, model)
                return
            qn = schema_editor.quote_name
            if self._attached():
                self._with_lock_retries(
                    schema_editor,
                    f"ALTER TABLE {qn(model._meta.db_table)} DROP CONSTRAINT IF EXISTS {qn(name)}",
                )
            # The index alone (an index form, or a build never attached).
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {qn(name)}")

    # -- PostgreSQL --------------------------------------------------------------------------

    def _attached(self) -> bool:
        """Whether a constraint (not only an index) is what the database holds now or will
        hold: a plain unique constraint of fields, which ``ALTER TABLE`` can attach."""
        c = self.unique
        return not (c.condition or c.include or c.opclasses or c.expressions)

    def _build(self, schema_editor: BaseDatabaseSchemaEditor, model: type[models.Model]) -> None:
        name, table = self.constraint.name, model._meta.db_table
        if not schema_editor.collect_sql and self._constraint_exists(schema_editor, table):
            return  # attached by an earlier run
        drop = f"DROP INDEX CONCURRENTLY IF EXISTS {schema_editor.quote_name(name)}"
        try:
            build_concurrently(
                schema_editor, table, name, self._index_sql(schema_editor, model), drop
            )
        except IntegrityError as exc:
            # The failed build left an INVALID index behind: the table is left as it was.
            with contextlib.suppress(DatabaseError):
                schema_editor.execute(drop)
            raise IntegrityError(self._duplicates_message(schema_editor, model, exc)) from exc
        if not self._attached():
            return
        if schema_editor.collect_sql:
            schema_editor.execute(self._attach_sql(schema_editor, model))
        else:
            self._with_lock_retries(schema_editor, self._attach_sql(schema_editor, model))

    def _index_sql(self, schema_editor: BaseDatabaseSchemaEditor, model: type[models.Model]) -> str:
        """``CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS`` of the constraint, rendered by
        Django's own ``UniqueConstraint.create_sql`` with the index template (the plain
        constraint's included, so that every form is one index build)."""
        editor: Any = schema_editor
        template = editor.sql_create_unique_index.replace(
            "CREATE UNIQUE INDEX", "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS", 1
        )
        saved = editor.__dict__.copy()
        editor.sql_create_unique = editor.sql_create_unique_index = template
        try:
            return str(self.constraint.create_sql(model, schema_editor))
        finally:
            for attribute in ("sql_create_unique", "sql_create_unique_index"):
                if attribute in saved:
                    setattr(editor, attribute, saved[attribute])
                else:
                    delattr(editor, attribute)

    def _attach_sql(
        self, schema_editor: BaseDatabaseSchemaEditor, model: type[models.Model]
    ) -> str:
        qn = schema_editor.quote_name
        name = qn(self.constraint.name)
        deferrable = schema_editor._deferrable_constraint_sql(  # type: ignore[attr-defined]
            self.unique.deferrable
        )
        return (
            f"ALTER TABLE {qn(model._meta.db_table)} ADD CONSTRAINT {name} UNIQUE USING INDEX "
            f"{name}{deferrable}"
        )

    def _constraint_exists(self, schema_editor: BaseDatabaseSchemaEditor, table: str) -> bool:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM pg_constraint WHERE conname = %s AND conrelid = to_regclass(%s)",
                [self.constraint.name, schema_editor.quote_name(table)],
            )
            return cursor.fetchone() is not None

    def _with_lock_retries(self, schema_editor: BaseDatabaseSchemaEditor, sql: str) -> None:
        """Run ``sql`` (an ``ALTER TABLE`` of milliseconds) with ``lock_timeout``, again
        after a lock timeout, ``retries`` times, waiting 0.5 s, 1 s, 2 s... in between:
        while it waits for its lock, every writer queues behind it."""
        for attempt in _attempts(self.retries):
            with schema_editor.connection.cursor() as cursor:
                cursor.execute("SELECT set_config('lock_timeout', %s, false)", [self.lock_timeout])
            try:
                schema_editor.execute(sql)
                return
            except OperationalError as exc:
                if _sqlstate(exc) != _LOCK_NOT_AVAILABLE or attempt is None:
                    raise
                logger.warning(
                    "%s: lock not granted within %s; again in %.1fs",
                    self.describe(),
                    self.lock_timeout,
                    attempt,
                )
                time.sleep(attempt)

    def _duplicates_message(
        self, schema_editor: BaseDatabaseSchemaEditor, model: type[models.Model], exc: Exception
    ) -> str:
        c, table = self.unique, model._meta.db_table
        head = f"unique constraint {c.name} cannot be added: {table} holds duplicates"
        tail = "; remove them and migrate again (the table is unchanged)"
        if c.expressions or c.condition:
            detail = getattr(getattr(exc.__cause__, "diag", None), "message_detail", None)
            return f"{head} ({detail or exc}){tail}"
        qn = schema_editor.quote_name
        columns = [qn(model._meta.get_field(f).column) for f in c.fields]  # type: ignore[union-attr, arg-type]
        listed = ", ".join(columns)
        nulls = (
            ""
            if getattr(c, "nulls_distinct", None) is False
            else " AND ".join(f"{x} IS NOT NULL" for x in columns)
        )
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {listed}, count(*) FROM {qn(table)} {'WHERE ' + nulls if nulls else ''} "
                f"GROUP BY {listed} HAVING count(*) > 1 ORDER BY count(*) DESC, {listed} "
                f"LIMIT {_EXAMPLES}"
            )
            rows = cursor.fetchall()
        examples = "; ".join(f"({', '.join(map(repr, row[:-1]))}) x{row[-1]}" for row in rows)
        return f"{head} of ({', '.join(c.fields)}): {examples}{tail}"


def _attempts(retries: int) -> Iterator[float | None]:
    """The wait after each failed attempt: 0.5, 1, 2... seconds; None for the last one."""
    for i in range(retries):
        yield 0.5 * 2**i
    yield None


def _sqlstate(exc: BaseException) -> str | None:
    cause = exc.__cause__
    return getattr(cause, "pgcode", None) or getattr(cause, "sqlstate", None)
