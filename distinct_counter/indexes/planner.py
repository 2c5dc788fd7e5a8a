"""Which counted fields lack an index, and the migration that adds them without locking writes.

The public API of ``manage.py counted_indexes``: :func:`missing_indexes` and
:func:`index_migration`. Both look at the *migration state* of the app rather than at its
models, because the point is what the database will hold: an index declared in a model's
``Meta.indexes`` but not yet migrated is still missing, and the migration written for it uses
that very index (name included), so ``makemigrations`` has nothing left to add afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.migrations import Migration
from django.db.migrations.autodetector import MigrationAutodetector
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import (
    AddIndex,
    RunSQL,
    SeparateDatabaseAndState,
)
from django.db.migrations.operations.base import Operation
from django.db.migrations.writer import MigrationWriter
from django.db.utils import ConnectionHandler

from distinct_counter.counting.registry import counted_models, counters_of
from distinct_counter.indexes.operations import (
    LIFTED_TIMEOUTS,
    CreateIndexConcurrently,
    create_sql,
)

__all__ = ["MissingIndex", "IndexMigration", "has_index", "missing_indexes", "index_migration"]


def has_index(model: type[models.Model], field: models.Field[Any, Any]) -> bool:
    """Whether an index of ``model`` can serve ``GROUP BY field``.

    A primary key, ``unique`` or ``db_index`` field, or an index, unique constraint or
    ``unique_together`` whose first column is the field (a B-tree serves its leading column).
    """
    if field.primary_key or field.unique or getattr(field, "db_index", False):
        return True
    names = {field.name, field.attname}
    meta = model._meta
    for index in meta.indexes:
        first = index.fields[0].lstrip("-") if index.fields else None
        if first in names:
            return True
    for constraint in meta.constraints:
        fields = getattr(constraint, "fields", ())
        if isinstance(constraint, models.UniqueConstraint) and fields and fields[0] in names:
            return True
    return any(group and group[0] in names for group in meta.unique_together)


@dataclass(frozen=True)
class MissingIndex:
    """A counted field the migrations give no index, and the index that would serve it."""

    model: type[models.Model]
    field: str
    index: models.Index
    #: The index is already in the model's ``Meta.indexes`` (only its migration is missing).
    declared: bool

    @property
    def label(self) -> str:
        return f"{self.model._meta.label}.{self.field}"

    @property
    def meta_line(self) -> str:
        """The line to add to the model's ``Meta.indexes``."""
        return f"models.Index(fields=[{self.field!r}], name={self.index.name!r}),"


@dataclass
class IndexMigration:
    """A migration of ``CreateIndexConcurrently`` operations, written or not."""

    app_label: str
    name: str
    path: str
    contents: str
    indexes: list[MissingIndex]
    #: Counted fields left out, and why (not migrated yet, or indexed by a pending migration).
    notes: list[str] = field(default_factory=list)

    @property
    def undeclared(self) -> list[MissingIndex]:
        """The indexes the models must still declare in ``Meta.indexes``."""
        return [m for m in self.indexes if not m.declared]

    def write(self) -> None:
        """Write the file; refuses to overwrite one."""
        if not self.indexes:
            raise ValueError(f"No counted field of {self.app_label!r} lacks an index.")
        with open(self.path, "x", encoding="utf-8") as f:
            f.write(self.contents)


def _loader(app_label: str) -> MigrationLoader:
    try:
        apps.get_app_config(app_label)
    except LookupError:
        raise ValueError(f"No installed app with label {app_label!r}.") from None
    loader = MigrationLoader(None, ignore_no_migrations=True)
    if app_label not in loader.migrated_apps or not loader.graph.leaf_nodes(app_label):
        raise ValueError(
            f"App {app_label!r} has no migrations; run makemigrations {app_label} first."
        )
    return loader


def _plan(app_label: str, loader: MigrationLoader) -> tuple[list[MissingIndex], list[str]]:
    state_apps = loader.project_state().apps
    missing: list[MissingIndex] = []
    notes: list[str] = []
    for model in counted_models():
        if model._meta.app_label != app_label:
            continue
        try:
            state_model = state_apps.get_model(app_label, model._meta.model_name)
        except LookupError:
            notes.append(
                f"{model._meta.label}: not in the migrations yet; run makemigrations "
                f"{app_label} first."
            )
            continue
        state_names = {i.name for i in state_model._meta.indexes}
        for counter in counters_of(model):
            name = counter.field.name
            label = f"{model._meta.label}.{name}"
            try:
                state_field = state_model._meta.get_field(name)
            except FieldDoesNotExist:
                notes.append(
                    f"{label}: not in the migrations yet; run makemigrations {app_label} first."
                )
                continue
            if has_index(state_model, state_field):
                continue
            declared = [
                i
                for i in model._meta.indexes
                if i.fields
                and i.fields[0].lstrip("-") in (name, counter.attname)
                and i.name not in state_names
            ]
            if declared:
                missing.append(MissingIndex(model, name, declared[0].clone(), True))
            elif has_index(model, counter.field):
                notes.append(
                    f"{label}: indexed in the model but not in the migrations; "
                    "makemigrations would add that index with a plain (write-locking) "
                    "CREATE INDEX: declare it in Meta.indexes instead and run "
                    "counted_indexes again."
                )
            else:
                index = models.Index(fields=[name])
                index.set_name_with_model(model)
                missing.append(MissingIndex(model, name, index, False))
    return missing, notes


_RUNSQL_NOTE = """\
# PostgreSQL only: this migration's SQL (CREATE INDEX CONCURRENTLY, PL/pgSQL) runs on no other
# database. It uses Django's own operations only, so it keeps loading without
# distinct_counter. Per index: an INVALID index of the same name (the remains of an
# interrupted build) that no build is running is dropped (a plain DROP INDEX, waiting at
# most 5 s for its lock); then CREATE INDEX CONCURRENTLY IF NOT EXISTS, with no lock or
# statement timeout; the model state gets the index (SeparateDatabaseAndState).


"""


def runsql_operations(missing: list[MissingIndex]) -> list[Operation]:
    """For each index, Django's ``SeparateDatabaseAndState``: ``AddIndex`` for the model
    state; for the database, ``RunSQL`` items of one statement each, the SQL rendered now
    for PostgreSQL (a schema editor that never connects), as ``CreateIndexConcurrently``
    runs it: drop an INVALID leftover, lift the timeouts, build ``IF NOT EXISTS``, restore
    them; reversed by ``DROP INDEX CONCURRENTLY IF EXISTS``."""
    # A handler of its own (which wants a "default"), apart from the project's databases.
    postgresql = {"ENGINE": "django.db.backends.postgresql", "NAME": "sql"}
    editor = ConnectionHandler({"default": postgresql})["default"].schema_editor(collect_sql=True)
    editor.deferred_sql = []  # what entering it would set, without the transaction it opens
    operations: list[Operation] = []
    for m in missing:
        table = m.model._meta.db_table
        lifted = [f"SET {name} = 0" for name in LIFTED_TIMEOUTS]
        restored = [f"RESET {name}" for name in LIFTED_TIMEOUTS]
        build: list[Any] = [*lifted, str(create_sql(editor, m.model, m.index)), *restored]
        drop = str(m.index.remove_sql(m.model, editor, concurrently=True))
        operations.append(
            SeparateDatabaseAndState(
                database_operations=[
                    RunSQL([_drop_invalid_sql(editor, table, m.index.name)], RunSQL.noop),
                    RunSQL(build, [*lifted, drop, *restored]),
                ],
                state_operations=[
                    AddIndex(model_name=m.model._meta.model_name or "", index=m.index)
                ],
            )
        )
    return operations


def _drop_invalid_sql(editor: Any, table: str, name: str) -> str:
    """PL/pgSQL dropping an INVALID index ``name`` of ``table``'s schema that no concurrent
    build is running (``pg_stat_progress_create_index``): plain SQL cannot ``DROP INDEX
    CONCURRENTLY`` conditionally (not in a ``DO`` block), so the drop is a plain one, which
    waits at most 5 s for its lock rather than queue writers behind it for longer."""
    regclass = editor.quote_value(editor.quote_name(table))
    return (
        "DO $$\nDECLARE leftover regclass;\nBEGIN\n"
        "  SELECT c.oid INTO leftover FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid\n"
        f"   WHERE c.relname = {editor.quote_value(name)} AND NOT i.indisvalid\n"
        "     AND c.relnamespace = (SELECT relnamespace FROM pg_class\n"
        f"                           WHERE oid = to_regclass({regclass}))\n"
        "     AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p\n"
        "                     WHERE p.index_relid = c.oid);\n"
        "  IF leftover IS NOT NULL THEN\n"
        "    SET LOCAL lock_timeout = '5s';\n"
        "    EXECUTE format('DROP INDEX %s', leftover);\n"
        "  END IF;\nEND\n$$"
    )


def missing_indexes(app_label: str) -> list[MissingIndex]:
    """The counted fields of the app's models that no migrated index serves.

    :raises ValueError: no installed app has that label, or it has no migrations.
    """
    return _plan(app_label, _loader(app_label))[0]


def index_migration(
    app_label: str, name: str | None = None, runsql: bool = False
) -> IndexMigration:
    """The migration creating the missing indexes of the app's counted fields, not written.

    Its ``indexes`` are empty (and there is nothing to write) when no counted field lacks an
    index. The migration has ``atomic = False`` and depends on the app's latest migration;
    its number follows that one's. Its operations are ``CreateIndexConcurrently``, or with
    ``runsql`` Django's own only (:func:`runsql_operations`; PostgreSQL only).

    :raises ValueError: unknown app, no migrations, or several leaf migrations (merge first).
    """
    loader = _loader(app_label)
    leaves = loader.graph.leaf_nodes(app_label)
    if len(leaves) > 1:
        raise ValueError(
            f"App {app_label!r} has several latest migrations ({', '.join(n for _, n in leaves)}); "
            f"run makemigrations --merge {app_label} first."
        )
    missing, notes = _plan(app_label, loader)
    if not missing:
        return IndexMigration(app_label, "", "", "", [], notes)
    number = (MigrationAutodetector.parse_number(leaves[0][1]) or 0) + 1
    migration = Migration(f"{number:04d}_{name or 'counted_indexes'}", app_label)
    migration.dependencies = list(leaves)  # type: ignore[misc]  # as Django's autodetector
    migration.operations = (  # type: ignore[misc]
        runsql_operations(missing)
        if runsql
        else [
            CreateIndexConcurrently(model_name=m.model._meta.model_name or "", index=m.index)
            for m in missing
        ]
    )
    writer = MigrationWriter(migration)
    contents = writer.as_string()
    head = "class Migration(migrations.Migration):\n"
    contents = contents.replace(
        head,
        head + "\n    # CREATE INDEX CONCURRENTLY cannot run in a transaction.\n"
        "    atomic = False\n",
        1,
    )
    if runsql:
        contents = contents.replace(head, _RUNSQL_NOTE + head, 1)
    path = os.path.join(writer.basedir, writer.filename)
    return IndexMigration(app_label, migration.name, path, contents, missing, notes)
