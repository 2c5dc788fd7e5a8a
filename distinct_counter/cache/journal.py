"""The writes a node could not send to its master, kept in order in a file until the master
takes them again.

An entry is a command to replay: ``("DEL", *keys)``, ``("FLUSHDB",)``, ``("FLUSHALL",)``, or,
with ``REPLAY = "set"``, ``("ADD", key, value, deadline_ms)``: store the value only where the
master holds none, delete the key where it holds one. No value is ever read from a journal:
a key with a journaled write reads as missing until the journal is replayed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import pickle
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: the journal is then per process
    fcntl = None  # type: ignore[assignment]

Entry = tuple[Any, ...]

_locks: dict[str, threading.Lock] = {}
_locks_lock = threading.Lock()

#: ``ADD``: the value only where the master holds none (its own may be newer than ours).
ADD_SCRIPT = """
if ARGV[2] == '' then
  if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 1 end
elseif redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
redis.call('DEL', KEYS[1])
return 0
"""


def _lock(name: str) -> threading.Lock:
    """The process's lock of one journal file: flock serializes processes, not threads."""
    with _locks_lock:
        return _locks.setdefault(name, threading.Lock())


class FileJournal:
    """A journal in a local file: one pickled entry per line, appended under ``flock``, so
    every process of the node, and ``manage.py replay_cache_journal``, shares it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = os.fspath(self.path)
        self.location = f"file {self.name!r}"
        self.lock = _lock(self.name)
        self._fd: int | None = None  # the file, open to read its size (see signature())

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

    def extend(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        with self._locked() as fh:
            fh.seek(0, os.SEEK_END)
            fh.write(b"".join(_line(e) for e in entries))

    def __len__(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                return sum(1 for line in fh if line.strip())
        except FileNotFoundError:
            return 0

    def __bool__(self) -> bool:
        return self.signature() is not None

    def signature(self) -> tuple[int, int] | None:
        """The file's size and change time, None when it holds nothing. Every command asks
        (is a replay due, which keys read as missing): one ``fstat`` of a descriptor kept
        open (a ``stat`` of the path costs its lookup on top), opened again when the file
        was removed since."""
        fd = self._fd
        st = os.fstat(fd) if fd is not None else None
        if st is None or not st.st_nlink:
            st = self._reopen()
            if st is None:
                return None
        return (st.st_size, st.st_mtime_ns) if st.st_size else None

    def _reopen(self) -> os.stat_result | None:
        with self.lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            flags = os.O_RDONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
            try:
                self._fd = os.open(self.name, flags, 0o600)
            except OSError:  # Not ours to create: ask the path (appending will say why).
                try:
                    return os.stat(self.name)
                except FileNotFoundError:
                    return None
            return os.fstat(self._fd)

    def read_from(self, offset: int, tail: bytes) -> tuple[list[Entry], int, bytes, bool]:
        """The entries appended since a read that ended at byte ``offset`` with the line
        ``tail``: ``(entries, offset, tail, whole)``. When the file no longer holds ``tail``
        there (a replay rewrote it), every entry is read again, and ``whole`` is True."""
        with self._locked() as fh:
            fh.seek(offset - len(tail))
            whole = fh.read(len(tail)) != tail
            if whole:
                fh.seek(0)
            data = fh.read()
        start = 0 if whole else offset
        lines = data.splitlines(keepends=True)
        return _entries(lines), start + len(data), (lines[-1] if lines else tail), whole

    @contextlib.contextmanager
    def taken(self) -> Iterator[list[Entry]]:
        """The entries, locked against other replays and appends; the caller removes the
        ones it replayed from the front of the list, and what is left is kept."""
        with self._locked() as fh:
            entries = _entries(fh)
            try:
                yield entries
            finally:
                fh.seek(0)
                fh.truncate()
                fh.writelines(_line(e) for e in entries)


def _entries(lines: Iterable[bytes]) -> list[Entry]:
    return [pickle.loads(base64.b64decode(line)) for line in lines if line.strip()]


def _line(entry: Entry) -> bytes:
    return base64.b64encode(pickle.dumps(entry, pickle.HIGHEST_PROTOCOL)) + b"\n"


def replay(client: Any, entry: Entry) -> None:
    """Send one journal entry to the master ``client`` (a bare redis-py client)."""
    if entry[0] != "ADD":
        client.execute_command(*entry)
        return
    _, key, value, deadline_ms = entry
    left = "" if deadline_ms is None else str(int(deadline_ms - time.time() * 1000))
    if left and int(left) <= 0:
        client.execute_command("DEL", key)
    else:
        client.eval(ADD_SCRIPT, 1, key, value, left)


def default_path(servers: Sequence[str]) -> Path:
    """The journal file of a node with these servers when ``JOURNAL_FILE`` is not set."""
    where = hashlib.sha1(repr(list(servers)).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"distinct_counter-cache-journal-{where}"
