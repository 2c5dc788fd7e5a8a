"""Which replicas reads may go to: each replica's health as this process last saw it.

A replica whose connection is refused is skipped for ``REPLICA_RETRY_SECONDS``; with
``MAX_REPLICA_LAG`` set, a PostgreSQL replica whose replay lag exceeds it is skipped, the lag
being measured at most every ``LAG_CHECK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import select
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.db import Error as DatabaseError
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.connection import ConnectionDoesNotExist

from distinct_counter.routing.conf import conf

logger = logging.getLogger("distinct_counter.routing")


@dataclass
class _Health:
    down_until: float = 0.0  # time.monotonic() before which the replica is not retried
    lag_checked: float = -math.inf
    lag: float | None = None  # seconds behind, at the last check
    lagging: bool = False


_health: dict[str, _Health] = {}
_health_lock = threading.Lock()


def _state(alias: str) -> _Health:
    with _health_lock:
        return _health.setdefault(alias, _Health())


def reset() -> None:
    """Forget every replica's health (it is measured again on the next read)."""
    with _health_lock:
        _health.clear()


def replica_states() -> dict[str, dict[str, Any]]:
    """Each configured replica's health as this process last saw it.

    ``{"replica1": {"down": False, "lag": 0.02, "lagging": False}, ...}``; ``lag`` is None
    until measured (and for databases other than PostgreSQL).
    """
    now = time.monotonic()
    result = {}
    for alias in conf.replicas():
        health = _state(alias)
        result[alias] = {
            "down": now < health.down_until,
            "lag": health.lag,
            "lagging": health.lagging and conf.MAX_REPLICA_LAG is not None,
        }
    return result


def _may_block() -> bool:
    """False in an event loop's thread, where opening a connection or querying would block
    every other request (and Django forbids it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


def _peer_hung_up(raw: Any) -> bool:
    """Whether an idle connection's socket has something to read: the server's goodbye
    (a restarted or stopped replica) or, rarely, a notice. A ``select()`` costs no query."""
    try:
        fd = raw.fileno()
        readable, _, _ = select.select([fd], [], [], 0)
    except Exception:  # Closed, or a driver without a socket: let is_usable() decide.
        return True
    return bool(readable)


def _connect(conn: BaseDatabaseWrapper) -> None:
    """Make sure ``conn`` holds a live connection; raise DatabaseError if it cannot."""
    if conn.connection is not None and _peer_hung_up(conn.connection) and not conn.is_usable():
        try:
            conn.close()
        except DatabaseError:
            conn.connection = None
    conn.ensure_connection()


# Caught up with all it received: no lag, however old its last replayed transaction is (an
# idle primary sends nothing new). Otherwise: the age of the last transaction it replayed.
_LAG_SQL = """
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN 0
    WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
    ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)
END
"""


def _replay_lag(conn: BaseDatabaseWrapper) -> float | None:
    if conn.vendor != "postgresql":
        return None
    with conn.cursor() as cur:
        cur.execute(_LAG_SQL)
        return float(cur.fetchone()[0])


def _usable(alias: str) -> bool:
    """Whether reads may go to the replica ``alias`` now; costs no query on most reads."""
    health = _state(alias)
    now = time.monotonic()
    if now < health.down_until:
        return False
    max_lag = conf.MAX_REPLICA_LAG
    try:
        conn = connections[alias]
    except ConnectionDoesNotExist:  # check E006
        return False
    if not _may_block() or conn.in_atomic_block:
        # No I/O here (event loop), or a transaction of the caller's own on the replica:
        # go by what was last seen.
        return max_lag is None or not health.lagging
    try:
        _connect(conn)
        if max_lag is not None and now >= health.lag_checked + conf.LAG_CHECK_SECONDS:
            health.lag_checked = now
            health.lag = _replay_lag(conn)
            lagging = health.lag is not None and health.lag > max_lag
            if lagging and not health.lagging:
                logger.warning(
                    "database replica %r is %.1fs behind (MAX_REPLICA_LAG %ss): skipped",
                    alias,
                    health.lag,
                    max_lag,
                )
            health.lagging = lagging
    except DatabaseError as exc:
        retry = conf.REPLICA_RETRY_SECONDS
        health.down_until = time.monotonic() + retry
        logger.warning(
            "database replica %r is down (%s); reads skip it for %ss",
            alias,
            str(exc).strip().splitlines()[0] if str(exc) else repr(exc),
            retry,
        )
        return False
    return max_lag is None or not health.lagging


def healthy_replica() -> str | None:
    replicas = conf.replicas()
    random.shuffle(replicas)
    for alias in replicas:
        if _usable(alias):
            return alias
    return None
