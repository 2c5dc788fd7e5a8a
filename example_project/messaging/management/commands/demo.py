"""``manage.py demo``: the example end to end.

Default: migrate, load sample messages (``--rows``, 100,000 by default; only the rows missing
from an earlier run are added), print each distinct count from Redis next to the database's
``COUNT(DISTINCT)`` with both timings, then serve the status page (``--no-serve`` exits).

``--topology``: the whole seed topology on this machine, from pip-shipped binaries: a
PostgreSQL primary and its streaming replica, a Redis master and two replicas, and two Django
nodes served by gunicorn, each reading its own Redis replica. A message posted to node 1 is
shown counted on node 2.

SIGTERM (``timeout``, systemd, ``docker stop``) stops it as Ctrl-C does: the nodes and servers
are stopped and the temporary directory deleted. Should the command die without cleaning up
(SIGKILL), the reaper of ``distinct_counter.testing.servers`` does it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from distinct_counter import DistinctCount
from distinct_counter.testing.servers import exit_on_sigterm
from messaging.management.commands.seed_messages import load_messages
from messaging.models import Message

PROJECT_DIR = Path(__file__).resolve().parents[3]


def timed(fn: Callable[[], Any], repeat: int = 5) -> tuple[Any, float]:
    """The result of ``fn`` and its median wall time in seconds."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return result, statistics.median(times)


def count_distinct(field: str) -> int:
    column = Message._meta.get_field(field).column
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT COUNT(DISTINCT {connection.ops.quote_name(column)}) "
            f"FROM {connection.ops.quote_name(Message._meta.db_table)}"
        )
        return int(cur.fetchone()[0])


class Command(BaseCommand):
    help = "Run the example: load messages, compare counts, serve the status page."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--rows", type=int, default=100_000, help="messages to hold (default 100000)"
        )
        parser.add_argument(
            "--no-serve",
            action="store_true",
            help="exit after printing instead of serving the status page",
        )
        parser.add_argument(
            "--addrport",
            default="127.0.0.1:8000",
            help="where to serve the status page (default 127.0.0.1:8000)",
        )
        parser.add_argument(
            "--topology",
            action="store_true",
            help="start PostgreSQL primary+replica, Redis master+2 replicas and "
            "two gunicorn nodes; show a write on node 1 counted on node 2",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["rows"] < 0:
            raise CommandError("--rows must be >= 0")
        exit_on_sigterm()
        if options["topology"]:
            self.topology(options)
        else:
            self.local(options)

    # -- the embedded default ----------------------------------------------------------------

    def local(self, options: dict[str, Any]) -> None:
        verbosity = int(options["verbosity"])
        call_command("migrate", verbosity=0)
        missing = options["rows"] - Message.objects.count()
        if missing > 0:
            self.stdout.write(f"Loading {missing} sample messages...")
            load_messages(
                missing,
                seed=Message.objects.count(),
                progress=verbosity >= 1 and sys.stderr.isatty(),
            )
        if any(DistinctCount.read(f, Message).state != "ok" for f in Message.counted_fields):
            call_command("rebuild_counts", "messaging", verbosity=0)
        location = settings.CACHES["default"].get("LOCATION", "topology")
        self.stdout.write(
            f"{Message.objects.count()} messages ({connection.vendor}, Redis at {location})"
        )
        self.stdout.write(
            f"{'field':<10} {'Redis':>10} {'time':>10}   {'COUNT(DISTINCT)':>15} "
            f"{'time':>10}   speed-up"
        )
        for field in Message.counted_fields:
            result, redis_s = timed(lambda: DistinctCount.read(field, Message))  # noqa: B023
            db, db_s = timed(lambda: count_distinct(field), repeat=3)  # noqa: B023
            self.stdout.write(
                f"{field:<10} {result.count:>10} {redis_s * 1e3:>8.3f}ms   {db:>15} "
                f"{db_s * 1e3:>8.1f}ms   {db_s / redis_s:>7.0f}x"
                + ("" if result.count == db else "   MISMATCH")
            )
            if result.source != "redis":
                self.stdout.write(
                    f"  ({field}: answered by the {result.source}, counter {result.state})"
                )
        if not options["no_serve"]:
            self.stdout.write(f"Status page: http://{options['addrport']}/  (Ctrl-C to stop)")
            call_command("runserver", options["addrport"], use_reloader=False, use_threading=True)

    # -- the whole topology ------------------------------------------------------------------

    def topology(self, options: dict[str, Any]) -> None:
        from distinct_counter.testing.servers import Topology, free_port, stop_at_exit

        beside_python = Path(sys.executable).parent / "gunicorn"
        if shutil.which("gunicorn") is None and not beside_python.exists():
            raise CommandError("gunicorn is needed: pip install -e '.[example]'")
        self.stdout.write("Starting PostgreSQL primary + replica, Redis master + 2 replicas...")
        top = Topology.start(dbname="messages")
        nodes: list[subprocess.Popen[bytes]] = []
        try:
            base = {
                **os.environ,
                "DATABASE_URL": top.pg_primary.url("messages"),
                "REPLICA_URLS": top.pg_replica.url("messages"),
                "REDIS_MASTER_URL": top.redis_master.url(),
                "PYTHONPATH": str(PROJECT_DIR),
            }
            envs = [{**base, "REDIS_REPLICA_URL": r.url()} for r in top.redis_replicas]
            manage = [sys.executable, str(PROJECT_DIR / "manage.py")]
            subprocess.run([*manage, "migrate", "-v", "0"], env=envs[0], check=True)
            subprocess.run(
                [*manage, "seed_messages", str(min(options["rows"], 20_000)), "-v", "0"],
                env=envs[0],
                check=True,
            )
            ports = [free_port() for _ in envs]
            gunicorn = str(Path(sys.executable).parent / "gunicorn")
            if not Path(gunicorn).exists():
                gunicorn = str(shutil.which("gunicorn"))
            extra = []
            # Recent gunicorns open a control socket in ~/.gunicorn, which two nodes share.
            if (
                "--no-control-socket"
                in subprocess.run([gunicorn, "--help"], capture_output=True, text=True).stdout
            ):
                extra.append("--no-control-socket")
            for port, env in zip(ports, envs, strict=True):
                nodes.append(
                    subprocess.Popen(
                        [
                            gunicorn,
                            "example_project.wsgi",
                            "-b",
                            f"127.0.0.1:{port}",
                            "-w",
                            "2",
                            "--chdir",
                            str(PROJECT_DIR),
                            "--log-level",
                            "warning",
                            *extra,
                        ],
                        env=env,
                        cwd=PROJECT_DIR,
                    )
                )
                stop_at_exit(nodes[-1].pid, PROJECT_DIR)
            urls = [f"http://127.0.0.1:{port}" for port in ports]
            for url in urls:
                _wait_for(lambda u=url: _get(u + "/api/stats"))  # type: ignore[misc]
            before = _count(_get(urls[1] + "/api/stats"), "username")
            name = f"demo-user-{int(time.time())}"
            _post(urls[0] + "/api/messages", {"username": name, "city": "Reykjavík"})
            self.stdout.write(f"node 1 ({urls[0]}): POST /api/messages username={name}")
            after = _wait_for(
                lambda: (
                    _count(_get(urls[1] + "/api/stats"), "username")
                    if _count(_get(urls[1] + "/api/stats"), "username") > before
                    else None
                )
            )
            stats = _get(urls[1] + "/api/stats")
            row = next(r for r in stats["counts"] if r["field"] == "username")
            self.stdout.write(
                f"node 2 ({urls[1]}): distinct usernames {before} -> {after} "
                f"(source {row['source']}, state {row['state']})"
            )
            if not options["no_serve"]:
                self.stdout.write(f"Status pages: {urls[0]}/ and {urls[1]}/  (Ctrl-C to stop)")
                try:
                    while all(n.poll() is None for n in nodes):
                        time.sleep(1)
                except KeyboardInterrupt:
                    pass
        finally:
            for node in nodes:
                node.terminate()
            for node in nodes:
                try:
                    node.wait(10)
                except subprocess.TimeoutExpired:
                    node.kill()
            top.stop()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _post(url: str, data: Any) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(data).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _count(stats: dict[str, Any], field: str) -> int:
    return int(next(r["count"] for r in stats["counts"] if r["field"] == field))


def _wait_for(fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = fn()
            if result is not None:
                return result
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise CommandError("timed out waiting for the nodes")
        time.sleep(0.2)
