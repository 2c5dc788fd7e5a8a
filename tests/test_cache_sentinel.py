"""The master/replica client with a Sentinel-managed master: Sentinels (redis-server
``--sentinel``) promote a replica after the master is killed; the node follows the new
master, and the writes it journaled during the failover are replayed to it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.cache import caches

from distinct_counter import connection as redis_connection
from distinct_counter.cache import client as cache_client
from distinct_counter.testing.sentinel import SentinelGroup
from distinct_counter.testing.servers import RedisServer
from tests.conftest import wait_until

SERVICE = "mymaster"
RETRY = 0.2


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    started = SentinelGroup.start(tmp_path / "group", service=SERVICE)
    yield started
    started.stop()


@pytest.fixture
def node(settings: Any, tmp_path: Path, group: SentinelGroup) -> Iterator[Any]:
    """A node whose replica is the group's first replica and whose master is the service."""
    settings.CACHES = {
        **settings.CACHES,
        "node": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": [f"redis://{SERVICE}/0", f"redis://127.0.0.1:{group.replicas[0].port}/0"],
            "OPTIONS": {
                "CLIENT_CLASS": "distinct_counter.cache.client.MasterReplicaClient",
                "SENTINELS": group.addresses,
                "SENTINEL_KWARGS": {"socket_timeout": 1, "socket_connect_timeout": 1},
                "SOCKET_TIMEOUT": 0.5,
                "SOCKET_CONNECT_TIMEOUT": 0.5,
                "RETRY_INTERVAL": RETRY,
                "JOURNAL_FILE": str(tmp_path / "journal"),
            },
        },
    }
    cache_client.reset()
    yield caches["node"]
    cache_client.reset()
    redis_connection.reset()


def held(server: RedisServer, cache: Any, key: str) -> Any:
    """``key`` as ``server`` holds it (read from that server directly)."""
    raw = redis.Redis(port=server.port, socket_timeout=2).get(cache.make_key(key))
    return None if raw is None else cache.client.decode(raw)


def test_the_node_follows_a_failover_and_replays_its_journal_to_the_new_master(
    group: SentinelGroup, node: Any
) -> None:
    node.set_many({"doomed": "old", "contested": "old", "kept": "old"})
    assert held(group.master, node, "kept") == "old"
    group.wait_synced(group.master)
    old = group.master
    old.kill()
    # The failover: writes journaled, reads from the node's replica, journaled keys missing.
    assert node.delete("doomed") is True
    assert node.set("contested", "mine") is True
    assert node.get("doomed") is None and node.get("contested") is None
    assert node.get("kept") == "old"
    assert len(node.client.node.journal) == 2
    start = time.monotonic()
    new = group.wait_for_failover(old)
    print(f"\npromoted {new.port} {time.monotonic() - start:.2f}s after the journaled writes")
    assert new is not old
    # The first write after the failover goes to the new master, after the journal.
    time.sleep(RETRY)
    wait_until(lambda: _set(node, "after", "x"), timeout=15)
    assert len(node.client.node.journal) == 0
    assert held(new, node, "doomed") is None  # the delete held
    assert held(new, node, "contested") is None  # a journaled set replays as a delete
    assert held(new, node, "kept") == "old" and held(new, node, "after") == "x"
    group.wait_synced(new)
    others = [r for r in group.replicas if r is not new]
    assert [held(r, node, "after") for r in others] == ["x"] * len(others)
    assert node.get("after") == "x" and node.get("doomed") is None


def _set(node: Any, key: str, value: Any) -> bool:
    """A write that reached the master (not the journal): the journal is empty after it."""
    node.set(key, value)
    return len(node.client.node.journal) == 0
