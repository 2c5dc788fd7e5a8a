"""A master/replica cache backend: node-local reads, master writes, nothing lost while the
master is down.

One Redis master replicates to a Redis replica on (or next to) every web node. On each node,
:class:`MasterReplicaCache` reads from that node's replica and sends every write to the
master, which fans it out to every replica. Its ``OPTIONS`` name other caches of ``CACHES``::

    "default": {
        "BACKEND": "distinct_counter.cache.backend.MasterReplicaCache",
        "OPTIONS": {"MASTER": "master", "REPLICA": "replica", "LOCAL": "local"},
    }
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import redis
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django_redis.exceptions import ConnectionInterrupted

from distinct_counter.cache.conf import CacheOptions
from distinct_counter.cache.journal import (
    CacheJournal,
    FileJournal,
    Journal,
    default_journal_file,
    replay_entry,
)
from distinct_counter.connection import REDIS_ERRORS, Breaker, breaker

__all__ = ["MasterReplicaCache"]

logger = logging.getLogger("distinct_counter")

#: The parts of a ``CACHES`` entry that decide key names and expiry: the MASTER's apply.
KEY_SETTINGS = ("TIMEOUT", "KEY_PREFIX", "VERSION", "KEY_FUNCTION")

CACHE_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, ConnectionInterrupted)

_SET, _DELETED = "set", "deleted"


class _Client:
    """What django-redis's ``cache.client`` offers that this app's Redis access uses:
    ``get_client(write)``, the raw client of the MASTER for writes, of the REPLICA for reads."""

    def __init__(self, cache: MasterReplicaCache) -> None:
        self.cache = cache

    def get_client(self, write: bool = True) -> redis.Redis:
        backend: Any = caches[self.cache.redis_alias(write)]
        return backend.client.get_client(write)  # type: ignore[no-any-return]


class MasterReplicaCache(BaseCache):
    """A Django cache that reads from a node-local Redis replica and writes to the master.

    ``OPTIONS`` (see :class:`~distinct_counter.cache.conf.CacheOptions`):

    ``MASTER`` / ``REPLICA``
        Aliases of two django-redis caches in ``CACHES``: the master and this node's replica
        of it. Reads (``get``, ``get_many``, ``has_key``, ``ttl``) go to the replica, or to
        the master while the replica fails; writes (``set``, ``add``, ``set_many``,
        ``delete``, ``delete_many``, ``incr``, ``decr``, ``touch``, ``clear``) go to the
        master. Key names and the default timeout are the MASTER cache's.
    ``LOCAL``
        Optional alias of a node-local, writable cache (e.g. ``LocMemCache``). Every write is
        also kept there for ``LOCAL_TTL`` seconds (a delete as a tombstone) and reads look
        there first, so the node that wrote reads its write before replication delivers it.
    ``LOCAL_TTL``
        Seconds a write is read from ``LOCAL`` (5).
    ``REPLAY``
        How journaled sets are replayed: ``"delete"`` (default) deletes the key, since a
        miss is always correct; ``"set"`` stores the value only where the master holds none
        and deletes the key otherwise, since the value there may be newer. Either way a
        replayed write never leaves a value older than one another node wrote meanwhile.
    ``RETRY_INTERVAL``
        Seconds a failed server is skipped before it is tried again (the circuit breaker);
        default ``DISTINCT_COUNTER["RETRY_INTERVAL"]``.
    ``JOURNAL_FILE``
        Where writes are journaled while the master is down when there is no ``LOCAL``.

    While the master is down, writes go to the node's journal (in ``LOCAL``, else in
    ``JOURNAL_FILE``) and are replayed in order by the first write after ``RETRY_INTERVAL``
    that finds the master back, or by ``manage.py replay_cache_journal``. No Redis failure
    reaches the caller: a failed read is a miss.
    """

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        # Never raise here: Django's own checks build every cache, and a misconfiguration is
        # reported by this app's checks (distinct_counter.E020-E029) instead of a traceback.
        options = CacheOptions(options=params.get("OPTIONS") or {})
        self.master_alias: str = options.value_or("MASTER", "")
        self.replica_alias: str = options.value_or("REPLICA", "")
        self.local_alias: str | None = options.value_or("LOCAL", None)
        master_params = settings.CACHES.get(self.master_alias, {})
        super().__init__({k: master_params[k] for k in KEY_SETTINGS if k in master_params})
        self.local_ttl: float = options.value_or("LOCAL_TTL", 5.0)
        self.replay_mode: str = options.value_or("REPLAY", "delete")
        self.retry_interval: float | None = options.value_or("RETRY_INTERVAL", None)
        self.client = _Client(self)
        name = f"{self.master_alias}.{self.replica_alias}"
        if self.local_alias:
            self.journal: Journal = CacheJournal(self.local_alias, name)
        else:
            path = options.value_or("JOURNAL_FILE", None) or default_journal_file(
                self.master_alias, master_params
            )
            self.journal = FileJournal(path)

    # -- plumbing

    def redis_alias(self, write: bool) -> str:
        """The django-redis cache behind this one: the MASTER for writes, else the REPLICA."""
        return self.master_alias if write else self.replica_alias

    @property
    def _master(self) -> Breaker:
        return self._breaker(self.master_alias, "master", "writes are journaled")

    @property
    def _replica(self) -> Breaker:
        return self._breaker(self.replica_alias, "replica", "reads go to the master")

    def _breaker(self, alias: str, role: str, consequence: str) -> Breaker:
        gate = breaker(alias, f"Cache {role}", consequence)
        gate.interval = self.retry_interval
        return gate

    def _timeout(self, timeout: Any) -> float | None:
        return self.default_timeout if timeout is DEFAULT_TIMEOUT else timeout

    def _read(
        self, call: Callable[[BaseCache], Any], failed: Any, master_first: bool = False
    ) -> Any:
        """``call`` on the replica, else on the master; ``failed`` when both fail."""
        order = [(self.replica_alias, self._replica), (self.master_alias, self._master)]
        for alias, gate in order[::-1] if master_first else order:
            if not gate.allow():
                continue
            try:
                result = call(caches[alias])
            except CACHE_ERRORS as exc:
                gate.failure(exc)
                continue
            gate.success()
            return result
        return failed

    def _write(self, call: Callable[[BaseCache], Any], entry: dict[str, Any]) -> tuple[bool, Any]:
        """``call`` on the master after replaying the journal; journal ``entry`` instead
        when the master is down. Returns (sent, result)."""
        gate = self._master
        if gate.allow() and (not self.journal or self._replay()):
            try:
                result = call(caches[self.master_alias])
            except CACHE_ERRORS as exc:
                gate.failure(exc)
            else:
                gate.success()
                return True, result
        if self.replay_mode != "set":
            entry.pop("value", None)
            entry.pop("data", None)
        try:
            self.journal.append(entry)
        except OSError as exc:  # The request goes on; the loss is loud.
            logger.error(
                "Cache write %s of %r lost: the master is down and the journal failed: %s",
                entry["op"],
                entry.get("key", entry.get("keys")),
                exc,
            )
        return False, None

    def _replay(self) -> bool:
        """Send the journal to the master, in order; False if it failed midway."""
        master = caches[self.master_alias]
        with self.journal.taken() as entries:
            if not entries:
                return True
            while entries:
                try:
                    replay_entry(master, entries[0], self.replay_mode)
                except CACHE_ERRORS as exc:
                    self._master.failure(exc)
                    return False
                del entries[0]
        self._master.success()
        return True

    # -- LOCAL: read-your-writes

    def _remember(
        self,
        key: str,
        version: int | None,
        value: Any = None,
        timeout: Any = DEFAULT_TIMEOUT,
        deleted: bool = False,
    ) -> None:
        if not self.local_alias:
            return
        timeout = self._timeout(timeout)
        if deleted or (timeout is not None and timeout <= 0):
            # A tombstone: the replica may still hold the old value for a while.
            entry, ttl = (_DELETED, None), self.local_ttl
        else:
            ttl = self.local_ttl if timeout is None else min(self.local_ttl, timeout)
            entry = (_SET, value)
        caches[self.local_alias].set(key, entry, ttl, version=version)

    def _remembered(self, keys: Iterable[str], version: int | None) -> dict[str, tuple[str, Any]]:
        """What LOCAL knows of ``keys``: (``"set"``, value) or (``"deleted"``, None)."""
        if not self.local_alias:
            return {}
        keys = list(keys)
        local = caches[self.local_alias]
        found = local.get_many(keys, version=version)
        if len(found) < len(keys) and local.get(self._cleared_key) is not None:
            # This node cleared the cache within LOCAL_TTL: what it has not written since
            # is gone, whatever the replica still holds.
            found.update({k: (_DELETED, None) for k in keys if k not in found})
        return found

    @property
    def _cleared_key(self) -> str:
        return f"distinct_counter.cache.cleared.{self.master_alias}.{self.replica_alias}"

    # -- reads

    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        entry = self._remembered([key], version).get(key)
        if entry is not None:
            return entry[1] if entry[0] == _SET else default
        return self._read(lambda c: c.get(key, default, version=version), default)

    def get_many(self, keys: Iterable[str], version: int | None = None) -> dict[str, Any]:
        keys = list(keys)
        local = self._remembered(keys, version)
        found = {k: e[1] for k, e in local.items() if e[0] == _SET}
        rest = [k for k in keys if k not in local]
        if rest:
            found.update(self._read(lambda c: c.get_many(rest, version=version), {}))
        return found

    def has_key(self, key: str, version: int | None = None) -> bool:
        entry = self._remembered([key], version).get(key)
        if entry is not None:
            return entry[0] == _SET
        return bool(self._read(lambda c: c.has_key(key, version=version), False))

    def ttl(self, key: str, version: int | None = None) -> int | None:
        """Seconds ``key`` has left (django-redis's answer: ``None`` for no expiry, 0 for a
        missing key). The master answers for a key this node wrote within ``LOCAL_TTL``,
        which the replica may not have yet; the replica for any other."""
        entry = self._remembered([key], version).get(key)
        if entry is not None and entry[0] == _DELETED:
            return 0
        ttl: int | None = self._read(
            lambda c: c.ttl(key, version=version),  # type: ignore[attr-defined]
            0,
            master_first=entry is not None,
        )
        return ttl

    # -- writes

    def set(
        self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        self._write(
            lambda c: c.set(key, value, timeout, version=version),
            {
                "op": "set",
                "key": key,
                "version": version,
                "value": value,
                "timeout": self._timeout(timeout),
            },
        )
        self._remember(key, version, value, timeout)

    def add(
        self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        sent, added = self._write(
            lambda c: c.add(key, value, timeout, version=version),
            {
                "op": "set",
                "key": key,
                "version": version,
                "value": value,
                "timeout": self._timeout(timeout),
            },
        )
        if not sent:  # Journaled: answer from what this node reads.
            added = not self.has_key(key, version)
        if added:
            self._remember(key, version, value, timeout)
        return bool(added)

    def set_many(
        self, data: dict[str, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[str]:
        if not data:
            return []
        self._write(
            lambda c: c.set_many(data, timeout, version=version),
            {
                "op": "set_many",
                "data": dict(data),
                "keys": list(data),
                "version": version,
                "timeout": self._timeout(timeout),
            },
        )
        for key, value in data.items():
            self._remember(key, version, value, timeout)
        return []

    def delete(self, key: str, version: int | None = None) -> bool:
        sent, deleted = self._write(
            lambda c: c.delete(key, version=version),
            {"op": "delete", "key": key, "version": version},
        )
        if not sent:
            deleted = self.has_key(key, version)
        self._remember(key, version, deleted=True)
        return bool(deleted)

    def delete_many(self, keys: Iterable[str], version: int | None = None) -> None:
        keys = list(keys)
        if not keys:
            return
        self._write(
            lambda c: c.delete_many(keys, version=version),
            {"op": "delete_many", "keys": keys, "version": version},
        )
        for key in keys:
            self._remember(key, version, deleted=True)

    def incr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        sent, value = self._write(
            lambda c: c.incr(key, delta, version=version),
            {"op": "delete", "key": key, "version": version},
        )
        if not sent:
            # The master is down: answer from what this node reads; the journal deletes the
            # key on replay, as the master's count cannot be known.
            current = self.get(key, version=version)
            if current is None:
                raise ValueError(f"Key {key!r} not found")
            value = current + delta
        if self.local_alias:
            self._remember(key, version, value)
        return int(value)

    def decr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        return self.incr(key, -delta, version)

    def touch(self, key: str, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        timeout = self._timeout(timeout)
        if timeout is not None and timeout <= 0:
            return self.delete(key, version)
        sent, touched = self._write(
            lambda c: c.touch(key, timeout, version=version),
            {"op": "touch", "key": key, "version": version, "timeout": timeout},
        )
        return bool(touched) if sent else self.has_key(key, version)

    def clear(self) -> None:
        self._write(lambda c: c.clear(), {"op": "clear"})
        if self.local_alias:
            # The journal shares LOCAL: keep it across the clear.
            with self.journal.taken() as entries:
                kept = list(entries)
                caches[self.local_alias].clear()
                entries[:] = kept
            caches[self.local_alias].set(self._cleared_key, True, self.local_ttl)
