"""A master/replica cache backend: node-local reads, master writes, nothing lost while the
master is down.

One Redis master replicates to a Redis replica on (or next to) every web node. On each node,
:class:`MasterReplicaCache` reads from that node's replica and sends every write to the
master, which fans it out to every replica. Its ``OPTIONS`` name other caches of ``CACHES``::

    "default": {
        "BACKEND": "distinct_counter.cache.MasterReplicaCache",
        "OPTIONS": {"MASTER": "master", "REPLICA": "replica", "LOCAL": "local"},
    }

:func:`replay_journal` and :func:`cache_status` are what the ``replay_cache_journal`` and
``cache_status`` management commands run.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import pickle
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.utils.module_loading import import_string

from distinct_counter.conf import conf
from distinct_counter.connection import REDIS_ERRORS, Breaker, get_client

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: the file journal is then per process
    fcntl = None  # type: ignore[assignment]

__all__ = ["MasterReplicaCache", "ReplayResult", "cache_status", "replay_journal", "reset"]

logger = logging.getLogger("distinct_counter")

BACKEND = "distinct_counter.cache.MasterReplicaCache"
REPLAY_CHOICES = ("delete", "set")
#: Every key of a MasterReplicaCache's ``OPTIONS``, with its default.
OPTION_DEFAULTS: dict[str, Any] = {
    "MASTER": None,
    "REPLICA": None,
    "LOCAL": None,
    "LOCAL_TTL": 5.0,
    "REPLAY": "delete",
    "RETRY_INTERVAL": None,  # None: DISTINCT_COUNTER["RETRY_INTERVAL"]
    "JOURNAL_FILE": None,  # None: a file in the temporary directory, named after MASTER
}
#: The parts of a ``CACHES`` entry that decide key names and expiry: the MASTER's apply.
KEY_SETTINGS = ("TIMEOUT", "KEY_PREFIX", "VERSION", "KEY_FUNCTION")

try:
    from django_redis.exceptions import ConnectionInterrupted

    CACHE_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, ConnectionInterrupted)
except ImportError:  # pragma: no cover - django-redis is a dependency
    CACHE_ERRORS = REDIS_ERRORS

_SET, _DELETED = "set", "deleted"

_breakers: dict[tuple[str, str], _Breaker] = {}
_locks: dict[str, threading.Lock] = {}
_registry_lock = threading.Lock()


class _Breaker(Breaker):
    """The counters' circuit breaker, with this backend's interval and log message."""

    def __init__(self, alias: str, role: str, interval: float) -> None:
        super().__init__(alias)
        self.role = role
        self.interval = interval

    def failure(self, exc: BaseException) -> None:
        first = not self.failed
        self.failed = True
        self.open_until = time.monotonic() + self.interval
        if first:
            consequence = ("writes are journaled" if self.role == "master"
                           else "reads go to the master")
            logger.error("Cache %s %r failed: %s: %s; %s, retrying every %ss", self.role,
                         self.alias, type(exc).__name__, exc, consequence, self.interval)
        else:
            logger.debug("Cache %s %r still failing: %r", self.role, self.alias, exc)

    def success(self) -> bool:
        if not self.failed:
            return False
        self.failed = False
        logger.warning("Cache %s %r is reachable again", self.role, self.alias)
        return True


def _breaker(alias: str, role: str, interval: float) -> _Breaker:
    # Per process, not per cache instance: Django builds one instance per thread, and a
    # server that failed for one thread failed for all of them.
    with _registry_lock:
        gate = _breakers.get((role, alias))
        if gate is None:
            gate = _breakers[(role, alias)] = _Breaker(alias, role, interval)
        gate.interval = interval
        return gate


def _lock(name: str) -> threading.Lock:
    with _registry_lock:
        return _locks.setdefault(name, threading.Lock())


def reset() -> None:
    """Forget the circuit breakers (on ``setting_changed``, and in tests)."""
    with _registry_lock:
        _breakers.clear()


# -- the journal -------------------------------------------------------------------------------


class Journal:
    """The writes a node could not send to the master, in order.

    Entries are dicts: ``op`` (``set``, ``delete``, ``delete_many``, ``touch``, ``clear``),
    ``key``/``keys``, ``version``, ``timeout`` and, when ``REPLAY`` is ``"set"``, ``value``.
    """

    location: str

    def append(self, entry: dict[str, Any]) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    @contextlib.contextmanager
    def taken(self) -> Iterator[list[dict[str, Any]]]:
        """The entries, locked against other replays and appends; the caller removes the
        ones it replayed from the list, and what is left is kept."""
        raise NotImplementedError


class CacheJournal(Journal):
    """A journal kept under one key of the node's ``LOCAL`` cache, never expiring.

    With a per-process ``LOCAL`` (``LocMemCache``), each process journals and replays its own
    writes; a lock serializes its threads. Give such a cache a ``MAX_ENTRIES`` well above the
    number of keys a node writes in ``LOCAL_TTL``, so culling never drops the journal.
    """

    def __init__(self, alias: str, name: str) -> None:
        self.alias = alias
        self.key = f"distinct_counter.cache.journal.{name}"
        self.location = f"cache {alias!r}"
        self.lock = _lock(f"cache:{alias}:{name}")

    @property
    def cache(self) -> BaseCache:
        return caches[self.alias]

    def _read(self) -> list[dict[str, Any]]:
        return list(self.cache.get(self.key) or [])

    def _write(self, entries: list[dict[str, Any]]) -> None:
        if entries:
            self.cache.set(self.key, entries, None)
        else:
            self.cache.delete(self.key)

    def append(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self._write([*self._read(), entry])

    def __len__(self) -> int:
        return len(self._read())

    @contextlib.contextmanager
    def taken(self) -> Iterator[list[dict[str, Any]]]:
        with self.lock:
            entries = self._read()
            try:
                yield entries
            finally:
                self._write(entries)


class FileJournal(Journal):
    """A journal in a local file: one pickled entry per line, appended under ``flock``, so
    every process of the node (and ``manage.py replay_cache_journal``) shares it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.location = f"file {str(self.path)!r}"
        self.lock = _lock(f"file:{self.path}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        with self.lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
                         0o600)
            with open(fd, "r+b") as fh:
                # Entries are unpickled on replay: refuse a file anyone else could write.
                st = os.fstat(fd)
                if st.st_uid != os.getuid() or st.st_mode & 0o022:
                    raise PermissionError(f"journal file {str(self.path)!r} is writable by "
                                          "another user; remove it or set JOURNAL_FILE")
                if fcntl is not None:
                    fcntl.flock(fh, fcntl.LOCK_EX)
                yield fh

    def append(self, entry: dict[str, Any]) -> None:
        with self._locked() as fh:
            fh.seek(0, os.SEEK_END)
            fh.write(_line(entry))

    def __len__(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                return sum(1 for line in fh if line.strip())
        except FileNotFoundError:
            return 0

    def __bool__(self) -> bool:  # Cheap: every write asks whether a replay is due.
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    @contextlib.contextmanager
    def taken(self) -> Iterator[list[dict[str, Any]]]:
        with self._locked() as fh:
            entries = [pickle.loads(base64.b64decode(line)) for line in fh if line.strip()]
            try:
                yield entries
            finally:
                fh.seek(0)
                fh.truncate()
                fh.writelines(_line(e) for e in entries)


def _line(entry: dict[str, Any]) -> bytes:
    return base64.b64encode(pickle.dumps(entry, pickle.HIGHEST_PROTOCOL)) + b"\n"


# -- the backend -------------------------------------------------------------------------------


class MasterReplicaCache(BaseCache):
    """A Django cache that reads from a node-local Redis replica and writes to the master.

    ``OPTIONS`` (see :data:`OPTION_DEFAULTS`):

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
        options: dict[str, Any] = {**OPTION_DEFAULTS, **params.get("OPTIONS", {})}
        self.master_alias: str = options["MASTER"]
        self.replica_alias: str = options["REPLICA"]
        self.local_alias: str | None = options["LOCAL"]
        master_params = settings.CACHES.get(self.master_alias, {})
        super().__init__({k: master_params[k] for k in KEY_SETTINGS if k in master_params})
        self.local_ttl = _seconds(options["LOCAL_TTL"], OPTION_DEFAULTS["LOCAL_TTL"])
        self.replay_mode: str = options["REPLAY"]
        self.retry_interval = _seconds(options["RETRY_INTERVAL"], conf.RETRY_INTERVAL)
        name = f"{self.master_alias}.{self.replica_alias}"
        if self.local_alias:
            self.journal: Journal = CacheJournal(self.local_alias, name)
        else:
            path = options["JOURNAL_FILE"] or _default_journal_file(self.master_alias,
                                                                    master_params)
            self.journal = FileJournal(path)

    # -- plumbing

    def redis_alias(self, write: bool) -> str:
        """The django-redis cache behind this one: the MASTER for writes, else the REPLICA."""
        return self.master_alias if write else self.replica_alias

    @property
    def _master(self) -> _Breaker:
        return _breaker(self.master_alias, "master", self.retry_interval)

    @property
    def _replica(self) -> _Breaker:
        return _breaker(self.replica_alias, "replica", self.retry_interval)

    def _timeout(self, timeout: Any) -> float | None:
        return self.default_timeout if timeout is DEFAULT_TIMEOUT else timeout

    def _read(self, call: Callable[[BaseCache], Any], failed: Any,
              master_first: bool = False) -> Any:
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
            logger.error("Cache write %s of %r lost: the master is down and the journal "
                         "failed: %s", entry["op"], entry.get("key", entry.get("keys")), exc)
        return False, None

    def _replay(self) -> bool:
        """Send the journal to the master, in order; False if it failed midway."""
        master = caches[self.master_alias]
        with self.journal.taken() as entries:
            if not entries:
                return True
            while entries:
                try:
                    _apply(master, entries[0], self.replay_mode)
                except CACHE_ERRORS as exc:
                    self._master.failure(exc)
                    return False
                del entries[0]
        self._master.success()
        return True

    # -- LOCAL: read-your-writes

    def _remember(self, key: str, version: int | None, value: Any = None,
                  timeout: Any = DEFAULT_TIMEOUT, deleted: bool = False) -> None:
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
        return self._read(lambda c: c.ttl(key, version=version), 0,  # type: ignore[attr-defined]
                          master_first=entry is not None)

    # -- writes

    def set(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: int | None = None) -> None:
        self._write(lambda c: c.set(key, value, timeout, version=version),
                    {"op": "set", "key": key, "version": version, "value": value,
                     "timeout": self._timeout(timeout)})
        self._remember(key, version, value, timeout)

    def add(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: int | None = None) -> bool:
        sent, added = self._write(lambda c: c.add(key, value, timeout, version=version),
                                  {"op": "set", "key": key, "version": version, "value": value,
                                   "timeout": self._timeout(timeout)})
        if not sent:  # Journaled: answer from what this node reads.
            added = not self.has_key(key, version)
        if added:
            self._remember(key, version, value, timeout)
        return bool(added)

    def set_many(self, data: dict[str, Any], timeout: Any = DEFAULT_TIMEOUT,
                 version: int | None = None) -> list[str]:
        if not data:
            return []
        self._write(lambda c: c.set_many(data, timeout, version=version),
                    {"op": "set_many", "data": dict(data), "keys": list(data),
                     "version": version, "timeout": self._timeout(timeout)})
        for key, value in data.items():
            self._remember(key, version, value, timeout)
        return []

    def delete(self, key: str, version: int | None = None) -> bool:
        sent, deleted = self._write(lambda c: c.delete(key, version=version),
                                    {"op": "delete", "key": key, "version": version})
        if not sent:
            deleted = self.has_key(key, version)
        self._remember(key, version, deleted=True)
        return bool(deleted)

    def delete_many(self, keys: Iterable[str], version: int | None = None) -> None:
        keys = list(keys)
        if not keys:
            return
        self._write(lambda c: c.delete_many(keys, version=version),
                    {"op": "delete_many", "keys": keys, "version": version})
        for key in keys:
            self._remember(key, version, deleted=True)

    def incr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        sent, value = self._write(lambda c: c.incr(key, delta, version=version),
                                  {"op": "delete", "key": key, "version": version})
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
        sent, touched = self._write(lambda c: c.touch(key, timeout, version=version),
                                    {"op": "touch", "key": key, "version": version,
                                     "timeout": timeout})
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


def _apply(master: BaseCache, entry: dict[str, Any], mode: str) -> None:
    """Replay one journal entry on the master."""
    op, version = entry["op"], entry.get("version")
    if op == "clear":
        master.clear()
    elif op == "delete":
        master.delete(entry["key"], version=version)
    elif op == "delete_many":
        master.delete_many(entry["keys"], version=version)
    elif op == "touch":
        master.touch(entry["key"], entry["timeout"], version=version)
    elif op in ("set", "set_many"):
        data = entry.get("data") or ({entry["key"]: entry["value"]} if "value" in entry else {})
        for key in entry.get("keys") or [entry["key"]]:
            # Only where the master holds no value: one it holds may be newer than ours.
            if mode == "set" and key in data and master.add(key, data[key], entry["timeout"],
                                                            version=version):
                continue
            master.delete(key, version=version)
    else:  # pragma: no cover - written by this module only
        raise ValueError(f"unknown journal entry {entry!r}")


def _seconds(value: Any, default: Any) -> float:
    try:
        return float(default if value is None else value)
    except (TypeError, ValueError):
        return float(default)


def _default_journal_file(master: str, params: dict[str, Any]) -> Path:
    where = hashlib.sha1(repr((master, params.get("LOCATION"))).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"distinct_counter-cache-journal-{master}-{where}"


# -- the management commands' API --------------------------------------------------------------


def node_aliases() -> list[str]:
    """The aliases in ``CACHES`` whose backend is a MasterReplicaCache."""
    return [alias for alias, cfg in settings.CACHES.items() if _is_node(cfg)]


def _is_node(cfg: dict[str, Any]) -> bool:
    path = cfg.get("BACKEND", "")
    if path == BACKEND:
        return True
    try:
        backend = import_string(path)
    except ImportError:
        return False
    return isinstance(backend, type) and issubclass(backend, MasterReplicaCache)


def node(alias: str) -> MasterReplicaCache:
    """The MasterReplicaCache ``CACHES[alias]``.

    :raises ValueError: ``alias`` is not in ``CACHES`` or is not a MasterReplicaCache.
    """
    if alias not in settings.CACHES or not _is_node(settings.CACHES[alias]):
        known = ", ".join(node_aliases()) or "none"
        raise ValueError(f"{alias!r} is not a {BACKEND} in CACHES; those are: {known}")
    return caches[alias]  # type: ignore[return-value]


@dataclass
class ReplayResult:
    """What :func:`replay_journal` did: writes ``replayed`` and ``left`` in the journal at
    ``location``."""

    alias: str
    replayed: int
    left: int
    location: str

    @property
    def ok(self) -> bool:
        return self.left == 0


def replay_journal(alias: str) -> ReplayResult:
    """Replay the journal of the MasterReplicaCache ``alias`` on its master now, in order.

    Stops at the first write the master fails to take; ``left`` counts what is kept for
    later. Raises nothing for a Redis failure.
    """
    cache = node(alias)
    before = len(cache.journal)
    cache._replay()
    left = len(cache.journal)
    return ReplayResult(alias, max(before - left, 0), left, cache.journal.location)


def _info(alias: str) -> dict[str, Any]:
    try:
        return dict(get_client(alias).info("replication"))
    except REDIS_ERRORS as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _server(alias: str) -> dict[str, Any]:
    return {"alias": alias, "location": settings.CACHES[alias].get("LOCATION")}


def cache_status(alias: str) -> dict[str, Any]:
    """The state of the MasterReplicaCache ``alias``, as its servers report it.

    ``master``: whether it is up, its replication offset and the replicas it feeds (address,
    state, offset, ``lag`` in bytes behind the master); ``replica``: this node's replica,
    its link to the master (``"up"``/``"down"``) and its lag; ``journal``: the writes
    waiting for the master. A server that does not answer has ``up`` False and ``error``.
    """
    cache = node(alias)
    info = _info(cache.master_alias)
    offset = info.get("master_repl_offset")
    master: dict[str, Any] = {**_server(cache.master_alias), "up": "error" not in info,
                              "role": info.get("role"), "offset": offset,
                              "error": info.get("error"), "replicas": []}
    for name, value in sorted(info.items()):
        if name.startswith("slave") and isinstance(value, dict):
            replica_offset = int(value.get("offset", 0))
            master["replicas"].append({
                "address": f"{value.get('ip')}:{value.get('port')}",
                "state": value.get("state"), "offset": replica_offset,
                "lag": None if offset is None else int(offset) - replica_offset,
            })
    rinfo = _info(cache.replica_alias)
    roffset = rinfo.get("slave_repl_offset", rinfo.get("master_repl_offset"))
    replica = {**_server(cache.replica_alias), "up": "error" not in rinfo,
               "role": rinfo.get("role"), "link": rinfo.get("master_link_status"),
               "offset": roffset, "error": rinfo.get("error"),
               "lag": None if offset is None or roffset is None else int(offset) - int(roffset)}
    return {"alias": alias, "master": master, "replica": replica,
            "journal": {"entries": len(cache.journal), "location": cache.journal.location}}
