"""MasterReplicaCache on the session's real Redis master and its two real replicas.

Two "nodes" live in this one process: ``node1`` reads from ``replica1`` and ``node2`` from
``replica2``, each with its own ``LOCAL`` cache; both write to the master ``default``.
``plain`` is node 1 without ``LOCAL`` (its journal is a file). Servers are really killed and
restarted; what they hold is read back from each server itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.core.cache import caches
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError

from distinct_counter import DistinctCount
from distinct_counter import connection as redis_connection
from distinct_counter.api import CountResult
from distinct_counter.cache import status as cache_status
from distinct_counter.cache.checks import check_master_replica_cache
from distinct_counter.checks import check_settings
from distinct_counter.connection import get_client
from tests.conftest import distinct_in_db, wait_until
from tests.testapp.models import Message

BACKEND = "distinct_counter.cache.backend.MasterReplicaCache"
LOCMEM = "django.core.cache.backends.locmem.LocMemCache"
SERVERS = ("default", "replica1", "replica2")
LOCAL_TTL = 0.5
RETRY = 0.3


def node_caches(journal: Path, **options: Any) -> dict[str, Any]:
    base = {alias: django_settings.CACHES[alias] for alias in (*SERVERS, "locmem")}
    local = {"BACKEND": LOCMEM, "OPTIONS": {"MAX_ENTRIES": 10_000}}
    common = {"MASTER": "default", "LOCAL_TTL": LOCAL_TTL, "RETRY_INTERVAL": RETRY, **options}
    return {
        **base,
        "local1": {**local, "LOCATION": "node1"},
        "local2": {**local, "LOCATION": "node2"},
        "node1": {
            "BACKEND": BACKEND,
            "OPTIONS": {**common, "REPLICA": "replica1", "LOCAL": "local1"},
        },
        "node2": {
            "BACKEND": BACKEND,
            "OPTIONS": {**common, "REPLICA": "replica2", "LOCAL": "local2"},
        },
        "plain": {
            "BACKEND": BACKEND,
            "OPTIONS": {**common, "REPLICA": "replica1", "JOURNAL_FILE": str(journal)},
        },
    }


@pytest.fixture
def nodes(settings: Any, tmp_path: Path) -> Iterator[None]:
    """The two nodes (and ``plain``) added to CACHES for this test only."""
    settings.CACHES = node_caches(tmp_path / "journal")
    redis_connection.reset()
    for alias in ("local1", "local2"):
        caches[alias].clear()
    yield
    redis_connection.reset()


def raw(alias: str) -> redis.Redis:
    return redis.Redis.from_url(django_settings.CACHES[alias]["LOCATION"], socket_timeout=2)


def replicated(timeout: float = 10.0) -> None:
    """Wait until both replicas have applied everything the master has.

    Compares replication offsets rather than sending ``WAIT``: ``WAIT`` only counts the
    writes of the connection it is sent on, and the cache wrote through its own pool.
    """
    offset = raw("default").info("replication")["master_repl_offset"]
    for alias in SERVERS[1:]:
        wait_until(
            lambda a=alias: raw(a).info("replication")["slave_repl_offset"] >= offset, timeout
        )


def everywhere(key: str) -> list[Any]:
    """``key`` as the master and each replica hold it (read from each server directly)."""
    replicated()
    return [caches[alias].get(key, "<missing>") for alias in SERVERS]


def links_up(topology: Any) -> None:
    for replica in topology.redis_replicas:
        wait_until(
            lambda r=replica: (
                redis.Redis(port=r.port).info("replication")["master_link_status"] == "up"
            ),
            timeout=30,
        )


# -- Django's own cache-backend tests ------------------------------------------------------------


def f() -> int:
    return 42


class C:
    def m(n: int) -> int:  # type: ignore[misc]  # noqa: N805 - the shape Django's test uses
        return 24


class Unpicklable:
    def __getstate__(self) -> Any:
        raise pickle.PickleError()


class Replicated:
    """A cache whose every write is followed by :func:`replicated`, so that reads, which go to
    the replica, see it (the ``plain`` node has no ``LOCAL`` to remember its writes)."""

    WRITES = {
        "set",
        "add",
        "set_many",
        "delete",
        "delete_many",
        "incr",
        "decr",
        "touch",
        "clear",
        "get_or_set",
        "incr_version",
        "decr_version",
    }

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.cache, name)
        if name not in self.WRITES:
            return attr

        def write(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            finally:
                replicated()

        return write

    def __contains__(self, key: str) -> bool:
        return key in self.cache


@pytest.fixture(params=["replica", "local"])
def cache(request: pytest.FixtureRequest, nodes: None) -> Any:
    """The Django cache API through MasterReplicaCache, two ways: ``replica`` reads the
    replica once replication is done (no LOCAL); ``local`` reads the writing node's own
    writes from LOCAL at once, and everything else from the replica."""
    if request.param == "replica":
        return Replicated(caches["plain"])
    return caches["node1"]


class TestDjangoCacheAPI:
    """Django's ``tests/cache/tests.py`` ``BaseCacheTests``, ported for the methods the
    backend implements; timeouts are shortened to fractions of a second."""

    def test_simple(self, cache: Any) -> None:
        cache.set("key", "value")
        assert cache.get("key") == "value"

    def test_default_used_when_none_is_set(self, cache: Any) -> None:
        cache.set("key_default_none", None)
        assert cache.get("key_default_none", default="default") is None

    def test_add(self, cache: Any) -> None:
        assert cache.add("addkey1", "value") is True
        assert cache.add("addkey1", "newvalue") is False
        assert cache.get("addkey1") == "value"

    def test_non_existent(self, cache: Any) -> None:
        assert cache.get("does_not_exist") is None
        assert cache.get("does_not_exist", "bang!") == "bang!"

    def test_get_many(self, cache: Any) -> None:
        cache.set_many({"a": "a", "b": "b", "c": "c", "d": "d"})
        assert cache.get_many(["a", "c", "d"]) == {"a": "a", "c": "c", "d": "d"}
        assert cache.get_many(["a", "b", "e"]) == {"a": "a", "b": "b"}
        assert cache.get_many(iter(["a", "b", "e"])) == {"a": "a", "b": "b"}
        cache.set_many({"x": None, "y": 1})
        assert cache.get_many(["x", "y"]) == {"x": None, "y": 1}

    def test_delete(self, cache: Any) -> None:
        cache.set_many({"key1": "spam", "key2": "eggs"})
        assert cache.get("key1") == "spam"
        assert cache.delete("key1") is True
        assert cache.get("key1") is None
        assert cache.get("key2") == "eggs"

    def test_delete_nonexistent(self, cache: Any) -> None:
        assert cache.delete("nonexistent_key") is False

    def test_has_key(self, cache: Any) -> None:
        cache.set("hello1", "goodbye1")
        assert cache.has_key("hello1") is True
        assert cache.has_key("goodbye1") is False
        cache.set("no_expiry", "here", None)
        assert cache.has_key("no_expiry") is True
        cache.set("null", None)
        assert cache.has_key("null") is True

    def test_in(self, cache: Any) -> None:
        cache.set("hello2", "goodbye2")
        assert "hello2" in cache
        assert "goodbye2" not in cache
        cache.set("null", None)
        assert "null" in cache

    def test_incr(self, cache: Any) -> None:
        cache.set("answer", 41)
        assert cache.incr("answer") == 42
        assert cache.get("answer") == 42
        assert cache.incr("answer", 10) == 52
        assert cache.get("answer") == 52
        assert cache.incr("answer", -10) == 42
        with pytest.raises(ValueError):
            cache.incr("does_not_exist")
        with pytest.raises(ValueError):
            cache.incr("does_not_exist", -1)
        cache.set("null", None)
        with pytest.raises(TypeError):
            cache.incr("null")

    def test_decr(self, cache: Any) -> None:
        cache.set("answer", 43)
        assert cache.decr("answer") == 42
        assert cache.get("answer") == 42
        assert cache.decr("answer", 10) == 32
        assert cache.get("answer") == 32
        assert cache.decr("answer", -10) == 42
        with pytest.raises(ValueError):
            cache.decr("does_not_exist")
        cache.set("null", None)
        with pytest.raises(TypeError):
            cache.decr("null")

    def test_close(self, cache: Any) -> None:
        cache.close()

    def test_data_types(self, cache: Any) -> None:
        tests = {
            "string": "this is a string",
            "int": 42,
            "bool": True,
            "list": [1, 2, 3, 4],
            "tuple": (1, 2, 3, 4),
            "dict": {"A": 1, "B": 2},
            "function": f,
            "class": C,
        }
        for key, value in tests.items():
            cache.set(key, value)
            assert cache.get(key) == value, key

    def test_expiration(self, cache: Any) -> None:
        for key in ("expire1", "expire2", "expire3"):
            cache.set(key, "very quickly", 0.3)
        time.sleep(0.6)
        assert cache.get("expire1") is None
        assert cache.add("expire2", "newvalue") is True
        assert cache.get("expire2") == "newvalue"
        assert cache.has_key("expire3") is False

    def test_touch(self, cache: Any) -> None:
        cache.set("expire1", "very quickly", timeout=0.3)
        assert cache.touch("expire1", timeout=1.5) is True
        time.sleep(0.6)
        assert cache.has_key("expire1") is True
        time.sleep(1.2)
        assert cache.has_key("expire1") is False
        cache.set("expire1", "very quickly", timeout=0.3)
        assert cache.touch("expire1") is True  # the default timeout, 300 s
        time.sleep(0.6)
        assert cache.has_key("expire1") is True
        assert cache.touch("nonexistent") is False

    def test_unicode(self, cache: Any) -> None:
        stuff = {
            "ascii": "ascii_value",
            "unicode_ascii": "Iñtërnâtiônàlizætiøn1",
            "Iñtërnâtiônàlizætiøn": "Iñtërnâtiônàlizætiøn2",
            "ascii2": {"x": 1},
        }
        for key, value in stuff.items():
            cache.set(key, value)
            assert cache.get(key) == value
        for key, value in stuff.items():
            assert cache.delete(key) is True
            assert cache.add(key, value) is True
            assert cache.get(key) == value
        for key in stuff:
            assert cache.delete(key) is True
        cache.set_many(stuff)
        for key, value in stuff.items():
            assert cache.get(key) == value

    def test_binary_string(self, cache: Any) -> None:
        from zlib import compress, decompress

        compressed = compress(b"value_to_be_compressed")
        cache.set("binary1", compressed)
        assert decompress(cache.get("binary1")) == b"value_to_be_compressed"
        assert cache.add("binary1-add", compressed) is True
        assert cache.get("binary1-add") == compressed
        cache.set_many({"binary1-set_many": compressed})
        assert cache.get("binary1-set_many") == compressed

    def test_set_many(self, cache: Any) -> None:
        assert cache.set_many({"key1": "spam", "key2": "eggs"}) == []
        assert cache.get("key1") == "spam"
        assert cache.get("key2") == "eggs"
        assert cache.set_many({}) == []

    def test_set_many_expiration(self, cache: Any) -> None:
        cache.set_many({"key1": "spam", "key2": "eggs"}, 0.3)
        time.sleep(0.6)
        assert cache.get("key1") is None
        assert cache.get("key2") is None

    def test_delete_many(self, cache: Any) -> None:
        cache.set_many({"key1": "spam", "key2": "eggs", "key3": "ham"})
        assert cache.delete_many(["key1", "key2"]) is None
        assert cache.get("key1") is None
        assert cache.get("key2") is None
        assert cache.get("key3") == "ham"
        assert cache.delete_many([]) is None

    def test_clear(self, cache: Any) -> None:
        cache.set_many({"key1": "spam", "key2": "eggs"})
        cache.clear()
        assert cache.get("key1") is None
        assert cache.get("key2") is None

    def test_long_timeout(self, cache: Any) -> None:
        month = 60 * 60 * 24 * 30 + 1
        cache.set("key1", "eggs", month)
        assert cache.get("key1") == "eggs"
        assert cache.add("key2", "ham", month) is True
        assert cache.get("key2") == "ham"
        cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, month)
        assert cache.get_many(["key3", "key4"]) == {"key3": "sausage", "key4": "lobster bisque"}

    def test_forever_timeout(self, cache: Any) -> None:
        cache.set("key1", "eggs", None)
        assert cache.get("key1") == "eggs"
        assert cache.add("key2", "ham", None) is True
        assert cache.get("key2") == "ham"
        assert cache.add("key1", "new eggs", None) is False
        assert cache.get("key1") == "eggs"
        cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, None)
        assert cache.get("key3") == "sausage"
        cache.set("key5", "belgian fries", timeout=0.3)
        assert cache.touch("key5", timeout=None) is True
        time.sleep(0.6)
        assert cache.get("key5") == "belgian fries"
        assert cache.ttl("key5") is None

    def test_zero_timeout(self, cache: Any) -> None:
        cache.set("key1", "eggs", 0)
        assert cache.get("key1") is None
        assert cache.add("key2", "ham", 0) is True
        assert cache.get("key2") is None
        cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, 0)
        assert cache.get("key3") is None
        assert cache.get("key4") is None
        cache.set("key5", "belgian fries", timeout=5)
        assert cache.touch("key5", timeout=0) is True
        assert cache.get("key5") is None

    def test_float_timeout(self, cache: Any) -> None:
        cache.set("key1", "spam", 100.2)
        assert cache.get("key1") == "spam"

    def test_ttl(self, cache: Any) -> None:
        cache.set("key1", "spam", 100)
        assert 90 < cache.ttl("key1") <= 100
        cache.set("key2", "eggs", None)
        assert cache.ttl("key2") is None
        assert cache.ttl("missing") == 0

    def test_fail_on_pickleerror(self, cache: Any) -> None:
        with pytest.raises(pickle.PickleError):
            cache.add("unpicklable", Unpicklable())
        with pytest.raises(pickle.PickleError):
            cache.set("unpicklable", Unpicklable())

    def test_get_or_set(self, cache: Any) -> None:
        assert cache.get("projector") is None
        assert cache.get_or_set("projector", 42) == 42
        assert cache.get("projector") == 42
        assert cache.get_or_set("null", None) is None
        assert cache.get("null", "default") is None

    def test_get_or_set_callable(self, cache: Any) -> None:
        assert cache.get_or_set("mykey", lambda: "value") == "value"
        assert cache.get_or_set("mykey", "other") == "value"
        assert cache.get_or_set("null", lambda: None) is None
        assert cache.get("null", "default") is None

    def test_get_or_set_version(self, cache: Any) -> None:
        assert cache.get_or_set("brian", 1979, version=2) == 1979
        with pytest.raises(TypeError, match="required positional argument: 'default'"):
            cache.get_or_set("brian")
        assert cache.get("brian", version=1) is None
        assert cache.get_or_set("brian", 42, version=1) == 42
        assert cache.get_or_set("brian", 1979, version=2) == 1979
        assert cache.get("brian", version=3) is None

    def test_versions(self, cache: Any) -> None:
        cache.set("answer", 42, version=2)
        assert cache.get("answer") is None
        assert cache.get("answer", version=2) == 42
        assert cache.has_key("answer", version=2) is True
        assert cache.incr_version("answer", version=2) == 3
        assert cache.get("answer", version=2) is None
        assert cache.get("answer", version=3) == 42
        assert cache.decr_version("answer", version=3) == 2
        assert cache.get("answer", version=2) == 42
        with pytest.raises(ValueError):
            cache.incr_version("does_not_exist")


# -- the topology --------------------------------------------------------------------------------


def test_a_set_on_node1_is_read_on_node2_and_a_delete_on_node2_reaches_both(nodes: None) -> None:
    node1, node2 = caches["node1"], caches["node2"]
    node1.set("greeting", "hello")
    replicated()
    assert node2.get("greeting") == "hello"
    assert everywhere("greeting") == ["hello"] * 3
    assert node2.delete("greeting") is True
    assert node2.get("greeting") is None
    assert everywhere("greeting") == ["<missing>"] * 3
    # Node 1 remembers its own write for LOCAL_TTL, then reads its replica again.
    wait_until(lambda: node1.get("greeting") is None, timeout=5 * LOCAL_TTL)


@pytest.fixture
def detached_replica1(nodes: None) -> Iterator[redis.Redis]:
    """replica1 cut off from the master (``REPLICAOF NO ONE``), re-attached afterwards."""
    server = raw("replica1")
    master = raw("default").connection_pool.connection_kwargs
    server.execute_command("REPLICAOF", "NO", "ONE")
    try:
        yield server
    finally:
        server.execute_command("REPLICAOF", master["host"], master["port"])
        wait_until(lambda: server.info("replication")["master_link_status"] == "up", 30)


def test_node1_reads_its_own_write_before_replication(detached_replica1: redis.Redis) -> None:
    caches["node1"].set("mine", "fresh")
    assert caches["node1"].get("mine") == "fresh"
    assert caches["node1"].get_many(["mine"]) == {"mine": "fresh"}
    assert caches["node1"].has_key("mine")
    # The replica node 1 reads has not got it: only LOCAL can have answered.
    assert caches["replica1"].get("mine") is None
    assert caches["plain"].get("mine") is None
    assert caches["default"].get("mine") == "fresh"


def test_node1_reads_its_own_clear_and_ttl_before_replication(
    detached_replica1: redis.Redis,
) -> None:
    caches["replica1"].set("old", "x")  # detached, the replica takes writes
    caches["node1"].set("fresh", "y", 100)
    assert 90 < caches["node1"].ttl("fresh") <= 100  # the master's answer
    assert caches["plain"].ttl("fresh") == 0  # the replica's
    caches["node1"].clear()
    assert caches["replica1"].get("old") == "x"
    assert caches["node1"].get("old") is None
    assert caches["node1"].get_many(["old"]) == {}
    assert caches["node1"].has_key("old") is False
    caches["node1"].set("after", "z")
    assert caches["node1"].get("after") == "z"


@contextlib.contextmanager
def master_down(topology: Any) -> Iterator[Callable[[], None]]:
    """The master killed after a snapshot of its data (``SAVE``). Yields ``restart()``, which
    starts it again with that data, as a master with persistence would come back; afterwards
    it is running again in any case, and later restarts of the session start empty."""
    server = topology.redis_master
    raw("default").save()
    server.kill()

    def restart() -> None:
        server.start()
        (server.workdir / "dump.rdb").unlink()
        links_up(topology)
        replicated()

    try:
        yield restart
    finally:
        (server.workdir / "dump.rdb").unlink(missing_ok=True)
        if not server.is_running():
            server.start()
        links_up(topology)
        redis_connection.reset()


@pytest.fixture
def killed_master(topology: Any, nodes: None) -> Iterator[Callable[[], None]]:
    with master_down(topology) as restart:
        yield restart


@pytest.mark.parametrize("mode", ["delete", "set"])
def test_master_killed_and_restarted(
    settings: Any, tmp_path: Path, topology: Any, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings.CACHES = node_caches(tmp_path / "journal", REPLAY=mode)
    redis_connection.reset()
    for alias in ("local1", "local2"):
        caches[alias].clear()
    node1, node2, plain = caches["node1"], caches["node2"], caches["plain"]
    node1.set_many({"kept": "old", "doomed": "old", "contested": "old", "counter": 1})
    replicated()
    with master_down(topology) as restart:
        # The outage: no exception reaches the caller; reads go on from the replicas.
        caplog.set_level(logging.ERROR, logger="distinct_counter")
        assert node1.delete("doomed") is True
        node1.set("contested", "mine")
        assert node1.incr("counter") == 2
        plain.delete_many(["kept-by-plain"])
        node2.set("new-on-node2", "x")
        assert node2.add("added-on-node2", "y") is True
        assert (len(node1.journal), len(node2.journal), len(plain.journal)) == (3, 2, 1)
        assert node1.get("doomed") is None and node1.get("contested") == "mine"
        assert node2.get("doomed") == "old" and node2.get("contested") == "old"
        assert plain.get("contested") == "old"  # replica1's copy: plain has no LOCAL
        assert [r.getMessage().split(":")[0] for r in caplog.records] == [
            "Cache master 'default' failed"
        ]

        restart()
        assert everywhere("doomed") == ["old"] * 3  # the master came back with its data
        # Node 2 writes a newer value; its first write after RETRY_INTERVAL replays its own
        # journal first, automatically.
        time.sleep(RETRY)
        node2.set("contested", "newer")
        assert len(node2.journal) == 0
        out = StringIO()
        call_command("replay_cache_journal", stdout=out)
        assert out.getvalue().splitlines() == [
            "node1: 3 replayed, 0 left (cache 'local1')",
            "node2: 0 replayed, 0 left (cache 'local2')",
            f"plain: 1 replayed, 0 left (file {str(tmp_path / 'journal')!r})",
        ]
    assert everywhere("doomed") == ["<missing>"] * 3  # the delete held
    assert everywhere("counter") == ["<missing>"] * 3  # an unknowable count: a miss
    assert everywhere("kept") == ["old"] * 3
    # Never node 1's older "mine" over node 2's "newer": a miss is the safe answer.
    assert everywhere("contested") == ["<missing>"] * 3
    # REPLAY="set" restores a value only where the master holds none.
    restored = ["x"] * 3 if mode == "set" else ["<missing>"] * 3
    assert everywhere("new-on-node2") == restored
    restored = ["y"] * 3 if mode == "set" else ["<missing>"] * 3
    assert everywhere("added-on-node2") == restored


def test_the_command_replays_a_file_journal_from_another_process(
    topology: Any, nodes: None, tmp_path: Path
) -> None:
    plain = caches["plain"]
    plain.set("k", "old")
    replicated()
    with master_down(topology) as restart:
        assert plain.delete("k") is True
        restart()
    assert everywhere("k") == ["old"] * 3
    (tmp_path / "node_settings.py").write_text(
        f"from tests.settings import *  # noqa: F403\nCACHES = {django_settings.CACHES!r}\n"
    )
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "django",
            "replay_cache_journal",
            "plain",
            "--settings=node_settings",
        ],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{repo}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"plain: 1 replayed, 0 left (file {str(tmp_path / 'journal')!r})\n"
    assert everywhere("k") == ["<missing>"] * 3
    assert len(plain.journal) == 0


def test_replica_killed_its_node_reads_from_the_master(topology: Any, nodes: None) -> None:
    plain = caches["plain"]
    plain.set("k", "v")
    replicated()
    server = topology.redis_replicas[0]

    def hits(alias: str) -> int:
        return int(raw(alias).info("stats")["keyspace_hits"])

    server.kill()
    try:
        before = hits("default")
        assert plain.get("k") == "v"
        assert plain.get_many(["k"]) == {"k": "v"}
        assert plain.has_key("k")
        assert hits("default") == before + 3
    finally:
        server.start()
        links_up(topology)
    replicated()
    time.sleep(RETRY)  # the breaker lets the replica be tried again
    before = hits("replica1")
    assert plain.get("k") == "v"
    assert hits("replica1") == before + 1


def test_master_and_replica_down_reads_miss_and_writes_journal(
    topology: Any, killed_master: Callable[[], None]
) -> None:
    plain = caches["plain"]
    server = topology.redis_replicas[0]
    server.kill()
    try:
        assert plain.get("k", "default") == "default"
        assert plain.get_many(["k"]) == {}
        assert plain.has_key("k") is False
        assert plain.ttl("k") == 0
        assert plain.add("k", "v") is True
        assert plain.touch("k") is False
        plain.clear()
        assert len(plain.journal) == 3
    finally:
        server.start()


def test_a_journal_file_others_can_write_is_refused(
    killed_master: Callable[[], None], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "journal"
    journal.write_bytes(b"")
    journal.chmod(0o666)
    caches["plain"].delete("k")  # no exception reaches the caller...
    assert "Cache write delete of 'k' lost" in caplog.text  # ...and the loss is loud
    assert journal.read_bytes() == b""
    journal.chmod(0o600)
    caches["plain"].delete("k")
    assert len(caches["plain"].journal) == 1


# -- counters through the topology ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_save_on_node1_is_counted_on_node2(settings: Any, nodes: None) -> None:
    settings.DISTINCT_COUNTER = {
        **settings.DISTINCT_COUNTER,
        "CACHE": "node1",
        "WRITE_CACHE": "default",
    }

    def port(client: redis.Redis) -> int:
        return int(client.connection_pool.connection_kwargs["port"])

    # A MasterReplicaCache's raw clients: its REPLICA's for reads, its MASTER's for writes.
    assert port(get_client("node1", write=False)) == port(raw("replica1"))
    assert port(get_client("node2", write=False)) == port(raw("replica2"))
    assert port(get_client("node2", write=True)) == port(raw("default"))
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    Message.objects.create(username="ann", city="Paris")
    Message.objects.create(username="bob", city="Lyon")
    replicated()
    settings.DISTINCT_COUNTER = {**settings.DISTINCT_COUNTER, "CACHE": "node2"}
    assert DistinctCount.read("city", Message) == CountResult(
        distinct_in_db(Message, "city"), "redis", "ok"
    )
    assert DistinctCount.get("city", Message) == 2


@pytest.mark.django_db(transaction=True)
def test_master_killed_a_save_commits_and_the_counter_is_stale(
    settings: Any, nodes: None, topology: Any
) -> None:
    settings.DISTINCT_COUNTER = {
        **settings.DISTINCT_COUNTER,
        "CACHE": "node1",
        "WRITE_CACHE": "default",
    }
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    replicated()
    with master_down(topology):
        Message.objects.create(username="ann", city="Paris")
        assert Message.objects.filter(username="ann").exists()
        assert DistinctCount.read("city", Message) == CountResult(
            distinct_in_db(Message, "city"), "database", "stale"
        )


# -- commands -------------------------------------------------------------------------------------


def test_cache_status(nodes: None) -> None:
    caches["node1"].set("k", "v")
    replicated()
    before = raw("default").info("replication")["master_repl_offset"]
    status = cache_status.cache_status("node1")
    master, replica = status["master"], status["replica"]
    # The master's offset only grows (its pings to the replicas count too).
    assert master["up"] and master["role"] == "master" and master["offset"] >= before
    ports = sorted(int(r["address"].split(":")[1]) for r in master["replicas"])
    assert ports == sorted(
        raw(a).connection_pool.connection_kwargs["port"] for a in ("replica1", "replica2")
    )
    for fed in master["replicas"]:
        assert fed["state"] == "online" and fed["lag"] == master["offset"] - fed["offset"]
    assert (replica["alias"], replica["up"], replica["link"]) == ("replica1", True, "up")
    assert before <= replica["offset"] <= master["offset"]
    assert replica["lag"] == master["offset"] - replica["offset"]
    assert status["journal"] == {"entries": 0, "location": "cache 'local1'"}
    out = StringIO()
    call_command("cache_status", "node1", "node2", "--json", stdout=out)
    assert [s["replica"]["alias"] for s in json.loads(out.getvalue())] == ["replica1", "replica2"]
    out = StringIO()
    call_command("cache_status", "node1", stdout=out)
    lines = out.getvalue().splitlines()
    master_at = re.escape(django_settings.CACHES["default"]["LOCATION"])
    replica_at = re.escape(django_settings.CACHES["replica1"]["LOCATION"])
    assert len(lines) == 6 and lines[0] == "node1:"
    assert re.fullmatch(rf"  master default \({master_at}\): up, offset \d+, 2 replicas", lines[1])
    for line in lines[2:4]:
        assert re.fullmatch(
            r"    replica 127\.0\.0\.1:\d+: online, offset \d+, lag \d+ bytes", line
        )
    assert re.fullmatch(
        rf"  node replica replica1 \({replica_at}\): up, link up, "
        r"offset \d+, lag \d+ bytes",
        lines[4],
    )
    assert lines[5] == "  journal: 0 writes waiting (cache 'local1')"


def test_cache_status_with_the_master_down(nodes: None, killed_master: Callable[[], None]) -> None:
    caches["node1"].delete("k")
    status = cache_status.cache_status("node1")
    assert status["master"]["up"] is False and "Connection" in status["master"]["error"]
    assert status["replica"]["link"] == "down"
    assert status["journal"]["entries"] == 1
    out = StringIO()
    call_command("cache_status", "node1", stdout=out)
    assert "DOWN" in out.getvalue().splitlines()[1]
    with pytest.raises(CommandError, match="1 journaled writes are left"):
        call_command("replay_cache_journal", "node1", stdout=StringIO())


@pytest.mark.parametrize("command", ["cache_status", "replay_cache_journal"])
def test_commands_refuse_an_alias_that_is_not_a_master_replica_cache(
    nodes: None, command: str
) -> None:
    with pytest.raises(CommandError, match="'replica1' is not a .*those are: node1, node2"):
        call_command(command, "replica1")


# -- checks ---------------------------------------------------------------------------------------


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def with_node(settings: Any, tmp_path: Path, **options: Any) -> list[Any]:
    caches_setting = node_caches(tmp_path / "journal")
    caches_setting["node1"]["OPTIONS"] = {**caches_setting["node1"]["OPTIONS"], **options}
    caches_setting["node1"]["OPTIONS"] = {
        k: v for k, v in caches_setting["node1"]["OPTIONS"].items() if v is not None
    }
    settings.CACHES = caches_setting
    return check_master_replica_cache("node1")


def test_the_nodes_pass_the_checks(settings: Any, tmp_path: Path) -> None:
    settings.CACHES = node_caches(tmp_path / "journal")
    assert [check_master_replica_cache(a) for a in ("node1", "node2", "plain")] == [[], [], []]
    settings.DISTINCT_COUNTER = {"CACHE": "node1", "WRITE_CACHE": "default"}
    assert check_settings() == []


@pytest.mark.parametrize(
    "options,error_id,text",
    [
        ({"MASTER": None}, "E020", "['MASTER'] is None"),
        ({"REPLICA": "nowhere"}, "E021", "names the cache 'nowhere'"),
        ({"LOCAL": "nowhere"}, "E021", "names the cache 'nowhere'"),
        ({"REPLICA": "locmem"}, "E022", "'locmem', which is not a django-redis cache"),
        ({"MASTER": "node2"}, "E022", "'node2', which is not a django-redis cache"),
        ({"LOCAL": "replica1"}, "E023", "not a node-local cache"),
        ({"LOCAL": "node2"}, "E023", "not a node-local cache"),
        ({"REPLAY": "merge"}, "E024", "'merge'"),
        ({"LOCAL_TTL": 0}, "E025", "LOCAL_TTL"),
        ({"RETRY_INTERVAL": "5"}, "E025", "RETRY_INTERVAL"),
        ({"LOCAL_TIMEOUT": 5}, "E027", "unknown keys: LOCAL_TIMEOUT"),
        ({"JOURNAL_FILE": "/nonexistent-dir/journal"}, "E029", "does not exist"),
    ],
)
def test_check_ids(
    settings: Any, tmp_path: Path, options: dict[str, Any], error_id: str, text: str
) -> None:
    [error] = with_node(settings, tmp_path, **options)
    assert error.id == f"distinct_counter.{error_id}"
    assert text in error.msg and error.hint


def test_e026_master_and_replica_name_keys_differently(settings: Any, tmp_path: Path) -> None:
    caches_setting = node_caches(tmp_path / "journal")
    caches_setting["replica1"] = {**caches_setting["replica1"], "KEY_PREFIX": "other"}
    settings.CACHES = caches_setting
    [error] = check_master_replica_cache("node1")
    assert error.id == "distinct_counter.E026" and "KEY_PREFIX" in error.msg


def test_e028_ignore_exceptions_hides_failures(settings: Any, tmp_path: Path) -> None:
    caches_setting = node_caches(tmp_path / "journal")
    replica = caches_setting["replica1"]
    caches_setting["replica1"] = {
        **replica,
        "OPTIONS": {**replica["OPTIONS"], "IGNORE_EXCEPTIONS": True},
    }
    settings.CACHES = caches_setting
    [error] = check_master_replica_cache("node1")
    assert error.id == "distinct_counter.E028" and "REPLICA" in error.msg


@pytest.mark.parametrize(
    "options,error_id",
    [
        ({"MASTER": None}, "E020"),
        ({"LOCAL_TTL": "soon"}, "E025"),
        ({"REPLAY": "merge"}, "E024"),
    ],
)
def test_manage_py_check_reports_rather_than_crashes(
    settings: Any, tmp_path: Path, options: dict[str, Any], error_id: str
) -> None:
    with_node(settings, tmp_path, **options)
    with pytest.raises(SystemCheckError, match=f"distinct_counter.{error_id}"):
        call_command("check", stdout=StringIO(), stderr=StringIO())
