"""The master/replica client on the session's real Redis master and its two real replicas.

Two "nodes" live in this one process: ``node1`` reads from ``replica1`` and ``node2`` from
``replica2``; both write to the master. ``default``, ``replica1`` and ``replica2`` are plain
django-redis caches of each server, to read what each one holds. Servers are really killed,
detached and restarted. django-redis's and Django's own suites run in test_upstream.py.
"""

from __future__ import annotations

import contextlib
import json
import os
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
from django_redis import get_redis_connection

from distinct_counter import DistinctCount
from distinct_counter import connection as redis_connection
from distinct_counter.api import CountResult
from distinct_counter.cache import client as cache_client
from distinct_counter.cache import status as cache_status
from distinct_counter.cache.checks import check_master_replica_caches
from distinct_counter.cache.node import MasterDown
from distinct_counter.checks import check_settings
from distinct_counter.connection import get_client
from tests.conftest import distinct_in_db, wait_until
from tests.testapp.models import Message

CLIENT = "distinct_counter.cache.client.MasterReplicaClient"
OLD = "distinct_counter.cache.backend.MasterReplicaCache"
SERVERS = ("default", "replica1", "replica2")
WINDOW = 0.5
RETRY = 0.3


def url(alias: str) -> str:
    return str(django_settings.CACHES[alias]["LOCATION"])


def node_caches(tmp_path: Path, **options: Any) -> dict[str, Any]:
    base = {alias: django_settings.CACHES[alias] for alias in (*SERVERS, "locmem")}
    common = {
        "CLIENT_CLASS": CLIENT,
        "READ_YOUR_WRITES": WINDOW,
        "RETRY_INTERVAL": RETRY,
        "SOCKET_CONNECT_TIMEOUT": 0.5,
        "SOCKET_TIMEOUT": 0.5,
        **options,
    }
    return {
        **base,
        **{
            f"node{i}": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": [url("default"), url(f"replica{i}")],
                "OPTIONS": {**common, "JOURNAL_FILE": str(tmp_path / f"journal{i}")},
            }
            for i in (1, 2)
        },
    }


def use_nodes(settings: Any, tmp_path: Path, **options: Any) -> None:
    settings.CACHES = node_caches(tmp_path, **options)
    cache_client.reset()
    redis_connection.reset()


@pytest.fixture
def nodes(settings: Any, tmp_path: Path) -> Iterator[None]:
    """The two nodes added to CACHES for this test only."""
    use_nodes(settings, tmp_path)
    yield
    cache_client.reset()
    redis_connection.reset()


def raw(alias: str) -> redis.Redis:
    return redis.Redis.from_url(url(alias), socket_timeout=2)


def replicated(timeout: float = 10.0) -> None:
    """Wait until both replicas have applied everything the master has (offsets, not
    ``WAIT``: ``WAIT`` only counts the writes of its own connection)."""
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


@contextlib.contextmanager
def detached(alias: str) -> Iterator[redis.Redis]:
    """A replica cut off from the master (``REPLICAOF NO ONE``): it lags forever, and takes
    writes of its own. Re-attached (and resynced) afterwards."""
    server = raw(alias)
    master = raw("default").connection_pool.connection_kwargs
    server.execute_command("REPLICAOF", "NO", "ONE")
    try:
        yield server
    finally:
        server.execute_command("REPLICAOF", master["host"], master["port"])
        wait_until(lambda: server.info("replication")["master_link_status"] == "up", 30)


# -- every node reads every write at once ---------------------------------------------------------


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda c: c.delete("k"), None),
        (lambda c: c.set("k", "theirs"), "theirs"),
        (lambda c: c.touch("k", 0.001), None),
        (lambda c: c.clear(), None),
        (lambda c: c.delete_many(["k"]), None),
        (lambda c: c.delete_pattern("k*"), None),
        (lambda c: c.expire("k", 0), None),
    ],
    ids=["delete", "set", "touch", "clear", "delete_many", "delete_pattern", "expire"],
)
def test_what_node2_does_to_a_key_node1_wrote_node1_reads_at_once(
    nodes: None, change: Callable[[Any], Any], expected: Any
) -> None:
    """The seed's bug: node 1 answered its own old value for 5 s from process memory."""
    node1, node2 = caches["node1"], caches["node2"]
    node1.set("k", "mine")
    replicated()
    change(node2)
    time.sleep(0.01)  # touch's deadline
    assert node1.get("k") == expected
    assert everywhere("k") == [expected if expected is not None else "<missing>"] * 3


def test_an_incr_past_2_53_reads_back_exactly(nodes: None) -> None:
    """What Redis holds, not a rounded copy (django-redis's incr runs a Lua script, whose
    numbers are doubles: its reply is rounded past 2**53 on plain django-redis too)."""
    node1, node2 = caches["node1"], caches["node2"]
    node1.set("n", 2**53)
    node1.incr("n")
    node2.incr("n", 2)
    assert node1.get("n") == 2**53 + 3
    assert int(raw("default").get(node1.make_key("n"))) == 2**53 + 3
    replicated()
    assert node2.get("n") == 2**53 + 3


def test_a_node_reads_its_own_writes_from_the_master_and_the_rest_from_its_replica(
    nodes: None,
) -> None:
    node1 = caches["node1"]
    with detached("replica1") as replica:
        replica.set(node1.make_key("only-on-replica"), node1.client.encode("replica's"))
        node1.set("mine", "fresh")
        assert node1.get("mine") == "fresh"  # the replica has not got it: the master's
        assert node1.get_many(["mine"]) == {"mine": "fresh"}
        assert node1.has_key("mine") and "mine" in node1
        assert 0 < node1.ttl("mine") <= 300
        assert node1.get("only-on-replica") == "replica's"
        assert caches["replica1"].get("mine") is None
        time.sleep(WINDOW + 0.05)  # past the window, the replica answers again
        assert node1.get("mine") is None


def test_no_answer_comes_from_process_memory(nodes: None) -> None:
    """A value changed behind the node's back (here: on the master directly) is what the
    node reads: it holds no copy, only the key's name and deadline."""
    node1 = caches["node1"]
    node1.set("k", "mine")
    raw("default").set(node1.make_key("k"), node1.client.encode("changed"))
    assert node1.get("k") == "changed"
    state = cache_client._nodes
    assert all(
        not any(b"mine" in repr(v).encode() for v in vars(n).values()) for n in state.values()
    )


def test_a_clear_sends_every_read_to_the_master_for_the_window(nodes: None) -> None:
    node1 = caches["node1"]
    with detached("replica1") as replica:
        replica.set(node1.make_key("old"), node1.client.encode("x"))
        node1.clear()
        assert node1.get("old") is None
        assert node1.keys("*") == []
        node1.set("after", "z")
        assert node1.get("after") == "z"


def test_the_django_redis_api_through_the_node(nodes: None) -> None:
    node1, node2 = caches["node1"], caches["node2"]
    assert node1.set("a", 1, nx=True) is True and node1.set("a", 2, nx=True) is False
    assert node1.ttl("a") == 300 and node1.persist("a") and node1.ttl("a") is None
    assert node1.expire("a", 100) and 0 < node1.pttl("a") <= 100_000
    node1.set_many({"p1": 1, "p2": 2})
    assert sorted(node1.keys("p*")) == ["p1", "p2"]
    assert sorted(node1.iter_keys("p*")) == ["p1", "p2"]
    assert node2.delete_pattern("p*") == 2
    assert node1.keys("p*") == []
    with node1.lock("lock", timeout=5):
        assert not node2.lock("lock", timeout=5).acquire(blocking=False)
    assert node2.lock("lock", timeout=5).acquire(blocking=False)
    node1.hset("h", "f", "v")
    assert node1.hexists("h", "f") and node1.hkeys("h") == ["f"] and node1.hlen("h") == 1
    assert node1.sadd("s", "x", "y") == 2 and node1.smembers("s") == {"x", "y"}
    assert node1.zadd("z", {"m": 1.0}) == 1 and node1.zscore("z", "m") == 1.0
    assert node1.get_or_set("g", 7) == 7 and node1.incr_version("g") == 2
    write = get_redis_connection("node1", write=True)
    read = get_redis_connection("node1", write=False)
    port = write.connection_pool.connection_kwargs["port"]
    assert port == raw("default").connection_pool.connection_kwargs["port"]
    port = read.connection_pool.connection_kwargs["port"]
    assert port == raw("replica1").connection_pool.connection_kwargs["port"]
    write.set("raw", b"1")
    assert read.get("raw") == b"1"  # written by this process: read from the master


# -- the master down ------------------------------------------------------------------------------


@contextlib.contextmanager
def master_down(topology: Any) -> Iterator[Callable[[], None]]:
    """The master killed after a snapshot of its data (``SAVE``). Yields ``restart()``, which
    starts it again with that data, as a master with persistence would come back."""
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


@pytest.mark.parametrize("mode", ["delete", "set"])
def test_master_killed_and_restarted(
    settings: Any, tmp_path: Path, topology: Any, mode: str
) -> None:
    use_nodes(settings, tmp_path, REPLAY=mode)
    node1, node2 = caches["node1"], caches["node2"]
    node1.set_many({"kept": "old", "doomed": "old", "contested": "old", "n": 1, "t": "old"})
    node1.set_many({"p1": "old", "p2": "old"})
    replicated()
    with master_down(topology) as restart:
        assert node1.delete("doomed") is True
        assert node1.delete("never-there") is False
        assert node1.set("contested", "mine") is True
        assert node1.touch("t", 100) is True
        assert node1.delete_pattern("p*") == 2
        node2.set("new-on-node2", "x", 100)
        assert node1.add("added", "y") is False  # not stored, nothing journaled
        assert node1.get_or_set("added", "y") == "y"
        # Answers only the master has: raised, nothing journaled.
        for call in (
            lambda: node1.incr("n"),
            lambda: node1.set("added", "y", nx=True),
            lambda: node1.lock("l", timeout=1).acquire(blocking=False),
            lambda: node1.hset("h", "f", "v"),
        ):
            with pytest.raises(MasterDown):
                call()
        # Journaled keys read as missing on the node that journaled them, whatever asks.
        assert node1.get("contested") is None and node1.get("doomed") is None
        assert node1.get_many(["contested", "kept"]) == {"kept": "old"}
        assert not node1.has_key("t") and node1.ttl("t") == 0
        assert node1.keys("p*") == [] and sorted(node1.keys("*")) == ["kept", "n"]
        assert node2.get("contested") == "old"  # node 2's replica: the last copy
        assert len(node1.client.node.journal) == 6
        restart()
        assert everywhere("doomed") == ["old"] * 3  # the master came back with its data
        time.sleep(RETRY)
        node2.set("contested", "newer")  # node 2's first write replays its journal first
        assert len(node2.client.node.journal) == 0
        out = StringIO()
        call_command("replay_cache_journal", stdout=out)
        assert out.getvalue().splitlines() == [
            f"node1: 6 replayed, 0 left (file {str(tmp_path / 'journal1')!r})",
            f"node2: 0 replayed, 0 left (file {str(tmp_path / 'journal2')!r})",
        ]
    assert everywhere("doomed") == ["<missing>"] * 3  # the delete held
    assert everywhere("p1") == everywhere("p2") == ["<missing>"] * 3
    assert everywhere("kept") == ["old"] * 3 and everywhere("n") == [1] * 3
    assert everywhere("t") == ["<missing>"] * 3  # a touch's key: a miss is always right
    # Never node 1's older "mine" over node 2's "newer": a miss is the safe answer.
    assert everywhere("contested") == ["<missing>"] * 3
    # REPLAY="set" restores a value only where the master holds none.
    assert everywhere("new-on-node2") == (["x"] * 3 if mode == "set" else ["<missing>"] * 3)
    assert caches["node1"].get("doomed") is None and caches["node1"].get("kept") == "old"


def test_the_command_replays_a_journal_from_another_process(
    topology: Any, nodes: None, tmp_path: Path
) -> None:
    caches["node1"].set("k", "old")
    replicated()
    with master_down(topology) as restart:
        assert caches["node1"].delete("k") is True
        restart()
    assert everywhere("k") == ["old"] * 3
    (tmp_path / "node_settings.py").write_text(
        f"from tests.settings import *  # noqa: F403\nCACHES = {django_settings.CACHES!r}\n"
    )
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "django", "replay_cache_journal", "node1"]
        + ["--settings=node_settings"],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{repo}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    journal = str(tmp_path / "journal1")
    assert done.stdout == f"node1: 1 replayed, 0 left (file {journal!r})\n"
    assert everywhere("k") == ["<missing>"] * 3
    assert caches["node1"].get("k") is None  # the other process replayed: no longer masked


def test_a_journal_left_by_another_process_masks_its_keys(topology: Any, nodes: None) -> None:
    """The journal file, not process memory, says which keys read as missing: a process
    started after another journaled (or beside it) reads them as missing too."""
    caches["node1"].set_many({"k": "old", "other": "old"})
    replicated()
    with master_down(topology) as restart:
        caches["node1"].delete("k")
        cache_client.reset()  # a new process: nothing in memory but the file
        fresh = caches.create_connection("node1")
        assert fresh.get("k") is None and fresh.get("other") == "old"
        assert caches["replica1"].get("k") == "old"
        restart()
        time.sleep(RETRY)
        assert fresh.get("k") is None  # its first read replays the journal
        assert len(fresh.client.node.journal) == 0
    assert everywhere("k") == ["<missing>"] * 3


def test_replica_killed_its_node_reads_from_the_master(topology: Any, nodes: None) -> None:
    node1 = caches["node1"]
    raw("default").set(node1.make_key("k"), node1.client.encode("v"))
    replicated()
    server = topology.redis_replicas[0]

    def hits(alias: str) -> int:
        return int(raw(alias).info("stats")["keyspace_hits"])

    server.kill()
    try:
        before = hits("default")
        assert node1.get("k") == "v"
        assert node1.get_many(["k"]) == {"k": "v"}
        assert node1.has_key("k")
        assert hits("default") == before + 3
    finally:
        server.start()
        links_up(topology)
    replicated()
    time.sleep(RETRY)  # the breaker lets the replica be tried again
    before = hits("replica1")
    assert node1.get("k") == "v"
    assert hits("replica1") == before + 1


def test_master_and_replica_down(topology: Any, nodes: None) -> None:
    """Reads fail as on plain django-redis (``IGNORE_EXCEPTIONS`` makes them misses); deletes
    are still journaled: a delete is never lost."""
    node1 = caches["node1"]
    with master_down(topology):
        server = topology.redis_replicas[0]
        server.kill()
        try:
            with pytest.raises(redis.ConnectionError):
                node1.get("k")
            assert node1.delete("k") is True  # as if it existed: nobody can tell
            assert node1.set("k2", "v") is True
            assert len(node1.client.node.journal) == 2
        finally:
            server.start()


def test_a_journal_file_others_can_write_is_refused(
    topology: Any, nodes: None, tmp_path: Path
) -> None:
    journal = tmp_path / "journal1"
    journal.write_bytes(b"")
    journal.chmod(0o666)
    with master_down(topology):
        with pytest.raises(PermissionError, match="writable by another user"):
            caches["node1"].delete("k")
        journal.chmod(0o600)
        caches["node1"].delete("k")
        assert len(caches["node1"].client.node.journal) == 1


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

    # The counters' raw clients: the node's replica for reads, the master for writes.
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
    assert master["location"] == url("default")
    ports = sorted(int(r["address"].split(":")[1]) for r in master["replicas"])
    assert ports == sorted(
        raw(a).connection_pool.connection_kwargs["port"] for a in ("replica1", "replica2")
    )
    for fed in master["replicas"]:
        assert fed["state"] == "online" and fed["lag"] == master["offset"] - fed["offset"]
    assert (replica["location"], replica["up"], replica["link"]) == (url("replica1"), True, "up")
    assert before <= replica["offset"] <= master["offset"]
    assert replica["lag"] == master["offset"] - replica["offset"]
    journal = f"file {str(Path(caches['node1'].client.node.journal.path))!r}"
    assert status["journal"] == {"entries": 0, "location": journal}
    out = StringIO()
    call_command("cache_status", "node1", "node2", "--json", stdout=out)
    locations = [s["replica"]["location"] for s in json.loads(out.getvalue())]
    assert locations == [url("replica1"), url("replica2")]
    out = StringIO()
    call_command("cache_status", "node1", stdout=out)
    lines = out.getvalue().splitlines()
    master_at, replica_at = re.escape(url("default")), re.escape(url("replica1"))
    assert len(lines) == 6 and lines[0] == "node1:"
    assert re.fullmatch(rf"  master {master_at}: up, offset \d+, 2 replicas", lines[1])
    for line in lines[2:4]:
        assert re.fullmatch(
            r"    replica 127\.0\.0\.1:\d+: online, offset \d+, lag \d+ bytes", line
        )
    assert re.fullmatch(
        rf"  node replica {replica_at}: up, link up, offset \d+, lag \d+ bytes", lines[4]
    )
    assert lines[5] == f"  journal: 0 writes waiting ({journal})"


def test_cache_status_with_the_master_down(nodes: None, topology: Any) -> None:
    with master_down(topology):
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


def with_node(settings: Any, tmp_path: Path, **changes: Any) -> list[Any]:
    """The checks' errors with ``node1``'s entry changed (``OPTIONS`` keys, or ``LOCATION``
    and ``BACKEND``); a None value removes the key."""
    caches_setting = node_caches(tmp_path)
    entry = caches_setting["node1"]
    for key, value in changes.items():
        target = entry if key in ("LOCATION", "BACKEND") else entry["OPTIONS"]
        target[key] = value
        if value is None:
            del target[key]
    settings.CACHES = caches_setting
    return check_master_replica_caches()


def test_the_nodes_pass_the_checks(settings: Any, tmp_path: Path) -> None:
    settings.CACHES = node_caches(tmp_path)
    assert check_master_replica_caches() == []
    settings.DISTINCT_COUNTER = {"CACHE": "node1", "WRITE_CACHE": "default"}
    assert check_settings() == []


@pytest.mark.parametrize(
    "changes,error_id,text",
    [
        ({"LOCATION": "redis://127.0.0.1:1/0"}, "E020", "needs two URLs"),
        ({"SENTINELS": ["127.0.0.1:26379"]}, "E020", "not a (host, port) pair"),
        ({"BACKEND": "django.core.cache.backends.redis.RedisCache"}, "E021", "django-redis"),
        ({"LOCATION": ["redis://h:1/0", "redis://h:1/0"]}, "E022", "same server"),
        ({"BACKEND": OLD, "CLIENT_CLASS": None}, "E023", "removed"),
        ({"REPLAY": "merge"}, "E024", "'merge'"),
        ({"READ_YOUR_WRITES": 0}, "E025", "READ_YOUR_WRITES"),
        ({"RETRY_INTERVAL": "5"}, "E025", "RETRY_INTERVAL"),
        ({"JOURNAL_FILE": "/nonexistent-dir/journal"}, "E029", "does not exist"),
    ],
)
def test_check_ids(
    settings: Any, tmp_path: Path, changes: dict[str, Any], error_id: str, text: str
) -> None:
    [error] = with_node(settings, tmp_path, **changes)
    assert error.id == f"distinct_counter.{error_id}"
    assert text in error.msg and error.hint


@pytest.mark.parametrize("changes,error_id", [({"READ_YOUR_WRITES": "soon"}, "E025")])
def test_manage_py_check_reports_rather_than_crashes(
    settings: Any, tmp_path: Path, changes: dict[str, Any], error_id: str
) -> None:
    with_node(settings, tmp_path, **changes)
    with pytest.raises(SystemCheckError, match=f"distinct_counter.{error_id}"):
        call_command("check", stdout=StringIO(), stderr=StringIO())
