"""Raw Redis access for the counters: one client per cache alias, and a circuit breaker.

The clients reuse the connection settings of a django-redis cache (``CACHES[alias]``) but
with the short timeouts of ``DISTINCT_COUNTER["SOCKET_TIMEOUT"]`` and
``["SOCKET_CONNECT_TIMEOUT"]`` unless the cache sets its own: a counter must never make a
request wait out redis-py's default 5 s timeouts.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from django.core.cache import caches
from redis.backoff import NoBackoff
from redis.retry import Retry

from distinct_counter.conf import conf

logger = logging.getLogger("distinct_counter")

#: The errors that mean "Redis did not do it": unreachable, timed out, refused the command
#: (read-only replica, max clients, auth...). Script errors are ``ResponseError`` too.
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

_clients: dict[tuple[str, bool], redis.Redis] = {}
_breakers: dict[str, Breaker] = {}
_lock = threading.Lock()


def get_client(alias: str, *, write: bool = True) -> redis.Redis:
    """The raw Redis client behind the django-redis cache ``alias``.

    ``write=False`` asks django-redis for a read connection (a replica when the cache's
    ``LOCATION`` lists several servers). For a ``MasterReplicaCache``, the client is that of
    its MASTER cache for writes, of its REPLICA cache for reads.
    """
    key = (alias, write)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = _make_client(alias, write)
    return client


def _make_client(alias: str, write: bool) -> redis.Redis:
    from distinct_counter.cache import MasterReplicaCache

    cache: Any = caches[alias]
    if isinstance(cache, MasterReplicaCache):
        return _make_client(cache.redis_alias(write), write)
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
        kwargs["socket_timeout"] = conf.SOCKET_TIMEOUT
    if kwargs.get("socket_connect_timeout") in (None, 5):
        kwargs["socket_connect_timeout"] = conf.SOCKET_CONNECT_TIMEOUT
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


class Breaker:
    """A per-process circuit breaker for one Redis alias.

    After a failure, :meth:`allow` answers False for ``RETRY_INTERVAL`` seconds, so requests
    skip Redis at once instead of each waiting out a timeout. The failure is logged once, with
    its cause, when the breaker opens; the recovery is logged when it closes.
    """

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.open_until = 0.0
        self.failed = False
        #: Whether this process has copied the database's stale marks into Redis yet.
        self.synced = False

    def allow(self) -> bool:
        return not self.failed or time.monotonic() >= self.open_until

    def failure(self, exc: BaseException) -> None:
        first = not self.failed
        self.failed = True
        self.open_until = time.monotonic() + float(conf.RETRY_INTERVAL)
        if first:
            logger.error(
                "Redis of cache %r failed: %s: %s; counters it misses are marked stale, "
                "retrying every %ss", self.alias, type(exc).__name__, exc, conf.RETRY_INTERVAL,
            )
        else:
            logger.debug("Redis of cache %r still failing: %r", self.alias, exc)

    def success(self) -> bool:
        """Record a success; True when this closed an open breaker (Redis came back)."""
        if not self.failed:
            return False
        self.failed = False
        logger.warning("Redis of cache %r is reachable again", self.alias)
        return True


def breaker(alias: str) -> Breaker:
    b = _breakers.get(alias)
    if b is None:
        b = _breakers.setdefault(alias, Breaker(alias))
    return b


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


def run_script(client: Any, script: Script, keys: list[str], args: list[Any]) -> Any:
    """Queue ``script`` on a pipeline, or run it on a client (EVALSHA, then EVAL on NOSCRIPT)."""
    if isinstance(client, redis.client.Pipeline):
        return client.evalsha(script.sha, len(keys), *keys, *args)
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        return client.eval(script.source, len(keys), *keys, *args)


def execute(pipe: Any, scripts: list[Script]) -> list[Any]:
    """Execute a pipeline of EVALSHAs in one round trip; load the scripts after a NOSCRIPT.

    redis-py's own ``Script`` objects would send ``SCRIPT EXISTS`` before every pipeline,
    doubling the round trips of each write. Only the commands that met NOSCRIPT are sent
    again, so no script runs twice.
    """
    commands = list(pipe.command_stack)
    results = list(pipe.execute(raise_on_error=False))
    missing = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
    if missing:
        for script in scripts:
            pipe.script_load(script.source)
        for i in missing:
            args, options = commands[i]
            pipe.execute_command(*args, **options)
        retried = list(pipe.execute(raise_on_error=False))[len(scripts):]
        for i, result in zip(missing, retried):
            results[i] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


class Script:
    """A Lua script known by its SHA1, loaded into Redis on first NOSCRIPT."""

    def __init__(self, source: str) -> None:
        import hashlib

        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
