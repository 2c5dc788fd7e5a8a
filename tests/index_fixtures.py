"""What the tests of the index operations share: the ``tests.indexapp`` app (installed only
by them), sessions of their own, a build running in a thread, and what PostgreSQL says of
indexes and locks. Registered as a pytest plugin by ``tests/conftest.py``."""

from __future__ import annotations

import contextlib
import shutil
import threading
import uuid
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection, connections
from django.db.utils import ConnectionHandler
from django.test.utils import override_settings

from distinct_counter.counting import registry

INDEX = "indexapp_visit_city_idx"
TABLE = "indexapp_visit"
MIGRATIONS = Path(__file__).parent / "indexapp" / "migrations"
#: The name Django's Index.set_name_with_model gives an index on Visit.referrer.
REFERRER_INDEX = "indexapp_vi_referre_16bb22_idx"
#: Generous for a loaded 2-core machine; the waits end as soon as their condition holds.
TIMEOUT = 60


# -- helpers -----------------------------------------------------------------------------------


def raw_connection(autocommit: bool = True) -> Any:
    """A psycopg2 connection of its own: another session than Django's (another client)."""
    db = django_settings.DATABASES["default"]
    conn = psycopg2.connect(
        host=db["HOST"],
        port=db["PORT"],
        user=db["USER"],
        password=db["PASSWORD"],
        dbname=db["NAME"],
    )
    conn.autocommit = autocommit
    return conn


def index_row(name: str = INDEX) -> tuple[int, bool] | None:
    """``(oid, indisvalid)`` of the index, None when there is none."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.oid, i.indisvalid FROM pg_class c "
            "JOIN pg_index i ON i.indexrelid = c.oid WHERE c.relname = %s",
            [name],
        )
        row = cursor.fetchone()
    return None if row is None else (int(row[0]), bool(row[1]))


def migrate(target: str) -> None:
    call_command("migrate", "indexapp", target, verbosity=0, stdout=StringIO(), stderr=StringIO())


def insert(cursor: Any, city: str) -> None:
    cursor.execute(f"INSERT INTO {TABLE} (city, referrer, country) VALUES (%s, '', 'FR')", [city])


class Build(threading.Thread):
    """``migrate indexapp 0002`` in a thread (its own Django connection), with the session's
    ``lock_timeout`` and ``statement_timeout`` set first and read back after."""

    TIMEOUTS = {"lock_timeout": "200ms", "statement_timeout": "20s"}

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pid: int | None = None
        self.error: BaseException | None = None
        self.timeouts_after: dict[str, str] = {}

    def run(self) -> None:
        try:
            with connection.cursor() as cursor:
                for name, value in self.TIMEOUTS.items():
                    cursor.execute(f"SET {name} = '{value}'")
                cursor.execute("SELECT pg_backend_pid()")
                self.pid = cursor.fetchone()[0]
            try:
                migrate("0002")
            except BaseException as exc:
                self.error = exc
            with connection.cursor() as cursor:
                for name in self.TIMEOUTS:
                    cursor.execute(f"SHOW {name}")
                    self.timeouts_after[name] = cursor.fetchone()[0]
        finally:
            connection.close()


def waiting_build(monitor: Any, pid: int | None, for_seconds: float = 0) -> bool:
    """The build's session is in CREATE INDEX CONCURRENTLY, waiting on a lock since
    ``for_seconds`` at least."""
    if pid is None:
        return False
    with monitor.cursor() as cursor:
        cursor.execute(
            "SELECT wait_event_type = 'Lock' AND query LIKE 'CREATE INDEX CONCURRENTLY%%' "
            "AND now() - query_start > %s * interval '1 second' "
            "FROM pg_stat_activity WHERE pid = %s",
            [for_seconds, pid],
        )
        row = cursor.fetchone()
    return bool(row and row[0])


def table_locks(monitor: Any, pid: int) -> set[str]:
    with monitor.cursor() as cursor:
        cursor.execute(
            "SELECT mode FROM pg_locks WHERE pid = %s AND granted "
            f"AND relation = '{TABLE}'::regclass",
            [pid],
        )
        return {row[0] for row in cursor.fetchall()}


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def indexapp_installed() -> Iterator[None]:
    try:
        with override_settings(INSTALLED_APPS=[*django_settings.INSTALLED_APPS, "tests.indexapp"]):
            yield
    finally:
        registry.clear_cache()  # no counter of indexapp outlives its installation


@pytest.fixture
def indexapp(transactional_db: None, indexapp_installed: None) -> Iterator[None]:
    """indexapp installed, its table dropped and its migrations forgotten afterwards."""
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE} CASCADE")
        cursor.execute("DELETE FROM django_migrations WHERE app = 'indexapp'")


@pytest.fixture
def holder() -> Iterator[Any]:
    """A session whose open transaction has written to the table: a concurrent build must
    wait for it to end, which keeps the build running for as long as the test needs."""
    conn = raw_connection(autocommit=False)
    yield conn
    conn.rollback()
    conn.close()


@pytest.fixture
def monitor() -> Iterator[Any]:
    conn = raw_connection()
    yield conn
    conn.close()


@pytest.fixture
def fresh_migrations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, indexapp_installed: None
) -> Iterator[Path]:
    """indexapp's migrations as a new package holding 0001_initial only (no index yet)."""
    name = f"indexapp_migrations_{uuid.uuid4().hex}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").touch()
    shutil.copy(MIGRATIONS / "0001_initial.py", package)
    monkeypatch.syspath_prepend(str(tmp_path))
    with override_settings(MIGRATION_MODULES={"indexapp": name}):
        yield package


@pytest.fixture
def sqlite(tmp_path: Path, django_db_blocker: Any) -> Iterator[Any]:
    """A SQLite database of its own, as the alias ``sqlite`` (querysets of the migration
    recorder look their connection up by alias)."""
    normalized = ConnectionHandler(
        {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "db.sqlite3")}}
    )
    connections.settings["sqlite"] = normalized.settings["default"]
    try:
        with django_db_blocker.unblock():
            yield connections["sqlite"]
            connections["sqlite"].close()
    finally:
        with contextlib.suppress(AttributeError):
            del connections["sqlite"]
        del connections.settings["sqlite"]
