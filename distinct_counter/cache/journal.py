"""The writes a node could not send to its master, kept in order for replay: in the node's
``LOCAL`` cache (:class:`CacheJournal`) or in a file (:class:`FileJournal`)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import pickle
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.base import BaseCache

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: the file journal is then per process
    fcntl = None  # type: ignore[assignment]

_locks: dict[str, threading.Lock] = {}
_locks_lock = threading.Lock()


def _lock(name: str) -> threading.Lock:
    """The process's lock of one journal: its threads share one cache instance per thread,
    but one journal."""
    with _locks_lock:
        return _locks.setdefault(name, threading.Lock())


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
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with open(fd, "r+b") as fh:
                # Entries are unpickled on replay: refuse a file anyone else could write.
                st = os.fstat(fd)
                if st.st_uid != os.getuid() or st.st_mode & 0o022:
                    raise PermissionError(
                        f"journal file {str(self.path)!r} is writable by "
                        "another user; remove it or set JOURNAL_FILE"
                    )
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


def replay_entry(master: BaseCache, entry: dict[str, Any], mode: str) -> None:
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
            if (
                mode == "set"
                and key in data
                and master.add(key, data[key], entry["timeout"], version=version)
            ):
                continue
            master.delete(key, version=version)
    else:  # pragma: no cover - written by this module only
        raise ValueError(f"unknown journal entry {entry!r}")


def default_journal_file(master: str, params: dict[str, Any]) -> Path:
    where = hashlib.sha1(repr((master, params.get("LOCATION"))).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"distinct_counter-cache-journal-{master}-{where}"
