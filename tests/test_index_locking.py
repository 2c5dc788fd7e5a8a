"""Two ``migrate`` runs at once (two deploy nodes) never both build one index: the
concurrent operations hold a session-level advisory lock, released on error."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.db import NotSupportedError, connection

from tests.conftest import wait_until
from tests.index_fixtures import INDEX, TIMEOUT, Build, index_row, insert, migrate, waiting_build


def building_sessions(monitor: Any) -> list[int]:
    """The sessions creating or dropping an index concurrently."""
    with monitor.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE state = 'active' "
            "AND query ~ '^(CREATE|DROP) INDEX CONCURRENTLY'"
        )
        return [row[0] for row in cursor.fetchall()]


def advisory_locks(pid: int | None = None) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = COALESCE(%s, pg_backend_pid())",
            [pid],
        )
        return int(cursor.fetchone()[0])


def test_two_migrates_at_once_build_the_index_once(
    indexapp: None, holder: Any, monitor: Any
) -> None:
    migrate("0001")
    insert(holder.cursor(), "Paris")  # keeps the first build waiting
    first = Build()
    first.start()
    second = None
    try:
        wait_until(lambda: waiting_build(monitor, first.pid), TIMEOUT)
        second = Build()
        second.start()
        wait_until(lambda: second.pid is not None, TIMEOUT)
        time.sleep(2)  # the second migrate has long reached the operation
        assert building_sessions(monitor) == [first.pid], "the second waits for the first"
        assert second.is_alive()
        assert advisory_locks(first.pid) == 1 and advisory_locks(second.pid) == 0
    finally:
        holder.commit()
        first.join(TIMEOUT)
        if second is not None:
            second.join(TIMEOUT)
    assert first.error is None and second.error is None, (first.error, second.error)
    row = index_row()
    assert row is not None and row[1], "one valid index"


def test_the_lock_is_released_when_the_build_fails(indexapp: None) -> None:
    migrate("0001")
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE indexapp_other (x int)")
        cursor.execute(f"CREATE INDEX {INDEX} ON indexapp_other (x)")
    try:
        with pytest.raises(NotSupportedError, match="belongs to another relation"):
            migrate("0002")
        assert advisory_locks() == 0
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE indexapp_other")
