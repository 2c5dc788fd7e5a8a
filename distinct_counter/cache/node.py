"""A node's view of its master and replica, shared by every thread of the process: where
each command goes, what this process wrote recently, and the journal.

Every command of a :class:`~distinct_counter.cache.client.MasterReplicaClient` passes through
:meth:`Node.read` or :meth:`Node.write`, whatever django-redis method (or raw client call)
sent it. That one routing point is what makes the whole django-redis API behave the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from distinct_counter.cache import commands as cmd
from distinct_counter.cache.journal import Entry, FileJournal, replay
from distinct_counter.connection import Breaker

#: The failures that mean "that server is not answering": a command that meets one goes to
#: the other server, or to the journal. Any other error is the command's own and is raised.
UNREACHABLE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)


class MasterDown(RedisConnectionError):
    """A write whose answer only the master has, while the master is down: nothing was
    written, nothing journaled."""


#: A key no cache writes: a read of a key with a journaled write asks for this one instead,
#: so Redis itself answers what a missing key answers, whatever the command.
ABSENT = b"\x00distinct_counter:absent"

#: Runs a pipeline's commands (``(args, options)`` pairs) on a client, returns the replies.
Run = Callable[[redis.Redis, list[tuple[Sequence[Any], dict[str, Any]]]], Any]

#: Seconds between two looks at the journal file by reads while it is empty: another
#: process's journaled keys read as missing here within this (this process's at once).
LOOK = 0.05

#: Keys remembered at most; past it the node reads everything from the master for the
#: window instead (the memory stays bounded, the reads stay exact).
MAX_REMEMBERED = 100_000


def execute(client: Any, args: Sequence[Any], options: dict[str, Any]) -> Any:
    """``client.execute_command`` (untyped in redis-py)."""
    return client.execute_command(*args, **options)


class Node:
    """The routing state of one master/replica pair in this process."""

    def __init__(
        self,
        master: redis.Redis,
        replica: redis.Redis,
        journal: FileJournal,
        *,
        window: float,
        replay_mode: str,
        retry_interval: float | None,
        label: str,
    ) -> None:
        self.master = master
        self.replica = replica
        self.journal = journal
        self.window = window
        self.replay_mode = replay_mode
        self.master_breaker = Breaker(
            label, "cache master", "writes are journaled and replayed when it is back"
        )
        self.replica_breaker = Breaker(label, "cache replica", "reads go to the master")
        self.master_breaker.interval = self.replica_breaker.interval = retry_interval
        #: Key -> monotonic deadline until which this process reads it from the master.
        self.recent: dict[bytes, float] = {}
        #: Until when every read goes to the master (after a FLUSHDB, or too many keys).
        self.all_until = 0.0
        #: Until when a read of a listing goes to the master: the last write's deadline.
        self.latest = 0.0
        #: Keys with a journaled write not yet replayed (by any process of the node): they
        #: read as missing. Read from the journal whenever its file changed.
        self.absent: set[bytes] = set()
        #: A journaled FLUSHDB/FLUSHALL not yet replayed: every key reads as missing.
        self.flushed = False
        self._seen: tuple[int, int] | None = None
        # How much of the journal file ``absent`` and ``flushed`` cover, and its last line.
        self._offset = 0
        self._tail = b""
        self._look_at = 0.0  # when reads look at the journal file again
        self.lock = threading.Lock()

    # -- reads ----------------------------------------------------------------------------

    def read(
        self, name: str, args: Sequence[Any], options: dict[str, Any], *, prefer_master: bool
    ) -> Any:
        """Run the read ``args`` (named ``name``): on the master for keys this process wrote
        within the window (or when ``prefer_master``), else on the replica; on the other one
        when that one fails."""
        positions = cmd.key_positions(name, args)
        now = time.monotonic()
        if not ((self.absent or self.flushed or now >= self._look_at) and self._masking(now)):
            if prefer_master or self._wants_master(name, args, positions, now):
                return self._send(lambda client: execute(client, args, options), True)
            return self._from_replica(args, options)
        args = self._masked(args, positions)
        to_master = prefer_master or self._wants_master(name, args, positions, now)
        reply = self._send(lambda client: execute(client, args, options), to_master)
        return self._unlisted(name, reply) if name in cmd.LISTINGS else reply

    def _from_replica(self, args: Sequence[Any], options: dict[str, Any]) -> Any:
        """:meth:`_send` to the replica, inlined: the path of nearly every read (nothing
        journaled, the replica up, no recent write of the keys)."""
        if self.replica_breaker.allow():
            try:
                reply = execute(self.replica, args, options)
            except UNREACHABLE as exc:
                self.replica_breaker.failure(exc)
            else:
                if self.replica_breaker.failed:
                    self.replica_breaker.success()
                return reply
            try:
                reply = execute(self.master, args, options)
            except UNREACHABLE as exc:
                self.master_breaker.failure(exc)
                raise
            self.master_breaker.success()
            return reply
        return self._send(lambda client: execute(client, args, options), True)

    def _wants_master(self, name: str, args: Sequence[Any], positions: Any, now: float) -> bool:
        if not self.replica_breaker.allow():
            return True
        if self.all_until > now:
            return True
        recent = self.recent
        if not recent:
            return False
        if name in cmd.LISTINGS:
            return self.latest > now
        for i in positions:
            deadline = recent.get(cmd.normalize(args[i]))
            if deadline is not None and deadline > now:
                return True
        return False

    def read_pipeline(self, stack: list[tuple[Sequence[Any], dict[str, Any]]], run: Run) -> Any:
        """Run a pipeline of reads where :meth:`read` would run its commands: on the master
        when any of them asks for it. ``run(client, stack)`` executes it on a client."""
        now = time.monotonic()
        masked = self._masking(now)
        to_master = False
        routed = []
        for args, options in stack:
            name = cmd.name_of(args)
            positions = cmd.key_positions(name, args)
            to_master = to_master or self._wants_master(name, args, positions, now)
            routed.append((self._masked(args, positions) if masked else args, options))
        return self._send(lambda client: run(client, routed), to_master)

    def _send(self, call: Callable[[redis.Redis], Any], to_master: bool) -> Any:
        first, second = (self.master, self.replica) if to_master else (self.replica, self.master)
        breakers = (self.master_breaker, self.replica_breaker)
        first_breaker, second_breaker = breakers if to_master else breakers[::-1]
        if first_breaker.allow():
            try:
                reply = call(first)
            except UNREACHABLE as exc:
                first_breaker.failure(exc)
            else:
                first_breaker.success()
                return reply
        try:
            reply = call(second)
        except UNREACHABLE as exc:
            second_breaker.failure(exc)
            raise
        second_breaker.success()
        return reply

    def _masking(self, now: float) -> bool:
        """Whether some keys read as missing: those the journal names (any process's
        entries), until a replay empties it; a replay is tried first when the master may
        be back. While nothing is masked, the file is looked at every ``LOOK`` seconds."""
        self._look_at = now + LOOK
        if self._refresh() and self.master_breaker.allow():
            self.replay()
            return self._refresh()
        return bool(self.absent or self.flushed)

    def _refresh(self) -> bool:
        signature = self.journal.signature()
        if signature != self._seen:
            with self.lock:
                if signature is None:  # replayed
                    self.absent, self.flushed, self._offset, self._tail = set(), False, 0, b""
                else:
                    self._read_journal()
                self._seen = signature
        return bool(self.absent or self.flushed)

    def _read_journal(self) -> None:
        """Add what was journaled since the last look (re-read all after a replay)."""
        entries, self._offset, self._tail, whole = self.journal.read_from(self._offset, self._tail)
        absent = set() if whole else set(self.absent)
        flushed = False if whole else self.flushed
        for entry in entries:
            if entry[0] in cmd.FLUSHES:
                flushed = True
            else:
                keys = entry[1:2] if entry[0] == "ADD" else entry[1:]
                absent.update(cmd.normalize(k) for k in keys)
        self.absent, self.flushed = absent, flushed

    def _masked(self, args: Sequence[Any], positions: Any) -> list[Any]:
        masked = list(args)
        for i in positions:
            if self.flushed or cmd.normalize(args[i]) in self.absent:
                masked[i] = ABSENT
        return masked

    def _unlisted(self, name: str, reply: Any) -> Any:
        """A listing without the keys that read as missing."""

        def keep(keys: list[Any]) -> list[Any]:
            if self.flushed:
                return []
            return [k for k in keys if cmd.normalize(k) not in self.absent]

        if name == "KEYS":
            return keep(reply)
        if name == "SCAN":
            return (reply[0], keep(reply[1]))
        return reply

    # -- writes ---------------------------------------------------------------------------

    def write(self, name: str, args: Sequence[Any], options: dict[str, Any]) -> Any:
        """Run the write ``args`` (named ``name``) on the master, after replaying the
        journal; journal it (or raise) when the master fails."""
        if self._master_ready():
            try:
                reply = execute(self.master, args, options)
            except UNREACHABLE as exc:
                self.master_breaker.failure(exc)
            else:
                self.master_breaker.success()
                self.remember(name, args)
                return reply
        return self.defer(name, args)

    def write_pipeline(
        self, stack: list[tuple[Sequence[Any], dict[str, Any]]], run: Run
    ) -> list[Any]:
        """Run a pipeline on the master as :meth:`write` runs a command; journal each of its
        commands when the master fails."""
        if self._master_ready():
            try:
                replies: list[Any] = run(self.master, stack)
            except UNREACHABLE as exc:
                self.master_breaker.failure(exc)
            else:
                self.master_breaker.success()
                for args, _ in stack:
                    self.remember(cmd.name_of(args), args)
                return replies
        return [self.defer(cmd.name_of(args), args) for args, _ in stack]

    def _master_ready(self) -> bool:
        """Whether writes may go to the master now: it is not known down, and the journal
        (anyone's) is replayed first, so that writes reach it in order."""
        if not self.master_breaker.allow():
            return False
        if self.journal:
            self.replay()
        return self.master_breaker.allow()

    def remember(self, name: str, args: Sequence[Any]) -> None:
        """Read what ``args`` wrote from the master for the window."""
        if name in cmd.READS:
            return
        deadline = time.monotonic() + self.window
        self.latest = deadline
        if name in cmd.FLUSHES:
            self.all_until = deadline
            self.recent = {}
            return
        recent = self.recent
        for i in cmd.key_positions(name, args):
            recent[cmd.normalize(args[i])] = deadline
        if len(recent) > MAX_REMEMBERED:
            self._forget()

    def _forget(self) -> None:
        """Drop the expired names. Every read goes to the master for the window meanwhile:
        a name another thread remembered during the swap is not lost to a stale read."""
        with self.lock:
            now = time.monotonic()
            self.all_until = now + self.window
            kept = {k: d for k, d in self.recent.items() if d > now}
            if len(kept) > MAX_REMEMBERED // 2:
                kept = {}
            self.recent = kept

    def defer(self, name: str, args: Sequence[Any]) -> Any:
        """Journal a write the master could not take, and answer as the master would have.

        :raises MasterDown: the write's answer is the master's alone (``INCRBY``,
            ``SET NX``, a script...); nothing is journaled.
        """
        if not cmd.deferred(name, args):
            raise MasterDown(
                f"the cache master is down, and {name}'s answer is the master's alone; "
                "nothing was written"
            )
        keys = cmd.keys_of(name, args)
        answer = self._answer(name, keys)
        self.journal.extend(self._entries(name, args, keys))
        self._refresh()
        return answer

    def _answer(self, name: str, keys: list[Any]) -> Any:
        """What the master would have answered, as far as the replica knows."""
        if name in cmd.SETS or name in cmd.FLUSHES:
            return True
        try:
            found = int(self.read("EXISTS", ("EXISTS", *keys), {}, prefer_master=False))
        except UNREACHABLE:
            found = len(keys)  # Both down: as if every key existed.
        return found if name in cmd.DELETES else bool(found)

    def _entries(self, name: str, args: Sequence[Any], keys: list[Any]) -> list[Entry]:
        if name in cmd.FLUSHES:
            return [tuple(args)]
        if name not in cmd.SETS or self.replay_mode == "delete":
            return [("DEL", *keys)]
        if name == "MSET":
            return [("ADD", args[i], args[i + 1], None) for i in range(1, len(args), 2)]
        value = args[3] if name in ("SETEX", "PSETEX") else args[2]
        ttl = cmd.set_ttl_ms(args)
        deadline = None if ttl is None else time.time() * 1000 + ttl
        return [("ADD", args[1], value, deadline)]

    def replay(self) -> int:
        """Replay the journal on the master, in order; stop at its first failure. Returns
        how many entries are left."""
        with self.journal.taken() as entries:
            while entries:
                try:
                    replay(self.master, entries[0])
                except UNREACHABLE as exc:
                    self.master_breaker.failure(exc)
                    break
                self.master_breaker.success()
                entries.pop(0)
            return len(entries)
