"""The real servers the tests run against, started once per test session.

Environment variables may name external servers instead (then nothing is started, and tests
that stop or kill servers are skipped):

``DISTINCT_COUNTER_TEST_PG`` / ``DISTINCT_COUNTER_TEST_PG_REPLICA``
    ``postgresql://user@host:port/dbname`` of a primary and of its streaming replica.
``DISTINCT_COUNTER_TEST_REDIS`` / ``DISTINCT_COUNTER_TEST_REDIS_REPLICAS``
    ``redis://host:port/db`` of a master, and a comma-separated list of its replicas.

Servers this process starts are exported through the same variables, so the subprocesses of
the multi-process tests connect to them rather than start their own.
"""

from __future__ import annotations

import atexit
import os
from urllib.parse import urlparse

from distinct_counter.testing.servers import Topology

__all__ = ["Topology"]

PG, PG_REPLICA = "DISTINCT_COUNTER_TEST_PG", "DISTINCT_COUNTER_TEST_PG_REPLICA"
REDIS, REDIS_REPLICAS = "DISTINCT_COUNTER_TEST_REDIS", "DISTINCT_COUNTER_TEST_REDIS_REPLICAS"
OWNER = "DISTINCT_COUNTER_TEST_OWNER"

topology: Topology | None = None


def ensure_started() -> None:
    """Start the servers unless the environment names them already."""
    global topology
    if all(os.environ.get(v) for v in (PG, PG_REPLICA, REDIS, REDIS_REPLICAS)):
        return
    topology = Topology.start(dbname="distinct_counter")
    os.environ[PG] = topology.pg_primary.url("distinct_counter")
    os.environ[PG_REPLICA] = topology.pg_replica.url("distinct_counter")
    os.environ[REDIS] = topology.redis_master.url()
    os.environ[REDIS_REPLICAS] = ",".join(r.url() for r in topology.redis_replicas)
    os.environ[OWNER] = str(os.getpid())
    atexit.register(stop)


def stop() -> None:
    if topology is not None and os.environ.get(OWNER) == str(os.getpid()):
        topology.stop()


def owned() -> Topology | None:
    """The topology when this session started it (tests may stop and restart its servers)."""
    return topology


def database(url: str, **extra: object) -> dict[str, object]:
    parts = urlparse(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": parts.username or "postgres",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname,
        "PORT": parts.port,
        **extra,
    }


def redis_cache(url: str) -> dict[str, object]:
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": url,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
    }
