"""``counted_indexes --runsql``: a migration made only of Django's own operations (``RunSQL``
in ``SeparateDatabaseAndState``), which keeps loading after this app is removed."""

from __future__ import annotations

import ast
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader

from distinct_counter.indexes.planner import missing_indexes
from tests.index_fixtures import INDEX, REFERRER_INDEX, TABLE, index_row, migrate

NAME = "0002_counted_indexes"


def write_runsql_migration(package: Path) -> str:
    out = StringIO()
    call_command("counted_indexes", "indexapp", "--runsql", stdout=out)
    assert f"Wrote {package / (NAME + '.py')}" in out.getvalue()
    return (package / f"{NAME}.py").read_text()


def test_the_migration_imports_nothing_but_django(fresh_migrations: Path) -> None:
    source = write_runsql_migration(fresh_migrations)
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported == {"django.db"}, imported
    assert "PostgreSQL only" in source and "atomic = False" in source
    loader = MigrationLoader(None, ignore_no_migrations=True)
    migration = loader.get_migration("indexapp", NAME)
    kinds = {type(op).__name__ for op in migration.operations}
    assert kinds == {"SeparateDatabaseAndState"}
    for op in migration.operations:
        assert [type(o).__name__ for o in op.state_operations] == ["AddIndex"]
        assert {type(o).__name__ for o in op.database_operations} == {"RunSQL"}


def test_it_builds_valid_indexes_the_state_knows(fresh_migrations: Path, indexapp: None) -> None:
    write_runsql_migration(fresh_migrations)
    migrate(NAME)
    for name in (INDEX, REFERRER_INDEX):
        row = index_row(name)
        assert row is not None and row[1], name
    assert missing_indexes("indexapp") == []  # the state holds the indexes
    migrate("0001")
    assert index_row(INDEX) is None and index_row(REFERRER_INDEX) is None


def test_applied_twice_it_ends_with_one_valid_index(fresh_migrations: Path, indexapp: None) -> None:
    write_runsql_migration(fresh_migrations)
    migrate(NAME)
    first = index_row(INDEX), table_indexes()
    call_command("migrate", "indexapp", "0001", fake=True, verbosity=0, stdout=StringIO())
    migrate(NAME)  # runs its SQL again on the indexes it built
    assert first[0] is not None and first[0][1]
    assert (index_row(INDEX), table_indexes()) == first, "kept, not rebuilt nor doubled"
    assert {INDEX, REFERRER_INDEX} <= set(first[1])


def table_indexes() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s ORDER BY 1", [TABLE])
        return [row[0] for row in cursor.fetchall()]


def test_an_invalid_leftover_is_dropped_and_built_anew(
    fresh_migrations: Path, indexapp: None
) -> None:
    write_runsql_migration(fresh_migrations)
    migrate("0001")
    with connection.cursor() as cursor:
        for _ in range(2):
            cursor.execute(f"INSERT INTO {TABLE} (city, referrer, country) VALUES ('a', 'b', 'FR')")
    # An interrupted build's remains: a concurrent build that failed (here on duplicates).
    with pytest.raises(Exception, match="could not create unique index"):
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {INDEX} ON {TABLE} (city)")
    invalid = index_row(INDEX)
    assert invalid is not None and not invalid[1]
    migrate(NAME)
    rebuilt = index_row(INDEX)
    assert rebuilt is not None and rebuilt[1] and rebuilt[0] != invalid[0]
