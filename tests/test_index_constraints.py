"""``AddUniqueConstraintConcurrently`` on real PostgreSQL (writers during the build,
duplicates, the final step's lock retried, INVALID leftovers, both ways), and SQLite."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, models
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.writer import OperationWriter
from django.test.utils import override_settings

from distinct_counter.indexes.constraints import AddUniqueConstraintConcurrently
from tests.index_fixtures import TABLE, TIMEOUT, index_row, migrate, raw_connection

UNIQUE = "indexapp_visit_referrer_uniq"
PARTIAL = "indexapp_visit_city_fr_uniq"


@pytest.fixture
def unique_migrations(indexapp: None) -> Iterator[None]:
    with override_settings(MIGRATION_MODULES={"indexapp": "tests.indexapp.migrations_unique"}):
        yield


def constraint_kind(name: str = UNIQUE) -> str | None:
    """``pg_constraint.contype`` of the constraint, None when there is none."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT contype FROM pg_constraint WHERE conname = %s AND conrelid = %s::regclass",
            [name, TABLE],
        )
        row = cursor.fetchone()
    return None if row is None else str(row[0])


def add_visits(rows: list[tuple[str, str, str]]) -> None:
    with connection.cursor() as cursor:
        for row in rows:
            cursor.execute(
                f"INSERT INTO {TABLE} (city, referrer, country) VALUES (%s, %s, %s)", list(row)
            )


class Writers(threading.Thread):
    """A session inserting and updating rows, each statement timed, until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.longest = 0.0
        self.statements = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = raw_connection()
        try:
            with conn.cursor() as cursor:
                cursor.execute("SET lock_timeout = '10s'")
                i = 0
                while not self.stop.is_set():
                    i += 1
                    for sql in (
                        f"INSERT INTO {TABLE} (city, referrer, country) "
                        f"VALUES ('w{i}', 'writer-{i}', 'DE')",
                        f"UPDATE {TABLE} SET city = 'u{i}' WHERE referrer = 'writer-{i}'",
                    ):
                        started = time.monotonic()
                        cursor.execute(sql)
                        self.longest = max(self.longest, time.monotonic() - started)
                        self.statements += 1
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.error = exc
        finally:
            conn.close()


def test_built_while_writers_write_and_reversed(
    unique_migrations: None, capsys: pytest.CaptureFixture[str]
) -> None:
    migrate("0001")
    add_visits([(f"c{i}", f"r{i}", "FR") for i in range(2000)])
    writers = Writers()
    writers.start()
    try:
        time.sleep(0.3)
        migrate("0002")
        time.sleep(0.3)
    finally:
        writers.stop.set()
        writers.join(TIMEOUT)
    assert writers.error is None, writers.error
    with capsys.disabled():
        print(
            f"\nwriters during the unique constraint's build: {writers.statements} statements, "
            f"longest {writers.longest * 1000:.1f} ms"
        )
    assert writers.statements > 0 and writers.longest < 2.0
    assert constraint_kind() == "u", "a real UNIQUE constraint"
    partial = index_row(PARTIAL)
    assert partial is not None and partial[1] and constraint_kind(PARTIAL) is None
    with pytest.raises(IntegrityError):  # the constraint holds
        add_visits([("x", "r1", "FR")])
    migrate("0001")
    assert constraint_kind() is None and index_row(UNIQUE) is None and index_row(PARTIAL) is None


def test_duplicates_fail_it_naming_them_and_leave_the_table_as_it_was(
    unique_migrations: None,
) -> None:
    migrate("0001")
    add_visits([("a", "dup", "FR"), ("b", "dup", "FR"), ("c", "dup", "FR"), ("d", "ok", "FR")])
    add_visits([("e", "twice", "DE"), ("f", "twice", "DE")])
    with pytest.raises(IntegrityError) as excinfo:
        migrate("0002")
    message = str(excinfo.value)
    assert f"unique constraint {UNIQUE} cannot be added" in message
    assert "('dup', 'FR') x3; ('twice', 'DE') x2" in message, message
    assert index_row(UNIQUE) is None and constraint_kind() is None, "no INVALID index left"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {TABLE}")
        assert cursor.fetchone()[0] == 6


def test_the_final_step_waits_for_its_lock_in_short_tries(
    unique_migrations: None, caplog: pytest.LogCaptureFixture
) -> None:
    migrate("0001")
    add_visits([("a", "r", "FR")])
    holder = raw_connection(autocommit=False)
    with holder.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {TABLE}")  # ACCESS SHARE, held until commit
    release = threading.Timer(1.5, holder.commit)
    release.start()
    try:
        with caplog.at_level(logging.WARNING, logger="distinct_counter"):
            migrate("0002")
    finally:
        release.join()
        holder.close()
    assert "lock not granted within 100ms" in caplog.text
    assert constraint_kind() == "u"


def test_an_invalid_leftover_is_rebuilt_and_a_second_run_finds_it_done(
    unique_migrations: None,
) -> None:
    migrate("0001")
    add_visits([("a", "r", "FR"), ("b", "r", "FR")])
    with pytest.raises(IntegrityError):
        with connection.cursor() as cursor:  # an interrupted build's remains
            cursor.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {UNIQUE} ON {TABLE} (referrer)")
    invalid = index_row(UNIQUE)
    assert invalid is not None and not invalid[1]
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE city = 'b'")
    migrate("0002")
    built = index_row(UNIQUE)
    assert built is not None and built[1] and built[0] != invalid[0]
    assert constraint_kind() == "u"


def test_deconstruct_round_trips_with_its_options() -> None:
    operation = AddUniqueConstraintConcurrently(
        model_name="visit",
        constraint=models.UniqueConstraint(fields=["referrer"], name="u"),
        lock_timeout="100ms",
        retries=2,
    )
    name, args, kwargs = operation.deconstruct()
    assert kwargs["lock_timeout"] == "100ms" and kwargs["retries"] == 2
    assert "lock_timeout='100ms'" in OperationWriter(operation).serialize()[0]
    plain = AddUniqueConstraintConcurrently(
        "visit", models.UniqueConstraint(fields=["x"], name="v")
    )
    assert set(plain.deconstruct()[2]) == {"model_name", "constraint"}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"constraint": models.Index(fields=["x"], name="i")}, "takes a UniqueConstraint"),
        ({"retries": -1}, "retries must be 0 or more"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs: dict[str, Any], error: str) -> None:
    arguments = {"constraint": models.UniqueConstraint(fields=["x"], name="u"), **kwargs}
    with pytest.raises(ValueError, match=error):
        AddUniqueConstraintConcurrently("visit", **arguments)


def test_sqlite_adds_the_constraint_as_add_constraint_does(
    indexapp_installed: None, sqlite: Any
) -> None:
    with override_settings(MIGRATION_MODULES={"indexapp": "tests.indexapp.migrations_unique"}):
        executor = MigrationExecutor(sqlite)
        executor.migrate([("indexapp", "0002_unique")])
        with sqlite.cursor() as cursor:
            found = sqlite.introspection.get_constraints(cursor, TABLE)
        assert found[UNIQUE]["unique"] and found[UNIQUE]["columns"] == ["referrer", "country"]
        assert found[PARTIAL]["unique"]
        executor.loader.build_graph()
        executor.migrate([("indexapp", "0001_initial")])
        with sqlite.cursor() as cursor:
            assert UNIQUE not in sqlite.introspection.get_constraints(cursor, TABLE)


def test_sqlmigrate_shows_the_build_and_the_attach(unique_migrations: None) -> None:
    out = StringIO()
    call_command("sqlmigrate", "indexapp", "0002", stdout=out)
    sql = out.getvalue()
    assert (
        f'CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "{UNIQUE}" ON "{TABLE}" '
        '("referrer", "country")' in sql
    ), sql
    assert f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{UNIQUE}" UNIQUE USING INDEX "{UNIQUE}"' in sql
    assert f'CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "{PARTIAL}"' in sql
    assert "WHERE" in sql.split(PARTIAL, 1)[1]
