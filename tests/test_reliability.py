"""Redis failures never fail a database write; counters that missed writes are marked stale.

Redis is really stopped, killed, paused, filled up or made read-only here: nothing is mocked.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.db import transaction

from distinct_counter import DistinctCount
from distinct_counter import connection as redis_connection
from distinct_counter.counting import stale
from distinct_counter.exceptions import CounterUnavailable
from distinct_counter.models import CounterState
from distinct_counter.testing.servers import RedisServer
from tests.conftest import distinct_in_db, master, wait_until
from tests.servers import redis_cache
from tests.testapp.models import Message

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def built() -> None:
    call_command("rebuild_counts", "testapp.Message", verbosity=0)


@pytest.fixture
def stopped_master(topology: Any, built: None) -> Iterator[RedisServer]:
    """The session's Redis master, stopped; started again (empty) afterwards."""
    server = topology.redis_master
    server.stop()
    try:
        yield server
    finally:
        if not server.is_running():
            server.start()
        for replica in topology.redis_replicas:
            wait_until(
                lambda r=replica: (
                    redis.Redis(port=r.port).info("replication")["master_link_status"] == "up"
                ),
                timeout=30,
            )
        redis_connection.reset()


def use_cache(settings: Any, url: str) -> None:
    settings.CACHES = {**settings.CACHES, "default": redis_cache(url)}


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "distinct_counter" and r.levelno >= logging.ERROR
    ]


def test_saves_commit_while_redis_is_stopped(
    stopped_master: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="distinct_counter")
    for i in range(5):
        Message.objects.create(username=f"u{i}", city="Paris")
    m = Message.objects.first()
    m.city = "Lyon"
    m.save()
    m.delete()
    assert Message.objects.count() == 4  # every write committed
    logged = errors_logged(caplog)
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert "Connection" in logged[0].getMessage()  # the real cause, e.g. connection refused
    state = CounterState.objects.get(label="testapp.message.city")
    assert state.stale_since is not None
    result = DistinctCount.read("city", Message)
    assert (result.source, result.state) == ("database", "unreachable")
    assert result.count == distinct_in_db(Message, "city")


def test_counters_come_back_exact_after_restart_and_rebuild(stopped_master: RedisServer) -> None:
    Message.objects.create(username="during", city="Outage")
    stopped_master.start()  # empty: the counters are missing, never silently 0
    redis_connection.reset()
    result = DistinctCount.read("city", Message)
    assert (result.source, result.state, result.count) == ("database", "missing", 1)
    call_command("rebuild_counts", verbosity=0)
    assert DistinctCount.read("city", Message) == (
        DistinctCount.read("city", Message).__class__(1, "redis", "ok")
    )
    assert CounterState.objects.get(label="testapp.message.city").stale_since is None


def test_killed_in_the_middle_of_a_transaction(topology: Any, stopped_master: RedisServer) -> None:
    stopped_master.start()
    redis_connection.reset()
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    with transaction.atomic():
        Message.objects.create(username="a", city="Paris")
        stopped_master.kill()
        Message.objects.create(username="b", city="Lyon")
    assert Message.objects.filter(username__in=["a", "b"]).count() == 2


def test_timeout_marks_stale_and_the_mark_survives_a_process_restart(
    built: None, caplog: pytest.LogCaptureFixture
) -> None:
    Message.objects.create(username="before", city="Paris")
    # Writes (scripts included) block on the paused server: ours time out, the data stays.
    master().execute_command("CLIENT", "PAUSE", 1500, "WRITE")
    try:
        Message.objects.create(username="missed", city="Missed")
    finally:
        master().execute_command("CLIENT", "UNPAUSE")
    assert "Timeout" in errors_logged(caplog)[0].getMessage()
    # Redis still holds the old counts and says "ok"; this process knows better.
    assert master().hget("distinct_counter:{testapp.message.city}:meta", "state") == b"ok"
    # Once the breaker lets Redis be tried again, the count says it is stale.
    wait_until(lambda: DistinctCount.read("city", Message).state == "stale")
    # A new process, that never saw the failure, learns it from the database.
    redis_connection.reset()
    stale.clear()
    code = (
        "import django; django.setup(); from distinct_counter import DistinctCount; "
        "from tests.testapp.models import Message; r = DistinctCount.read('city', Message); "
        "print(r.state, r.source, r.count)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        cwd=Path(__file__).parent.parent,
    ).stdout.split()
    assert out == ["stale", "database", "2"]
    assert master().hget("distinct_counter:{testapp.message.city}:meta", "state") == b"stale"
    call_command("rebuild_counts", "--stale", verbosity=0)
    assert DistinctCount.read("city", Message).state == "ok"
    assert DistinctCount.get("city", Message) == distinct_in_db(Message, "city") == 2


@pytest.fixture
def own_redis(tmp_path: Path, settings: Any) -> Iterator[RedisServer]:
    """A Redis of this test's own, to misconfigure; the counters are built on it."""
    server = RedisServer(tmp_path / "redis").start()
    use_cache(settings, server.url())
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    try:
        yield server
    finally:
        redis_connection.reset()
        server.kill()


def test_auth_error(own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    redis.Redis(port=own_redis.port).config_set("requirepass", "secret")
    redis_connection.reset()
    Message.objects.create(username="a", city="Paris")
    assert Message.objects.count() == 1
    assert "uthentication" in errors_logged(caplog)[0].getMessage()


def test_max_clients(own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    holder = redis.Redis(port=own_redis.port)
    holder.config_set("maxclients", 1)
    redis_connection.reset()  # our next command needs a new connection
    Message.objects.create(username="a", city="Paris")
    assert Message.objects.count() == 1
    assert "max number of clients" in errors_logged(caplog)[0].getMessage()
    holder.close()


def test_read_only_replica(built: None, settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    master().wait(2, 2000)
    settings.DISTINCT_COUNTER = {**settings.DISTINCT_COUNTER, "WRITE_CACHE": "replica1"}
    Message.objects.create(username="a", city="Paris")
    assert Message.objects.count() == 1
    assert "read only replica" in errors_logged(caplog)[0].getMessage()
    assert CounterState.objects.get(label="testapp.message.city").stale_since is not None


class Blackhole:
    """A TCP server that accepts connections and never answers: every command times out."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_circuit_breaker_skips_redis_until_the_retry_interval(settings: Any) -> None:
    hole = Blackhole()
    try:
        use_cache(settings, f"redis://127.0.0.1:{hole.port}/0")
        settings.DISTINCT_COUNTER = {**settings.DISTINCT_COUNTER, "RETRY_INTERVAL": 60}
        Message.objects.create(username="first", city="Paris")
        tried = len(hole.accepted)
        assert tried >= 1
        for i in range(5):
            Message.objects.create(username=f"u{i}", city="Paris")
            DistinctCount.get("city", Message)
        assert len(hole.accepted) == tried  # nobody waited on Redis again
        assert Message.objects.count() == 6
        # Once the interval has passed, Redis is tried again.
        redis_connection.breaker("default").open_until = 0
        Message.objects.create(username="later", city="Paris")
        assert len(hole.accepted) > tried
        assert stale.is_pending("testapp.message.city")
    finally:
        hole.close()


def test_on_error_raise(stopped_master: RedisServer, settings: Any) -> None:
    settings.DISTINCT_COUNTER = {
        **settings.DISTINCT_COUNTER,
        "ON_ERROR": "raise",
        "RETRY_INTERVAL": 60,
    }
    # The first write discovers the failure after its commit, and says so.
    with pytest.raises(CounterUnavailable, match="marked stale"):
        Message.objects.create(username="a", city="Paris")
    assert Message.objects.filter(username="a").exists()
    # Later writes are refused before they touch the database.
    with pytest.raises(CounterUnavailable, match="refusing to write testapp.Message"):
        Message.objects.create(username="b", city="Paris")
    assert not Message.objects.filter(username="b").exists()


def test_fallback_raise_while_stale(stopped_master: RedisServer, settings: Any) -> None:
    Message.objects.create(username="a", city="Paris")
    settings.DISTINCT_COUNTER = {**settings.DISTINCT_COUNTER, "FALLBACK": "raise"}
    with pytest.raises(CounterUnavailable) as exc:
        DistinctCount.get("city", Message)
    assert exc.value.state == "unreachable"
