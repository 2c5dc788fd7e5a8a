"""``CreateIndexConcurrently``/``DropIndexConcurrently`` on real PostgreSQL (writes during the
build, INVALID indexes, timeouts, the non-atomic guard), their SQLite fallback, and
``manage.py counted_indexes``.

The operations run in the migrations of ``tests.indexapp``, an app installed only here.
"""

from __future__ import annotations

import shutil
import threading
import time
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import NotSupportedError, connection, models, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.writer import OperationWriter
from django.db.utils import OperationalError
from django.test.utils import CaptureQueriesContext, override_settings

from distinct_counter.indexes.operations import CreateIndexConcurrently, DropIndexConcurrently
from distinct_counter.indexes.planner import index_migration, missing_indexes
from tests.conftest import wait_until
from tests.index_fixtures import (
    INDEX,
    REFERRER_INDEX,
    TABLE,
    TIMEOUT,
    Build,
    index_row,
    insert,
    migrate,
    raw_connection,
    table_locks,
    waiting_build,
)

# -- PostgreSQL --------------------------------------------------------------------------------


def test_migrate_builds_a_valid_index_and_migrating_back_drops_it(indexapp: None) -> None:
    migrate("0002")
    row = index_row()
    assert row is not None and row[1], "the index exists and is valid"
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [INDEX])
        assert cursor.fetchone()[0] == (
            f"CREATE INDEX {INDEX} ON public.{TABLE} USING btree (city)"
        )
    migrate("0001")
    assert index_row() is None
    migrate("0002")  # and again: nothing left behind by the way back
    assert index_row() is not None


def test_writes_go_on_while_the_build_runs(indexapp: None, holder: Any, monitor: Any) -> None:
    migrate("0001")
    insert(holder.cursor(), "Paris")  # left uncommitted: the build waits for it
    build = Build()
    build.start()
    try:
        # Waiting far longer than its session's lock_timeout (200ms): the build lifted it.
        wait_until(lambda: waiting_build(monitor, build.pid, for_seconds=1), TIMEOUT)
        locks = table_locks(monitor, build.pid)  # type: ignore[arg-type]
        assert "ShareUpdateExclusiveLock" in locks and "ShareLock" not in locks
        writer = raw_connection()
        with writer.cursor() as cursor:
            cursor.execute("SET lock_timeout = '5s'")  # blocked writes would fail, not hang
            started = time.monotonic()
            insert(cursor, "Lyon")
            cursor.execute(f"UPDATE {TABLE} SET referrer = 'x' WHERE city = 'Lyon'")
        writer.close()
        assert time.monotonic() - started < 5
        assert build.is_alive() and waiting_build(monitor, build.pid), "still building"
    finally:
        holder.commit()
        build.join(TIMEOUT)
    assert not build.is_alive() and build.error is None, build.error
    row = index_row()
    assert row is not None and row[1]
    assert build.timeouts_after == Build.TIMEOUTS, "the session's timeouts are restored"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT city FROM {TABLE} ORDER BY city")
        assert cursor.fetchall() == [("Lyon",), ("Paris",)]


def test_a_plain_create_index_would_block_those_writes(
    indexapp: None, holder: Any, monitor: Any
) -> None:
    """The contrast that gives the test above its meaning: the same scene with CREATE INDEX."""
    migrate("0001")
    insert(holder.cursor(), "Paris")
    errors: list[BaseException] = []

    def build() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE INDEX plain_city ON {TABLE} (city)")
        except BaseException as exc:  # pragma: no cover - shown by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    try:

        def plain_waiting() -> bool:
            with monitor.cursor() as cursor:
                cursor.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'CREATE INDEX plain_city%%'"
                )
                return cursor.fetchone() is not None

        wait_until(plain_waiting, TIMEOUT)
        writer = raw_connection()
        with writer.cursor() as cursor, pytest.raises(psycopg2.errors.LockNotAvailable):
            cursor.execute("SET lock_timeout = '500ms'")
            insert(cursor, "Lyon")
        writer.close()
    finally:
        holder.commit()
        thread.join(TIMEOUT)
    assert not errors


def test_an_invalid_index_left_by_a_cancelled_build_is_rebuilt(
    indexapp: None, holder: Any, monitor: Any
) -> None:
    migrate("0001")
    insert(holder.cursor(), "Paris")
    build = Build()
    build.start()
    try:
        wait_until(lambda: waiting_build(monitor, build.pid), TIMEOUT)
        with monitor.cursor() as cursor:
            cursor.execute("SELECT pg_cancel_backend(%s)", [build.pid])
        build.join(TIMEOUT)
    finally:
        holder.rollback()
    assert isinstance(build.error, OperationalError), build.error
    assert "canceling statement" in str(build.error)
    assert build.timeouts_after == Build.TIMEOUTS, "restored after a failed build too"
    invalid = index_row()
    assert invalid is not None and not invalid[1], "the cancelled build left an INVALID index"

    migrate("0002")  # IF NOT EXISTS alone would keep the INVALID index

    rebuilt = index_row()
    assert rebuilt is not None and rebuilt[1]
    assert rebuilt[0] != invalid[0], "dropped and built anew"


def test_the_name_taken_by_an_index_of_another_table_is_an_error(indexapp: None) -> None:
    """IF NOT EXISTS would build nothing and report success: the operation says so."""
    migrate("0001")
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE indexapp_other (x int)")
        cursor.execute(f"CREATE INDEX {INDEX} ON indexapp_other (x)")
    try:
        with pytest.raises(
            NotSupportedError,
            match="belongs to another relation than indexapp_visit; rename the index",
        ):
            migrate("0002")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE indexapp_other")


def test_a_migration_without_atomic_false_is_refused(indexapp: None) -> None:
    with override_settings(MIGRATION_MODULES={"indexapp": "tests.indexapp.migrations_atomic"}):
        with pytest.raises(NotSupportedError) as excinfo:
            migrate("0002")
    assert str(excinfo.value) == (
        "CreateIndexConcurrently (Concurrently create index indexapp_visit_city_idx on model "
        "visit) cannot run inside a transaction: set atomic = False on the migration that "
        "contains it (class Migration(migrations.Migration): atomic = False)."
    )
    assert index_row() is None


def test_drop_index_concurrently_and_back(indexapp: None) -> None:
    migrate("0002")
    state = MigrationLoader(connection).project_state(("indexapp", "0002_visit_city_idx"))
    operation = DropIndexConcurrently(model_name="visit", name=INDEX)
    after = state.clone()
    operation.state_forwards("indexapp", after)
    assert after.models["indexapp", "visit"].options["indexes"] == []
    with connection.schema_editor(atomic=False) as editor:
        operation.database_forwards("indexapp", editor, state, after)
    assert index_row() is None
    with connection.schema_editor(atomic=False) as editor:
        operation.database_backwards("indexapp", editor, after, state)
    row = index_row()
    assert row is not None and row[1]
    with transaction.atomic(), pytest.raises(NotSupportedError, match="atomic = False"):
        with connection.schema_editor(atomic=False) as editor:
            operation.database_forwards("indexapp", editor, state, after)


def test_timeouts_are_restored_in_this_session(indexapp: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '1234ms'")
        cursor.execute("SET statement_timeout = '0'")
    migrate("0002")
    migrate("0001")
    with connection.cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        assert cursor.fetchone()[0] == "1234ms"
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0"
        cursor.execute("RESET lock_timeout")


def test_sqlmigrate_shows_each_statement(indexapp: None) -> None:
    out = call_command("sqlmigrate", "indexapp", "0002")
    assert out.splitlines() == [
        "--",
        "-- Concurrently create index indexapp_visit_city_idx on model visit",
        "--",
        "SET lock_timeout = 0;",
        "SET statement_timeout = 0;",
        "-- At migrate time, an INVALID index indexapp_visit_city_idx (an interrupted build) "
        'is dropped first: DROP INDEX CONCURRENTLY IF EXISTS "indexapp_visit_city_idx";',
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "indexapp_visit_city_idx" ON "indexapp_visit" '
        '("city");',
        "RESET lock_timeout;",
        "RESET statement_timeout;",
    ]
    backwards = call_command("sqlmigrate", "indexapp", "0002", backwards=True)
    assert 'DROP INDEX CONCURRENTLY IF EXISTS "indexapp_visit_city_idx";' in backwards


def test_state_and_migrations_agree(indexapp: None) -> None:
    out = StringIO()
    call_command("makemigrations", "indexapp", check=True, dry_run=True, stdout=out)
    assert "No changes detected" in out.getvalue()


# -- everywhere --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "operation",
    [
        CreateIndexConcurrently(
            model_name="visit",
            index=models.Index(
                fields=["-city"], name="visit_city_desc", condition=models.Q(country="FR")
            ),
        ),
        DropIndexConcurrently(model_name="visit", name="visit_city_desc"),
    ],
)
def test_deconstruct_round_trips_through_the_migration_writer(operation: Any) -> None:
    text, imports = OperationWriter(operation, indentation=0).serialize()
    assert text.startswith(f"distinct_counter.indexes.operations.{type(operation).__name__}(")
    namespace: dict[str, Any] = {}
    exec("\n".join(sorted(imports)), namespace)
    assert eval(text.rstrip(","), namespace).deconstruct() == operation.deconstruct()


def sqlite_indexes(conn: Any) -> dict[str, list[str]]:
    with conn.cursor() as cursor:
        constraints = conn.introspection.get_constraints(cursor, TABLE)
    return {
        name: c["columns"]
        for name, c in constraints.items()
        if c["index"] and not c["unique"] and not c["primary_key"]
    }


def test_sqlite_falls_back_to_a_plain_create_index(indexapp_installed: None, sqlite: Any) -> None:
    executor = MigrationExecutor(sqlite)
    with CaptureQueriesContext(sqlite) as queries:
        executor.migrate([("indexapp", "0002_visit_city_idx")])
    assert 'CREATE INDEX "indexapp_visit_city_idx" ON "indexapp_visit" ("city")' in [
        q["sql"] for q in queries
    ]
    assert sqlite_indexes(sqlite)[INDEX] == ["city"]
    executor.loader.build_graph()
    executor.migrate([("indexapp", "0001_initial")])
    assert INDEX not in sqlite_indexes(sqlite)


def test_sqlite_refuses_a_migration_without_atomic_false(
    indexapp_installed: None, sqlite: Any
) -> None:
    """The guard holds on SQLite too, so the mistake shows in development."""
    with override_settings(MIGRATION_MODULES={"indexapp": "tests.indexapp.migrations_atomic"}):
        executor = MigrationExecutor(sqlite)
        with pytest.raises(NotSupportedError, match="set atomic = False"):
            executor.migrate([("indexapp", "0002_visit_city_idx")])


# -- counted_indexes ---------------------------------------------------------------------------


def counted_indexes(*args: str) -> str:
    out = StringIO()
    call_command("counted_indexes", *args, stdout=out)
    return out.getvalue()


EXPECTED_MIGRATION = f"""\
import distinct_counter.indexes.operations
from django.db import migrations, models


class Migration(migrations.Migration):

    # CREATE INDEX CONCURRENTLY cannot run in a transaction.
    atomic = False

    dependencies = [
        ('indexapp', '0001_initial'),
    ]

    operations = [
        distinct_counter.indexes.operations.CreateIndexConcurrently(
            model_name='visit',
            index=models.Index(fields=['city'], name='indexapp_visit_city_idx'),
        ),
        distinct_counter.indexes.operations.CreateIndexConcurrently(
            model_name='visit',
            index=models.Index(fields=['referrer'], name='{REFERRER_INDEX}'),
        ),
    ]
"""

EXPECTED_SUMMARY = f"""\
  + indexapp.Visit.city: index indexapp_visit_city_idx
  + indexapp.Visit.referrer: index {REFERRER_INDEX}
Declare these indexes in the models' Meta.indexes, so that makemigrations agrees with the \
migration:
  indexapp.Visit: models.Index(fields=['referrer'], name='{REFERRER_INDEX}'),
"""


def test_counted_indexes_dry_run_prints_the_migration(fresh_migrations: Path) -> None:
    out = counted_indexes("indexapp", "--dry-run")
    header, blank, rest = out.split("\n", 2)
    assert header.startswith("# Generated by Django ") and blank == ""
    assert rest == EXPECTED_MIGRATION + EXPECTED_SUMMARY
    assert sorted(p.name for p in fresh_migrations.glob("*.py")) == [
        "0001_initial.py",
        "__init__.py",
    ]


def test_counted_indexes_writes_the_migration(fresh_migrations: Path, indexapp: None) -> None:
    path = fresh_migrations / "0002_counted_indexes.py"
    assert counted_indexes("indexapp") == f"Wrote {path}\n" + EXPECTED_SUMMARY
    written = path.read_text()
    if not shutil.which("black"):  # makemigrations' formatter, when installed, reformats
        assert written.split("\n", 2)[2] == EXPECTED_MIGRATION
    assert counted_indexes("indexapp") == "No counted field of 'indexapp' lacks an index.\n"
    assert missing_indexes("indexapp") == []
    migrate("0002_counted_indexes")  # the written migration runs on PostgreSQL
    for name in (INDEX, REFERRER_INDEX):
        row = index_row(name)
        assert row is not None and row[1]


def test_counted_indexes_names_the_migration(fresh_migrations: Path) -> None:
    migration = index_migration("indexapp", name="visit_indexes")
    assert migration.name == "0002_visit_indexes"
    assert migration.path == str(fresh_migrations / "0002_visit_indexes.py")
    assert [m.label for m in migration.indexes] == [
        "indexapp.Visit.city",
        "indexapp.Visit.referrer",
    ]
    assert [m.declared for m in migration.indexes] == [True, False]


def test_counted_indexes_with_nothing_missing() -> None:
    assert counted_indexes("testapp") == "No counted field of 'testapp' lacks an index.\n"


def test_counted_indexes_unknown_app() -> None:
    with pytest.raises(CommandError, match="^No installed app with label 'nope'.$"):
        counted_indexes("nope")


def test_counted_indexes_app_without_migrations(indexapp_installed: None) -> None:
    with (
        override_settings(MIGRATION_MODULES={"indexapp": None}),
        pytest.raises(CommandError, match="has no migrations; run makemigrations indexapp"),
    ):
        counted_indexes("indexapp")


def test_counted_indexes_leaves_pending_migrations_to_makemigrations(
    fresh_migrations: Path,
) -> None:
    """``country``'s db_index is in the model, not in the migrations: only a note."""
    initial = fresh_migrations / "0001_initial.py"
    initial.write_text(
        initial.read_text().replace(
            "models.CharField(db_index=True, max_length=2)", "models.CharField(max_length=2)"
        )
    )
    out = counted_indexes("indexapp", "--dry-run")
    assert out.splitlines()[0] == (
        "indexapp.Visit.country: indexed in the model but not in the migrations; makemigrations "
        "would add that index with a plain (write-locking) CREATE INDEX: declare it in "
        "Meta.indexes instead and run counted_indexes again."
    )
    assert [m.field for m in missing_indexes("indexapp")] == ["city", "referrer"]
