"""The watchdog that stops the servers of ``distinct_counter.testing.servers`` once the process
that started them is gone, however it went.

Why a separate process: ``finally`` and ``atexit`` run on a normal exit and on Ctrl-C, but
not when the process is killed (SIGKILL, the OOM killer), leaves through ``os._exit`` (as
mypy's Django plugin does after loading the test settings), or dies of a signal it does not
handle (SIGTERM, as sent by ``timeout``, systemd or ``docker stop``). The servers run in
sessions of their own, so nothing else stops them: they would run on, and their temporary
directories stay, until the machine reboots.

The reaper runs in a session of its own too (a signal to the parent's process group does not
reach it) and reads its standard input: a pipe whose only write end the parent holds. The
kernel closes that end when the parent dies, whatever the cause, and the reaper reads EOF.
Until then the parent writes one tab-separated line per thing to clean:

``process<TAB>PID<TAB>DIR``
    a process (a ``redis-server``) whose working directory is ``DIR``: SIGTERM, then SIGKILL
    if it is still alive after a few seconds;
``postgres<TAB>DATADIR``
    the postmaster named by ``DATADIR/postmaster.pid``: SIGQUIT (immediate shutdown), then
    SIGKILL;
``remove<TAB>DIR``
    a directory to delete once those processes are gone.

A process is signalled only while its working directory is still the one given (both
``redis-server --dir`` and the postmaster change into their directory), so a PID reused by
another process since is left alone. At EOF the reaper cleans what is still there, then exits.
Run as ``python -m distinct_counter.testing.reaper`` with the pipe as standard input.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GRACE = 5.0  # seconds a server has to exit after its first signal, before SIGKILL


def owned(pid: int, directory: str) -> bool:
    """Whether ``pid`` is alive (not a zombie) and works in ``directory``."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:  # gone, a zombie, or not ours to look at
        return not os.path.isdir("/proc/self") and _exists(pid)
    return cwd.removesuffix(" (deleted)") == directory


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def postmaster_pid(datadir: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(os.path.join(datadir, "postmaster.pid")) as f:
            return int(f.readline())
    return None


def wait_gone(alive: dict[int, str], timeout: float = GRACE) -> dict[int, str]:
    """Wait up to ``timeout`` for the processes to go; return those still there."""
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = {pid: d for pid, d in alive.items() if owned(pid, d)}
    return alive


def reap(processes: dict[int, str], postgres: set[str], remove: set[str]) -> None:
    """Stop what is still running, wait for it to go, delete the directories."""
    targets: dict[int, tuple[str, int]] = {pid: (d, signal.SIGTERM) for pid, d in processes.items()}
    for datadir in postgres:
        pid = postmaster_pid(datadir)
        if pid is not None:
            targets[pid] = (datadir, signal.SIGQUIT)
    alive = {pid: d for pid, (d, _) in targets.items() if owned(pid, d)}
    for pid in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, targets[pid][1])
    alive = wait_gone(alive)
    for pid in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(alive)
    for directory in remove:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    # Ctrl-C and a hang-up reach the whole terminal session; this process leaves at EOF only.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    processes: dict[int, str] = {}
    postgres: set[str] = set()
    remove: set[str] = set()
    for raw in sys.stdin.buffer:
        kind, *args = os.fsdecode(raw.rstrip(b"\n")).split("\t")
        if kind == "process":
            processes[int(args[0])] = args[1]
        elif kind == "postgres":
            postgres.add(args[0])
        elif kind == "remove":
            remove.add(args[0])
    reap(processes, postgres, remove)


# -- the side of the process that starts servers --------------------------------------------------


class _Reaper:
    """This process's end of the pipe to its reaper, which is started on first use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner = 0  # the pid that started the reaper: a forked child starts its own
        self.fd = -1
        self.procs: list[subprocess.Popen[bytes]] = []  # kept: no "still running" warning

    def tell(self, *fields: str | Path | int) -> None:
        line = "\t".join(str(f) for f in fields)
        if "\n" in line or line.count("\t") != len(fields) - 1:
            raise ValueError(f"cannot pass {fields!r} to the reaper")
        with self.lock:
            if self.owner != os.getpid():
                self._start()
            os.write(self.fd, (line + "\n").encode())  # shorter than PIPE_BUF: atomic

    def _start(self) -> None:
        read_fd, write_fd = os.pipe()
        package_root = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (package_root, os.environ.get("PYTHONPATH")) if p
            ),
        }
        try:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "distinct_counter.testing.reaper"],
                    stdin=read_fd,
                    stdout=subprocess.DEVNULL,
                    cwd="/",
                    env=env,
                    start_new_session=True,
                )
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        self.owner, self.fd = os.getpid(), write_fd

    def forget_after_fork(self) -> None:
        """In a forked child: let the parent alone hold the pipe (its exit is the signal)."""
        if self.fd >= 0:
            os.close(self.fd)
        self.owner, self.fd = 0, -1
        self.lock = threading.Lock()


_reaper = _Reaper()
os.register_at_fork(after_in_child=_reaper.forget_after_fork)
tell_reaper = _reaper.tell


def stop_at_exit(pid: int, workdir: Path) -> None:
    """Have the reaper stop process ``pid`` (SIGTERM, then SIGKILL) when this process is gone,
    if it still runs in ``workdir`` (its working directory tells it from a reused pid)."""
    tell_reaper("process", pid, Path(workdir).resolve())


def remove_at_exit(path: Path) -> None:
    """Have the reaper delete directory ``path`` when this process is gone."""
    tell_reaper("remove", Path(path).resolve())


def temp_root(prefix: str = "distinct_counter-") -> Path:
    """A new temporary directory, deleted when this process is gone, however it went."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    remove_at_exit(root)
    return root


def exit_on_sigterm() -> None:
    """Make SIGTERM (``timeout``, systemd, ``docker stop``) run the cleanup Ctrl-C runs.

    Python's default for SIGTERM is to die at once, without ``finally`` blocks nor ``atexit``
    handlers: the reaper would still stop the servers, but the command could not shut its
    servers down cleanly (the demo's Redis saves its data then). Here SIGTERM raises
    ``SystemExit(143)`` in the main thread; a second SIGTERM during the cleanup is ignored.
    """

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    main()
