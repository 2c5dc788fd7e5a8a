"""Raw Redis access shared by the products: one client per cache alias, and circuit breakers.

The clients reuse the connection settings of a django-redis cache (``CACHES[alias]``) but
with the short timeouts of ``DISTINCT_COUNTER["SOCKET_TIMEOUT"]`` and
``["SOCKET_CONNECT_TIMEOUT"]`` unless the cache sets its own: a counter must never make a
request wait out redis-py's default 5 s timeouts.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from django.core.cache import caches
from redis.backoff import NoBackoff
from redis.retry import Retry

from distinct_counter.conf import Option, Settings, positive_number

logger = logging.getLogger("distinct_counter")

_SECONDS = "Use a positive number of seconds."


class RedisSettings(Settings):
    """The keys of ``DISTINCT_COUNTER`` that every Redis access of this app obeys."""

    #: Seconds a circuit breaker skips a failed Redis before trying it again.
    RETRY_INTERVAL = Option(5.0, positive_number, "distinct_counter.E008", _SECONDS)
    SOCKET_TIMEOUT = Option(0.5, positive_number, "distinct_counter.E008", _SECONDS)
    SOCKET_CONNECT_TIMEOUT = Option(0.5, positive_number, "distinct_counter.E008", _SECONDS)


redis_settings = RedisSettings()

#: The errors that mean "Redis did not do it": unreachable, timed out, refused the command
#: (read-only replica, max clients, auth...). Script errors are ``ResponseError`` too.
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

_clients: dict[tuple[str, bool], redis.Redis] = {}
_breakers: dict[tuple[str, str], Breaker] = {}
_lock = threading.Lock()


def get_client(alias: str, *, write: bool = True) -> redis.Redis:
    """The raw Redis client behind the cache ``alias``.

    Any cache with django-redis's ``cache.client.get_client(write)`` will do. ``write=False``
    asks for a read connection: a replica when the cache's ``LOCATION`` lists several
    servers (this node's replica with a ``MasterReplicaClient``).
    """
    key = (alias, write)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = _make_client(alias, write)
    return client


def _forget_after_fork() -> None:
    """In a forked child, start with new clients, leaving the parent's alone. A lock that
    one of the parent's threads held when it forked (this module's, or a pool's: redis-py's
    pool takes its own lock again to reset itself in a child) stays locked in the child,
    where that thread does not exist, and the child's first command waited forever."""
    global _lock
    _lock = threading.Lock()
    _clients.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_forget_after_fork)


def _make_client(alias: str, write: bool) -> redis.Redis:
    cache: Any = caches[alias]
    try:
        base: redis.Redis = cache.client.get_client(write)
    except AttributeError:
        raise ValueError(
            f"CACHES[{alias!r}] is not a django-redis cache; distinct_counter needs one"
        ) from None
    pool = base.connection_pool
    if type(pool) is not redis.ConnectionPool:
        return base  # Sentinel and other pools keep their own settings.
    kwargs = dict(pool.connection_kwargs)
    if kwargs.get("socket_timeout") in (None, 5):
        kwargs["socket_timeout"] = redis_settings.SOCKET_TIMEOUT
    if kwargs.get("socket_connect_timeout") in (None, 5):
        kwargs["socket_connect_timeout"] = redis_settings.SOCKET_CONNECT_TIMEOUT
    # No retry: redis-py would send the command again after the connection dropped while it
    # waited for the reply, when the command may have run (a counter's increments counted
    # twice, a rebuild's swap run twice), and after a timeout, when it may still be running.
    # A failure only marks the counter stale. A pooled connection that a Redis restart
    # closed is reopened by the pool before anything is sent.
    kwargs["retry"] = Retry(NoBackoff(), 0)
    kwargs["retry_on_timeout"] = False
    kwargs.pop("retry_on_error", None)
    new_pool = redis.ConnectionPool(
        connection_class=pool.connection_class, max_connections=pool.max_connections, **kwargs
    )
    return redis.Redis(connection_pool=new_pool)


#: redis-py 5.3 deprecated the command name that older versions require.
_NAMED = tuple(int(p) for p in redis.__version__.split(".")[:2]) < (5, 3)

try:  # hiredis (optional; pack_command since hiredis-py 2.1) packs a command in C
    _pack_command: Any = getattr(importlib.import_module("hiredis"), "pack_command", None)
except ImportError:  # pragma: no cover - hiredis is in every extra of this package
    _pack_command = None


def _packed(conn: Any, commands: tuple[tuple[Any, ...], ...]) -> list[bytes]:
    """``commands`` as one buffer: packed by hiredis when it is there (redis-py's own
    packing, per command, costs a rebuild's thousands of ``HSET`` more Python than Redis
    spends running them), else by the connection."""
    if _pack_command is not None:
        try:
            return [b"".join([_pack_command(c) for c in commands])]
        except TypeError:  # an argument hiredis does not pack: redis-py converts it
            pass
    return list(conn.pack_commands(commands))


#: Commands packed and sent at once by :func:`round_trip`.
_SLICE = 1000


def round_trip(
    client: redis.Redis, *commands: tuple[Any, ...], raise_on_error: bool = True
) -> list[Any]:
    """Send ``commands`` on one pooled connection of ``client`` in one write, and return
    their replies: an error reply raised once every reply is read, or, with
    ``raise_on_error=False``, returned in its place (as a ``ResponseError``).

    The counters' hot paths (a write's deltas, a read of a count) call this rather than
    redis-py's ``execute_command`` or ``pipeline()``, whose Python (retry wrapper,
    observability hooks, reply callbacks, pipeline objects) cost as much as all the
    counting of a save. A connection that fails is dropped, never reused: a reply may
    still be on its way on it. Replies are Redis's own: no redis-py callback applies.
    """
    pool = client.connection_pool
    conn: Any = pool.get_connection(commands[0][0]) if _NAMED else pool.get_connection()
    try:
        # Sent a slice at a time: Redis runs the first commands while the next are packed.
        for start in range(0, len(commands), _SLICE):
            conn.send_packed_command(_packed(conn, commands[start : start + _SLICE]))
        read = _reader(conn)
        replies = [read() for _ in commands]
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
    return replies


def _reader(conn: Any) -> Callable[[], Any]:
    """How to read ``conn``'s next reply, an error reply returned, not raised: its parser's
    own read. The connection's ``read_response`` formats the server's address, for an error
    message, before every reply: 1.4 µs each, 55 ms of a rebuild's 39,000 ``HSET`` replies.
    A failure it would wrap (``socket.timeout``, ``OSError``) is in ``REDIS_ERRORS`` as is."""
    parser = getattr(conn, "_parser", None)
    if parser is not None:
        return parser.read_response  # type: ignore[no-any-return]

    def read() -> Any:
        try:
            return conn.read_response()
        except redis.ResponseError as exc:  # Redis answered: the connection is fine
            return exc

    return read


class Breaker:
    """A per-process circuit breaker for one Redis server in one role.

    After a failure, :meth:`allow` answers False for ``interval`` seconds (default
    ``RETRY_INTERVAL``), so requests skip the server at once instead of each waiting out a
    timeout. The failure is logged once, with its cause and ``consequence``, when the breaker
    opens; the recovery is logged when it closes.
    """

    def __init__(
        self,
        alias: str,
        role: str = "Redis of cache",
        consequence: str = "counters it misses are marked stale",
    ) -> None:
        self.alias = alias
        self.role = role
        self.consequence = consequence
        self.interval: float | None = None  # None: RETRY_INTERVAL, read when it fails
        self.open_until = 0.0
        self.failed = False
        #: Whether this process has copied the database's stale marks into Redis yet.
        self.synced = False

    def allow(self) -> bool:
        return not self.failed or time.monotonic() >= self.open_until

    def failure(self, exc: BaseException) -> None:
        first = not self.failed
        interval = redis_settings.RETRY_INTERVAL if self.interval is None else self.interval
        self.failed = True
        self.open_until = time.monotonic() + interval
        if first:
            logger.error(
                "%s %r failed: %s: %s; %s, retrying every %ss",
                self.role,
                self.alias,
                type(exc).__name__,
                exc,
                self.consequence,
                interval,
            )
        else:
            logger.debug("%s %r still failing: %r", self.role, self.alias, exc)

    def success(self) -> bool:
        """Record a success; True when this closed an open breaker (the server came back)."""
        if not self.failed:
            return False
        self.failed = False
        logger.warning("%s %r is reachable again", self.role, self.alias)
        return True


def breaker(
    alias: str,
    role: str = "Redis of cache",
    consequence: str = "counters it misses are marked stale",
) -> Breaker:
    """The process's breaker of ``alias`` in ``role``: per process, not per cache instance,
    since Django builds one cache instance per thread, and a server that failed for one
    thread failed for all of them."""
    key = (role, alias)
    found = _breakers.get(key)
    if found is None:
        with _lock:
            found = _breakers.setdefault(key, Breaker(alias, role, consequence))
    return found


def reset() -> None:
    """Forget clients and breakers (on ``setting_changed``, and in tests)."""
    with _lock:
        for client in _clients.values():
            try:
                client.connection_pool.disconnect()
            except Exception:  # pragma: no cover - best effort
                pass
        _clients.clear()
        _breakers.clear()
