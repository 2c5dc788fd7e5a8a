"""A TCP proxy that delays every byte it forwards by a fixed time, and a Redis replica that
replicates through one: a replica that really lags behind its master.

Part of ``distinct_counter.testing``, the test and demo helpers: the library never imports it.

Why a proxy: a replica on loopback receives a write within microseconds of its master, so a
client that reads its own writes from the replica passes every test by luck. Placed between
the replica and its master, the proxy holds the replication stream back by ``delay`` seconds
(and the replica's acknowledgements too, so ``WAIT`` sees the lag as well). Every chunk read
from one side is written to the other ``delay`` seconds after it arrived, in order: the lag is
fixed, it does not grow with the traffic.

Why a process of its own, not a thread of the tests: a thread would forward only when the
test's Python code lets go of the GIL, so the delay would depend on what the test does (a
busy loop, a long ``pickle``), and the proxy would stop with a test that hangs in C code.

Like the servers of ``distinct_counter.testing.servers``, the proxy runs in a session and a
working directory of its own, and the reaper (``distinct_counter.testing.reaper``) stops it
once the process that started it is gone, however it went. Its listening socket is bound by
the parent and handed to it open: the port accepts connections from the moment ``start()``
returns, and no other process can take the port in between.

Run as ``python -m distinct_counter.testing.lag --fd N --target-port PORT --delay SECONDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from distinct_counter.testing.reaper import stop_at_exit
from distinct_counter.testing.servers import RedisServer, ServerProcess

__all__ = ["DEFAULT_DELAY", "LagProxy", "lagging_replica", "wait_in_sync"]

#: Seconds the replication stream is held back by default: far above loopback's latency, far
#: below any timeout of Redis's replication or of the clients.
DEFAULT_DELAY = 0.04

_CHUNK = 65536


@dataclass
class LagProxy(ServerProcess):
    """A process forwarding TCP connections on ``port`` to ``target_port``, ``delay`` late.

    ``stop()`` ends it and every connection through it; ``kill()`` too, as a crash would.
    """

    workdir: Path
    target_port: int
    delay: float = DEFAULT_DELAY
    port: int = 0  # 0: a free port, chosen when the socket is bound by start()
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LagProxy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        log = (self.workdir / "lag.log").open("ab")
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
            self.port = int(listener.getsockname()[1])
            package_root = str(Path(__file__).resolve().parents[2])
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    p for p in (package_root, os.environ.get("PYTHONPATH")) if p
                ),
            }
            # Started in its directory: the reaper knows it by its working directory.
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distinct_counter.testing.lag",
                    "--fd",
                    str(listener.fileno()),
                    "--target-port",
                    str(self.target_port),
                    "--delay",
                    repr(self.delay),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                pass_fds=(listener.fileno(),),
                start_new_session=True,
                cwd=self.workdir,
                env=env,
            )
        finally:
            listener.close()  # the child holds its own copies
            log.close()
        stop_at_exit(self.proc.pid, self.workdir)
        return self


def wait_in_sync(replica: RedisServer, timeout: float = 30) -> None:
    """Wait until ``replica`` has loaded its master's data and follows its stream."""
    client = redis.Redis(port=replica.port, socket_timeout=5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with contextlib.suppress(redis.RedisError):
                info = client.info("replication")
                if info.get("master_link_status") == "up":
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica on port {replica.port} not in sync after {timeout}s")
            time.sleep(0.05)
    finally:
        client.close()


def lagging_replica(
    workdir: Path, master: RedisServer, delay: float = DEFAULT_DELAY
) -> tuple[RedisServer, LagProxy]:
    """Start a replica of ``master`` that replicates through a ``LagProxy``; wait until it is
    in sync. Stop the replica first, then the proxy."""
    proxy = LagProxy(workdir / "lag", target_port=master.port, delay=delay).start()
    try:
        replica = RedisServer(workdir / "replica", master=master, master_port=proxy.port).start()
        wait_in_sync(replica)
    except BaseException:
        proxy.stop()
        raise
    return replica, proxy


# -- the proxy process ----------------------------------------------------------------------------


async def _forward(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` seconds after it was read.

    Reading and writing run apart, so a chunk waits ``delay`` from its own arrival, not from
    the previous chunk's delivery: the lag stays fixed however much flows.
    """
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        try:
            while data := await reader.read(_CHUNK):
                chunks.put_nowait((loop.time() + delay, data))
        except OSError:
            pass
        chunks.put_nowait((loop.time() + delay, b""))

    reading = asyncio.create_task(read())
    try:
        while True:
            due, data = await chunks.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        reading.cancel()
        writer.close()


async def _connection(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    target_port: int,
    delay: float,
) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        client_writer.close()  # as a refused connection would: the target is down
        return
    # When one direction ends (a side closed), the other is closed too, after its pending
    # chunks: a proxy that kept half a connection open would hide a server that went away.
    directions = [
        asyncio.create_task(_forward(client_reader, server_writer, delay)),
        asyncio.create_task(_forward(server_reader, client_writer, delay)),
    ]
    await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.sleep(delay)
    for writer in (client_writer, server_writer):
        writer.close()
    for task in directions:
        task.cancel()


async def _serve(fd: int, target_port: int, delay: float) -> None:
    listener = socket.socket(fileno=fd)
    server = await asyncio.start_server(
        lambda r, w: _connection(r, w, target_port, delay), sock=listener
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="the listening socket, inherited")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=DEFAULT_DELAY)
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole terminal session; SIGTERM (stop(), the reaper) ends the proxy.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_serve(args.fd, args.target_port, args.delay))


if __name__ == "__main__":
    main()
