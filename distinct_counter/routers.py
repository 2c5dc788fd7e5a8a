"""A primary/replica database router that keeps each request's and task's reads consistent.

``DATABASE_ROUTERS = ["distinct_counter.routers.PrimaryReplicaRouter"]`` with
``DISTINCT_COUNTER["REPLICAS"] = ["replica1", ...]`` sends writes and migrations to the primary
(``DISTINCT_COUNTER["PRIMARY"]``, ``"default"``) and reads to a replica picked at random among
those that are up and not lagging, except when a stale answer would surprise:

* after the current request or task wrote (it reads its own writes from the primary);
* while a transaction is open on the primary (it reads its own uncommitted rows);
* when the client is pinned by :class:`~distinct_counter.middleware.PinPrimaryMiddleware`
  (the request after a writing one, e.g. the redirect after a POST);
* inside :func:`use_primary` (and never inside :func:`use_replica`).

The state lives in ``ContextVar`` objects, so it follows a request through async views and
``sync_to_async`` and each thread has its own. Replica health is remembered per process: a
replica whose connection is refused is skipped for ``REPLICA_RETRY_SECONDS``; with
``MAX_REPLICA_LAG`` set, a PostgreSQL replica whose replay lag exceeds it is skipped, the lag
being measured at most every ``LAG_CHECK_SECONDS``. With no replica usable, reads go to the
primary: a replica never fails a read the primary could answer.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import random
import select
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

from django.core.signals import setting_changed
from django.db import Error as DatabaseError
from django.db import connections, models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.connection import ConnectionDoesNotExist

from distinct_counter.conf import conf

__all__ = [
    "PrimaryReplicaRouter",
    "Scope",
    "mark_written",
    "replica_states",
    "reset",
    "routing_scope",
    "use_primary",
    "use_replica",
    "wrote",
]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

PRIMARY, REPLICA = "primary", "replica"

#: The app whose models (``CounterState``) are bookkeeping read back from the write alias
#: explicitly: writing them does not pin the request that happens to trigger it.
_OWN_APP = "distinct_counter"


@dataclass
class Scope:
    """One request or task: whether it wrote, and whether its client arrived pinned."""

    wrote: bool = False
    pinned: bool = False


# A mutable Scope rather than a bool: a write made in a copied context (an asyncio task the
# view spawned, a sync_to_async thread) must still pin the request it belongs to.
_scope: ContextVar[Scope | None] = ContextVar("distinct_counter_routing_scope", default=None)
_mode: ContextVar[str | None] = ContextVar("distinct_counter_routing_mode", default=None)


class _ContextSetting(Generic[T]):
    """Set a ContextVar for a ``with`` block or a decorated (sync or async) function, and
    put the previous value back after, so blocks nest."""

    def __init__(self, var: ContextVar[T], make: Callable[[], T]) -> None:
        self._var = var
        self._make = make
        self._tokens: list[Token[T]] = []

    def __enter__(self) -> T:
        value = self._make()
        self._tokens.append(self._var.set(value))
        return value

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._var.reset(self._tokens.pop())

    def __call__(self, func: F) -> F:
        # A fresh instance per call: one decorated function may run in many threads at once.
        var, make = self._var, self._make
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with _ContextSetting(var, make):
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with _ContextSetting(var, make):
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]


def use_primary() -> _ContextSetting[str | None]:
    """Read from the primary inside this block or decorated function (sync or async).

    Nestable: leaving the block restores whatever routing was in force before it.
    """
    return _ContextSetting(_mode, lambda: PRIMARY)


def use_replica() -> _ContextSetting[str | None]:
    """Read from a replica inside this block, even after a write or in a transaction.

    For reads that may be stale by design (reports, exports). Falls back to the primary
    when no replica is usable. Nestable like :func:`use_primary`.
    """
    return _ContextSetting(_mode, lambda: REPLICA)


def routing_scope(*, pinned: bool = False) -> _ContextSetting[Scope | None]:
    """A unit of work (a request, a task) whose writes pin its later reads to the primary.

    The middleware opens one per request. Wrap each background task in one
    (``@routing_scope()``): otherwise a worker's first write pins every later read of its
    thread to the primary. ``pinned=True`` starts pinned (the client wrote recently). The
    block yields the :class:`Scope`, whose ``wrote`` says whether it wrote.
    """
    return _ContextSetting(_scope, lambda: Scope(pinned=pinned))


def mark_written() -> None:
    """Record that the current request or task wrote: its next reads go to the primary.

    The router calls it from ``db_for_write``; call it after writes the router does not see
    (raw SQL on ``connections[...]``).
    """
    scope = _scope.get()
    if scope is None:  # Outside any scope: the write pins the rest of this context.
        scope = Scope()
        _scope.set(scope)
    scope.wrote = True


def wrote() -> bool:
    """Whether the current request or task wrote."""
    scope = _scope.get()
    return scope is not None and scope.wrote


# ---------------------------------------------------------------------------------------------
# Replica health


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
    for alias in _replicas():
        health = _state(alias)
        result[alias] = {"down": now < health.down_until, "lag": health.lag,
                         "lagging": health.lagging and conf.MAX_REPLICA_LAG is not None}
    return result


def _replicas() -> list[str]:
    replicas = conf.REPLICAS or []
    if not isinstance(replicas, (list, tuple)):  # Check E010; still route, to the primary.
        return []
    return [a for a in replicas if isinstance(a, str) and a and a != conf.PRIMARY]


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
        if max_lag is not None and now >= health.lag_checked + float(conf.LAG_CHECK_SECONDS):
            health.lag_checked = now
            health.lag = _replay_lag(conn)
            lagging = health.lag is not None and health.lag > float(max_lag)
            if lagging and not health.lagging:
                logger.warning("database replica %r is %.1fs behind (MAX_REPLICA_LAG %ss): "
                               "skipped", alias, health.lag, max_lag)
            health.lagging = lagging
    except DatabaseError as exc:
        retry = float(conf.REPLICA_RETRY_SECONDS)
        health.down_until = time.monotonic() + retry
        logger.warning("database replica %r is down (%s); reads skip it for %ss",
                       alias, str(exc).strip().splitlines()[0] if str(exc) else repr(exc), retry)
        return False
    return max_lag is None or not health.lagging


def _healthy_replica() -> str | None:
    replicas = _replicas()
    random.shuffle(replicas)
    for alias in replicas:
        if _usable(alias):
            return alias
    return None


def _read_alias() -> str:
    primary = str(conf.PRIMARY)
    mode = _mode.get()
    if mode == PRIMARY:
        return primary
    if mode is None:
        scope = _scope.get()
        if scope is not None and (scope.wrote or scope.pinned):
            return primary
        try:
            if connections[primary].in_atomic_block:
                return primary
        except ConnectionDoesNotExist:
            pass
    return _healthy_replica() or primary


class PrimaryReplicaRouter:
    """Writes and migrations to the primary; reads to a usable replica, or to the primary
    when the current context needs fresh data (see the module's documentation).

    ``route_app_labels``: the apps whose models this router places; ``None`` (the default)
    means every app. For models of other apps it has no opinion (``None``), so the next
    router, or ``"default"``, decides. Subclass to restrict it::

        class MyRouter(PrimaryReplicaRouter):
            route_app_labels = frozenset({"shop", "blog"})
    """

    route_app_labels: frozenset[str] | None = None

    def _routes(self, model: type[models.Model]) -> bool:
        labels = self.route_app_labels
        return labels is None or model._meta.app_label in labels

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None:
        if not self._routes(model):
            return None
        return _read_alias()

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str | None:
        if not self._routes(model):
            return None
        if model._meta.app_label != _OWN_APP:
            mark_written()
        return str(conf.PRIMARY)

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool | None:
        """True between objects of the pool (the primary and its replicas hold the same
        rows); no opinion otherwise."""
        pool = {conf.PRIMARY, *_replicas()}
        if obj1._state.db in pool and obj2._state.db in pool:
            return True
        return None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None,
                      **hints: Any) -> bool | None:
        """Never on a replica (it is read-only and receives the primary's schema through
        replication); no opinion elsewhere."""
        if db in _replicas():
            return False
        return None


def _setting_changed(setting: str, **kwargs: Any) -> None:
    if setting in ("DISTINCT_COUNTER", "DATABASES"):
        reset()


setting_changed.connect(_setting_changed, dispatch_uid="distinct_counter.routers")

