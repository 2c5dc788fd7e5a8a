"""Migration operations that add and drop indexes without locking writes.

``rebuild_counts``, the database fallback and ``rebuild_counts --check`` all ``GROUP BY`` the
counted fields; on a large table those need an index, and a plain ``CREATE INDEX`` holds a
SHARE lock on the table, which blocks every INSERT, UPDATE and DELETE for the whole build.
``CREATE INDEX CONCURRENTLY`` takes SHARE UPDATE EXCLUSIVE instead, which writers do not
conflict with.

:class:`CreateIndexConcurrently` and :class:`DropIndexConcurrently` are usable in any app's
migrations (the migration must say ``atomic = False``: PostgreSQL refuses a concurrent build
inside a transaction)::

    from django.db import migrations, models
    import distinct_counter.indexes.operations

    class Migration(migrations.Migration):
        atomic = False
        dependencies = [("messaging", "0001_initial")]
        operations = [
            distinct_counter.indexes.operations.CreateIndexConcurrently(
                model_name="message",
                index=models.Index(fields=["city"], name="messaging_m_city_3a1c5e_idx"),
            ),
        ]

On PostgreSQL a build

* refuses to run inside a transaction, with a message naming ``atomic = False``;
* sets ``lock_timeout`` and ``statement_timeout`` to 0 for its own statements and restores
  the session's previous values afterwards, even when the build fails: a concurrent build
  waits for every older transaction to end, and a timeout there would leave an INVALID index;
* drops an INVALID index of the same name (``pg_index.indisvalid = false``, the remains of an
  interrupted concurrent build) with ``DROP INDEX CONCURRENTLY IF EXISTS`` before building,
  since ``IF NOT EXISTS`` would silently keep the broken one;
* runs ``CREATE INDEX CONCURRENTLY IF NOT EXISTS``, then checks that the index is valid;
* holds a session-level advisory lock on the index's name throughout, so two ``migrate``
  runs started together (two deploy nodes) build it once: the second waits, then finds it
  valid.

On every other backend (SQLite, the embedded default, included) the operations do exactly what
:class:`~django.db.migrations.operations.AddIndex` and ``RemoveIndex`` do, so one migration
runs everywhere.

Design decision: the issue asked for the statements to go "through ``RunSQL``, one statement
per item, with the state updated by ``SeparateDatabaseAndState``". These operations subclass
``AddIndex``/``RemoveIndex`` instead: the model state is then handled by Django's own code
(``makemigrations`` sees the index, the optimizer squashes it, ``RenameIndex`` works), and
each statement is still executed on its own through ``schema_editor.execute`` (what ``RunSQL``
does per item), so ``sqlmigrate`` prints them. ``RunSQL`` could not do the rest: its SQL is
fixed when the migration is written, so it could neither fall back per backend, nor look for
an INVALID index, nor read the timeouts to restore. The index SQL comes from Django's
``Index.create_sql``, so names, quoting, opclasses, conditions and ``INCLUDE`` match
``AddIndex``. ``django.contrib.postgres.operations.AddIndexConcurrently`` is close, but
PostgreSQL-only (and needs ``contrib.postgres`` in the migration), without ``IF NOT EXISTS``,
the INVALID index repair or the timeouts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from django.db import DatabaseError, NotSupportedError, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.operations import AddIndex, RemoveIndex
from django.db.migrations.state import ProjectState

__all__ = ["CreateIndexConcurrently", "DropIndexConcurrently"]

logger = logging.getLogger("distinct_counter")

#: The settings a concurrent build lifts (to 0: no limit) for its own statements.
LIFTED_TIMEOUTS = ("lock_timeout", "statement_timeout")

_CREATE = "CREATE INDEX CONCURRENTLY"


def _ensure_not_in_transaction(
    operation: AddIndex | RemoveIndex, schema_editor: BaseDatabaseSchemaEditor
) -> None:
    """Refuse to run inside a transaction, on every backend that would open one.

    Checked on SQLite too, although SQLite does not care, so that a migration missing
    ``atomic = False`` fails in development rather than at deploy time on PostgreSQL.
    """
    if schema_editor.connection.in_atomic_block:
        raise NotSupportedError(
            f"{operation.__class__.__name__} ({operation.describe()}) cannot run inside a "
            "transaction: set atomic = False on the migration that contains it (class "
            "Migration(migrations.Migration): atomic = False)."
        )


def _is_postgresql(schema_editor: BaseDatabaseSchemaEditor) -> bool:
    return bool(schema_editor.connection.vendor == "postgresql")


@contextlib.contextmanager
def _lifted_timeouts(schema_editor: BaseDatabaseSchemaEditor) -> Iterator[None]:
    """``lock_timeout`` and ``statement_timeout`` at 0 inside, the session's values after."""
    if schema_editor.collect_sql:
        # sqlmigrate: no database to ask; RESET returns to the session's configured default.
        for name in LIFTED_TIMEOUTS:
            schema_editor.execute(f"SET {name} = 0")
        yield
        for name in LIFTED_TIMEOUTS:
            schema_editor.execute(f"RESET {name}")
        return
    previous = {}
    with schema_editor.connection.cursor() as cursor:
        for name in LIFTED_TIMEOUTS:
            cursor.execute(f"SHOW {name}")
            previous[name] = cursor.fetchone()[0]

    def restore() -> None:
        with schema_editor.connection.cursor() as cursor:
            for name, value in previous.items():
                cursor.execute("SELECT set_config(%s, %s, false)", [name, value])

    try:
        for name in LIFTED_TIMEOUTS:
            schema_editor.execute(f"SET {name} = 0")
        yield
    except BaseException:
        # A session lost with the build cannot be restored; the build's error is the news.
        with contextlib.suppress(DatabaseError):
            restore()
        raise
    restore()


#: Seconds between two tries of a migrate waiting for another one's build of the same index.
LOCK_POLL = 0.5


@contextlib.contextmanager
def _one_build_at_a_time(schema_editor: BaseDatabaseSchemaEditor, name: str) -> Iterator[None]:
    """Hold a session-level advisory lock on the index ``name`` inside: two ``migrate`` runs
    at once (two deploy nodes) build or drop it one after the other, the second finding the
    first's valid index. Released on the way out, error or not (and by PostgreSQL with the
    session).

    Polled with ``pg_try_advisory_lock``, not waited for with ``pg_advisory_lock``: a
    statement waiting on the lock holds a snapshot, which the other session's concurrent
    build would wait for in turn, a deadlock. Between two tries this session holds none.
    """
    if schema_editor.collect_sql:  # sqlmigrate: nothing runs
        yield
        return
    key = f"distinct_counter.indexes:{name}"
    take = "SELECT pg_try_advisory_lock(hashtext(%s))"
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(take, [key])
        if not cursor.fetchone()[0]:
            logger.info("Waiting for another migrate's build of index %s", name)
            while True:
                time.sleep(LOCK_POLL)
                cursor.execute(take, [key])
                if cursor.fetchone()[0]:
                    break
    try:
        yield
    finally:
        with contextlib.suppress(DatabaseError), schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtext(%s))", [key])


def _index_state(
    schema_editor: BaseDatabaseSchemaEditor, table: str, name: str
) -> tuple[bool, bool] | None:
    """``(valid, on_table)`` of the index ``name`` in the schema of ``table``; None if absent.

    Looked up in the schema the unqualified table name resolves to, which is where an
    unqualified ``CREATE INDEX ... ON table`` puts the index.
    """
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid, i.indrelid = to_regclass(%s) "
            "FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
            "WHERE c.relname = %s AND c.relnamespace = "
            "(SELECT relnamespace FROM pg_class WHERE oid = to_regclass(%s))",
            [schema_editor.quote_name(table), name, schema_editor.quote_name(table)],
        )
        row = cursor.fetchone()
    return None if row is None else (bool(row[0]), bool(row[1]))


def create_sql(
    schema_editor: BaseDatabaseSchemaEditor, model: type[models.Model], index: models.Index
) -> Any:
    """``CREATE INDEX CONCURRENTLY IF NOT EXISTS`` of ``index``, as Django's
    ``Index.create_sql`` builds it (names, opclasses, conditions, ``INCLUDE``)."""
    template = schema_editor.sql_create_index_concurrently  # type: ignore[attr-defined]
    if not template.startswith(_CREATE):  # pragma: no cover - a backend of its own
        raise NotSupportedError(f"unexpected concurrent index template {template!r}")
    template = _CREATE + " IF NOT EXISTS" + template[len(_CREATE) :]
    return index.create_sql(model, schema_editor, concurrently=True, sql=template)


def _create_concurrently(
    schema_editor: BaseDatabaseSchemaEditor, model: type[models.Model], index: models.Index
) -> None:
    drop = str(index.remove_sql(model, schema_editor, concurrently=True))
    with _one_build_at_a_time(schema_editor, index.name), _lifted_timeouts(schema_editor):
        build_concurrently(
            schema_editor,
            model._meta.db_table,
            index.name,
            create_sql(schema_editor, model, index),
            drop,
        )


def build_concurrently(
    schema_editor: BaseDatabaseSchemaEditor, table: str, name: str, create: Any, drop: str
) -> None:
    """Build the index ``name`` of ``table`` with ``create`` (``CREATE [UNIQUE] INDEX
    CONCURRENTLY IF NOT EXISTS``), an INVALID index of that name dropped first with ``drop``
    (``IF NOT EXISTS`` would keep it); then check that the index is ``table``'s and valid.
    The caller holds the advisory lock and the lifted timeouts; a failed build's error
    (duplicates for a unique one) is the caller's to handle."""
    if schema_editor.collect_sql:
        schema_editor.collected_sql.append(
            f"-- At migrate time, an INVALID index {name} (an interrupted build) "
            f"is dropped first: {drop};"
        )
        schema_editor.execute(create, params=None)
        return
    state = _index_state(schema_editor, table, name)
    if state is not None and not state[0]:
        schema_editor.execute(drop)
    schema_editor.execute(create, params=None)
    state = _index_state(schema_editor, table, name)
    if state is None or not state[1]:
        raise NotSupportedError(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} built nothing: the name "
            f"belongs to another relation than {table}; rename the index."
        )
    if not state[0]:  # a safety net: the INVALID index was dropped above
        raise NotSupportedError(f"index {name} is INVALID after its build")


def _drop_concurrently(
    schema_editor: BaseDatabaseSchemaEditor, model: type[models.Model], index: models.Index
) -> None:
    with _one_build_at_a_time(schema_editor, index.name), _lifted_timeouts(schema_editor):
        schema_editor.execute(index.remove_sql(model, schema_editor, concurrently=True))


class _Concurrently:
    """What the concurrent operations share: refuse a transaction, do the plain operation
    off PostgreSQL, and build or drop (:meth:`_concurrently`) the state's index or
    constraint on it."""

    atomic = False  # never wrapped in a transaction, even where DDL cannot roll back
    #: Whether running forwards creates the index (backwards then drops it), or the reverse.
    creates: bool
    model_name: str
    model_name_lower: str

    @property
    def index_name(self) -> str:
        raise NotImplementedError

    def database_forwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        self._run(app_label, schema_editor, from_state, to_state, forwards=True)

    def database_backwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        self._run(app_label, schema_editor, from_state, to_state, forwards=False)

    def _run(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
        forwards: bool,
    ) -> None:
        _ensure_not_in_transaction(self, schema_editor)  # type: ignore[arg-type]
        if not _is_postgresql(schema_editor):
            parent: Any = super()
            plain = parent.database_forwards if forwards else parent.database_backwards
            plain(app_label, schema_editor, from_state, to_state)
            return
        create = self.creates == forwards
        state = to_state if create else from_state  # the state in which the index exists
        model = state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):  # type: ignore[attr-defined]
            self._concurrently(
                schema_editor, model, state.models[app_label, self.model_name_lower], create
            )

    def _concurrently(
        self,
        schema_editor: BaseDatabaseSchemaEditor,
        model: type[models.Model],
        model_state: Any,
        create: bool,
    ) -> None:
        """Create (or drop) on PostgreSQL what ``model_state`` holds."""
        index = model_state.get_index_by_name(self.index_name)
        (_create_concurrently if create else _drop_concurrently)(schema_editor, model, index)


class CreateIndexConcurrently(_Concurrently, AddIndex):
    """``AddIndex`` that does not lock writes on PostgreSQL; a plain ``AddIndex`` elsewhere.

    Same arguments and same model state as ``AddIndex``; the migration must have
    ``atomic = False``. Reversed with ``DROP INDEX CONCURRENTLY IF EXISTS``.
    """

    creates = True

    @property
    def index_name(self) -> str:
        return str(self.index.name)

    def describe(self) -> str:
        return f"Concurrently create index {self.index.name} on model {self.model_name}"


class DropIndexConcurrently(_Concurrently, RemoveIndex):
    """``RemoveIndex`` that does not lock writes on PostgreSQL; a plain ``RemoveIndex`` elsewhere.

    ``DROP INDEX CONCURRENTLY IF EXISTS`` forwards; backwards, the same build as
    :class:`CreateIndexConcurrently`. The migration must have ``atomic = False``.
    """

    creates = False

    @property
    def index_name(self) -> str:
        return self.name

    def describe(self) -> str:
        return f"Concurrently remove index {self.name} from {self.model_name}"
