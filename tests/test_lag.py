"""The lagging replica of ``distinct_counter.testing.lag``: a write on the master reaches the
replica no sooner than the proxy's delay, and soon after it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from distinct_counter.testing.lag import LagProxy, lagging_replica
from distinct_counter.testing.servers import RedisServer

DELAY = 0.05


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, LagProxy]]:
    master = RedisServer(tmp_path / "master").start()
    try:
        replica, proxy = lagging_replica(tmp_path, master, delay=DELAY)
    except BaseException:
        master.stop()
        raise
    yield master, replica, proxy
    replica.stop()
    proxy.stop()
    master.stop()


def seen_after(master: redis.Redis, replica: redis.Redis, key: str) -> float:
    """Seconds from sending a write to the master until the replica answers it."""
    start = time.monotonic()
    master.set(key, "v")
    while replica.get(key) != b"v":
        if time.monotonic() - start > 10:
            raise AssertionError(f"{key} never reached the replica")
        time.sleep(0.001)
    return time.monotonic() - start


def test_a_write_reaches_the_lagging_replica_after_the_delay(
    servers: tuple[RedisServer, RedisServer, LagProxy],
) -> None:
    master, replica, proxy = servers
    m = redis.Redis(port=master.port, socket_timeout=5)
    r = redis.Redis(port=replica.port, socket_timeout=5)
    try:
        lags = [seen_after(m, r, f"key{i}") for i in range(5)]
        # Written back to back: the lag stays fixed, it does not add up.
        m.set("burst", 0)
        for _ in range(200):
            m.incr("burst")
        lags.append(seen_after(m, r, "after-burst"))
        assert r.get("burst") == b"200"
        # The master counts its replica's acknowledgements: they come through the proxy too.
        start = time.monotonic()
        m.set("acked", 1)
        assert m.wait(1, 5000) == 1
        assert time.monotonic() - start >= 2 * DELAY
    finally:
        m.close()
        r.close()
    assert min(lags) >= DELAY, lags
    assert max(lags) < DELAY + 1.0, lags
    assert proxy.is_running()


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_the_proxy_stops_with_its_connections(
    servers: tuple[RedisServer, RedisServer, LagProxy], how: str
) -> None:
    master, replica, proxy = servers
    getattr(proxy, how)()
    assert not proxy.is_running()
    r = redis.Redis(port=replica.port, socket_timeout=5)
    try:
        deadline = time.monotonic() + 10
        while r.info("replication")["master_link_status"] == "up":
            assert time.monotonic() < deadline, "the replica still follows a stopped proxy"
            time.sleep(0.05)
    finally:
        r.close()
