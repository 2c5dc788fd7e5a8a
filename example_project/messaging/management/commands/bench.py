"""``manage.py bench``: what counting costs and what it saves, on PostgreSQL and Redis.

Every figure is a ratio against a baseline measured in the same run, on the same servers, so
a noisy or shared machine moves both sides alike:

* ``DistinctCount.get`` against ``SELECT COUNT(DISTINCT field)`` (a speed-up);
* a ``save()`` of a new ``Message`` (counted) against the same save of a ``PlainMessage``
  (identical, not counted), one per transaction and 1,000 in one transaction (medians of
  ``--repeat`` rounds, counted and plain rounds interleaved);
* ``rebuild`` of each counter against the bare ``GROUP BY`` query it streams, and the
  rebuild's peak Python memory (``tracemalloc``) at ``--rows`` and at 5x ``--rows``;
* Redis memory per distinct value (``MEMORY USAGE`` of the counter's hash over ``HLEN``)
  against the bytes of the values themselves.

When the default database is not PostgreSQL (the example's embedded SQLite), the command
starts a throwaway PostgreSQL server and Redis server (``distinct_counter.testing.servers``)
and runs itself again in a subprocess pointed at them (``DATABASE_URL``,
``REDIS_MASTER_URL``), then stops them (on SIGTERM too, as on Ctrl-C). On a PostgreSQL you
configured yourself it empties the two message tables first, so it asks for ``--truncate``
when they hold rows.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import django
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.db.models import Model
from django.test.utils import override_settings

from distinct_counter.api import Counter, DistinctCount, counters, rebuild
from distinct_counter.connection import get_client
from distinct_counter.counting.conf import conf
from distinct_counter.testing.servers import exit_on_sigterm, free_port
from messaging import sample
from messaging.models import Message, PlainMessage

PROJECT_DIR = Path(__file__).resolve().parents[3]
TOPOLOGY_VARS = ("DATABASE_URL", "REPLICA_URLS", "REDIS_MASTER_URL", "REDIS_REPLICA_URL")
COPY_CHUNK = 100_000


@dataclass
class Figure:
    """One line of the results: ``ratio`` is ``measured / baseline``, except for speed-ups
    (``higher_is_better``), where it is ``baseline / measured``."""

    name: str
    unit: str
    measured: float
    baseline: float
    ratio: float
    target: float | None
    higher_is_better: bool = False
    note: str = ""

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f"{'>=' if self.higher_is_better else '<='} {self.target:g}x"

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "target": self.target_text() if self.target else None,
            "target_ratio": self.target,
            "passed": self.passed,
        }


def figure(
    name: str,
    unit: str,
    measured: float,
    baseline: float,
    target: float | None,
    *,
    higher_is_better: bool = False,
    note: str = "",
) -> Figure:
    ratio = baseline / measured if higher_is_better else measured / baseline
    return Figure(name, unit, measured, baseline, ratio, target, higher_is_better, note)


def median_time(fn: Callable[[], Any], repeat: int, warmup: int = 0) -> float:
    """The median wall time of ``fn`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _quote(name: str) -> str:
    return str(connection.ops.quote_name(name))


def _table(model: type[Model]) -> str:
    return _quote(model._meta.db_table)


def _column(model: type[Model], field: str) -> str:
    return _quote(model._meta.get_field(field).column)


# -- loading -----------------------------------------------------------------------------------


def _csv_chunks(count: int, seed: int) -> Iterator[io.StringIO]:
    """The sample messages as CSV (an unquoted empty field is NULL to ``COPY ... csv``)."""
    created = "2026-01-01 00:00:00+00"
    rows = sample.messages(count, seed=seed)
    while chunk := list(itertools.islice(rows, COPY_CHUNK)):
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        for m in chunk:
            writer.writerow((m.username, m.city, m.text, created))
        buffer.seek(0)
        yield buffer


def copy_messages(count: int, seed: int) -> None:
    """``COPY`` ``count`` sample messages into ``Message``'s table: no ORM, so no counting;
    the counters are rebuilt afterwards, as after any write the ORM cannot see."""
    columns = ", ".join(_column(Message, f) for f in ("username", "city", "text", "created_at"))
    sql = f"COPY {_table(Message)} ({columns}) FROM STDIN WITH (FORMAT csv)"
    with connection.cursor() as cur:
        for buffer in _csv_chunks(count, seed):
            cur.cursor.copy_expert(sql, buffer)


def copy_to_plain() -> None:
    """Give ``PlainMessage`` the same rows as ``Message``, so both tables are alike."""
    columns = ", ".join(_column(Message, f) for f in ("username", "city", "text", "created_at"))
    with connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO {_table(PlainMessage)} ({columns}) "
            f"SELECT {columns} FROM {_table(Message)}"
        )


def analyze() -> None:
    with connection.cursor() as cur:
        cur.execute(f"VACUUM ANALYZE {_table(Message)}")
        cur.execute(f"VACUUM ANALYZE {_table(PlainMessage)}")


# -- what is measured --------------------------------------------------------------------------


def count_distinct(field: str) -> int:
    with connection.cursor() as cur:
        cur.execute(f"SELECT COUNT(DISTINCT {_column(Message, field)}) FROM {_table(Message)}")
        return int(cur.fetchone()[0])


def group_by(field: str, chunk_size: int) -> int:
    """The bare query a rebuild streams: ``SELECT field, COUNT(*) ... GROUP BY field``, read
    to the end through a server-side cursor of ``chunk_size`` rows. Returns its row count."""
    column = _column(Message, field)
    sql = (
        f"SELECT {column}, COUNT(*) FROM {_table(Message)} WHERE {column} IS NOT NULL "
        f"GROUP BY {column}"
    )
    connection.ensure_connection()
    with transaction.atomic():
        cur = connection.connection.cursor(name="bench_group_by")
        cur.itersize = chunk_size
        cur.execute(sql)
        rows = sum(1 for _ in cur)
        cur.close()
    return rows


def save_rounds(per_round: int, repeat: int, in_transaction: bool) -> tuple[float, float]:
    """Median seconds per ``save()`` of a new row, counted and plain, over ``repeat`` rounds
    of ``per_round`` saves each; the two models' rounds alternate (and swap order) so drift
    in the machine's speed hits both."""
    counted: list[float] = []
    plain: list[float] = []
    rows = list(itertools.islice(sample.messages(per_round, seed=7), per_round))

    def run(model: type[Model]) -> float:
        objs = [model(username=m.username, city=m.city, text=m.text) for m in rows]
        started = time.perf_counter()
        if in_transaction:
            with transaction.atomic():
                for obj in objs:
                    obj.save()
        else:
            for obj in objs:
                obj.save()
        return (time.perf_counter() - started) / per_round

    run(Message)  # warm up connections, prepared scripts and caches
    run(PlainMessage)
    for i in range(repeat):
        order = (Message, PlainMessage) if i % 2 == 0 else (PlainMessage, Message)
        for model in order:
            (counted if model is Message else plain).append(run(model))
    return statistics.median(counted), statistics.median(plain)


def rebuild_all(counted: tuple[Counter, ...]) -> None:
    rebuild(*counted)


def peak_memory(fn: Callable[[], Any]) -> int:
    """The peak of Python allocations (``tracemalloc``) while ``fn`` runs, in bytes."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def redis_bytes_per_value(counter: Counter) -> tuple[float, float, int]:
    """Redis bytes per distinct value of the counter's hash, the mean UTF-8 length of the
    values themselves, and the number of values."""
    client = get_client(conf.CACHE, write=False)
    key = counter.key("values")
    values = int(client.hlen(key))
    used = int(client.memory_usage(key, samples=0) or 0)
    raw = sum(len(v) for v, _ in client.hscan_iter(key, count=5000))
    return used / max(values, 1), raw / max(values, 1), values


def machine() -> dict[str, Any]:
    memory = ""
    try:
        with open("/proc/meminfo") as meminfo:
            kb = int(meminfo.readline().split()[1])
        memory = f"{kb / 1024**2:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    with connection.cursor() as cur:
        cur.execute("SHOW server_version")
        postgres = cur.fetchone()[0]
        durability = {}
        for name in ("fsync", "synchronous_commit"):
            cur.execute(f"SHOW {name}")
            durability[name] = cur.fetchone()[0]
    info = get_client(conf.CACHE).info("server")
    return {
        "nproc": os.cpu_count(),
        "memory": memory,
        "platform": platform.platform(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "django": django.get_version(),
        "postgresql": postgres,
        "postgresql_durability": durability,
        "redis": info.get("redis_version"),
    }


# -- the command -------------------------------------------------------------------------------


class Command(BaseCommand):
    help = (
        "Benchmark the counters on PostgreSQL + Redis (throwaway servers unless the "
        "default database is PostgreSQL); print a table of ratios against baselines."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--rows",
            type=int,
            default=1_000_000,
            help="messages in the table (default 1000000); memory is also measured at 5x this",
        )
        parser.add_argument(
            "--repeat",
            type=int,
            default=7,
            help="rounds of each save measurement (default 7; medians)",
        )
        parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
        parser.add_argument(
            "--truncate",
            action="store_true",
            help="empty the message tables of a configured PostgreSQL first",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["rows"] < 10 or options["repeat"] < 1:
            raise CommandError("--rows must be >= 10 and --repeat >= 1")
        exit_on_sigterm()
        if options["json"]:
            options["json"] = str(Path(options["json"]).resolve())
        if connection.vendor != "postgresql":
            self.on_throwaway_servers(options)
            return
        self.run(options)

    def on_throwaway_servers(self, options: dict[str, Any]) -> None:
        """Start PostgreSQL and Redis, run ``bench`` again against them, stop them."""
        from distinct_counter.testing.servers import PostgresServer, RedisServer, temp_root

        root = temp_root("distinct_counter-bench-")
        verbosity = int(options["verbosity"])
        if verbosity >= 1:
            self.stdout.write(
                f"{connection.vendor} is not PostgreSQL: starting a throwaway "
                f"PostgreSQL and Redis in {root}"
            )
            self.stdout.flush()
        # One server of each: replicas would only add replication work to the measurements.
        # PostgreSQL durable, as in production: a commit waits for its WAL on disk.
        postgres = redis = None
        try:
            postgres = PostgresServer(root / "pg" / "data", durable=True).init().start()
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
            command = [
                sys.executable,
                str(PROJECT_DIR / "manage.py"),
                "bench",
                "--truncate",
                "--rows",
                str(options["rows"]),
                "--repeat",
                str(options["repeat"]),
                "-v",
                str(verbosity),
                "--skip-checks",
            ]
            if options["json"]:
                command += ["--json", options["json"]]
            if options.get("no_color"):
                command.append("--no-color")
            code = subprocess.run(command, env=env, cwd=PROJECT_DIR).returncode
        finally:
            if redis is not None:
                redis.stop()
            if postgres is not None:
                postgres.stop()
            shutil.rmtree(root, ignore_errors=True)
        if code:
            raise CommandError(f"the benchmark failed (exit {code})", returncode=code)

    def say(self, verbosity: int, text: str) -> None:
        if verbosity >= 1:
            self.stdout.write(text)
            self.stdout.flush()

    def run(self, options: dict[str, Any]) -> None:
        rows, repeat = int(options["rows"]), int(options["repeat"])
        verbosity = int(options["verbosity"])
        call_command("migrate", verbosity=0)
        if not options["truncate"] and (Message.objects.exists() or PlainMessage.objects.exists()):
            raise CommandError("the message tables hold rows; --truncate empties them first")
        with connection.cursor() as cur:
            cur.execute(f"TRUNCATE {_table(Message)}, {_table(PlainMessage)}")
        counted = tuple(counters("messaging.Message"))
        figures: list[Figure] = []

        load_before = [round(x, 2) for x in os.getloadavg()]
        started = time.perf_counter()
        self.say(verbosity, f"Loading {rows} messages (COPY), then rebuilding the counters...")
        copy_messages(rows, seed=0)
        copy_to_plain()
        analyze()
        rebuild_all(counted)
        self.say(verbosity, f"  loaded in {time.perf_counter() - started:.1f}s")

        self.say(verbosity, "DistinctCount.get against COUNT(DISTINCT)...")
        exact = True
        for counter in counted:
            field = counter.field.name
            got, db = DistinctCount.read(field, Message), count_distinct(field)
            exact = exact and got.count == db and got.source == "redis"
            redis_s = median_time(
                lambda: DistinctCount.get(field, Message),  # noqa: B023
                repeat=500,
                warmup=50,
            )
            db_s = median_time(lambda: count_distinct(field), repeat=3, warmup=1)  # noqa: B023
            figures.append(
                figure(
                    f"DistinctCount.get('{field}')",
                    "s",
                    redis_s,
                    db_s,
                    10_000,
                    higher_is_better=True,
                    note=f"{got.count} distinct; baseline COUNT(DISTINCT {field})",
                )
            )
        client = get_client(conf.CACHE, write=False)
        ping_s = median_time(client.ping, repeat=500, warmup=50)
        get_s = median_time(
            lambda: DistinctCount.get(counted[0].field.name, Message), repeat=500, warmup=50
        )
        figures.append(
            figure(
                f"DistinctCount.get('{counted[0].field.name}') vs PING",
                "s",
                get_s,
                ping_s,
                None,
                note="baseline: one bare Redis round trip (PING)",
            )
        )

        self.say(verbosity, "save() of a counted Message against a PlainMessage...")
        per_round = max(50, min(500, rows // 20))
        counted_s, plain_s = save_rounds(per_round, repeat, in_transaction=False)
        figures.append(
            figure(
                "save(), one per transaction",
                "s",
                counted_s,
                plain_s,
                1.3,
                note=f"median of {repeat} rounds of {per_round} inserts",
            )
        )
        # Redis down: the counters' cache points at a port where nothing listens (connection
        # refused). The counters missed these saves; the rebuilds below make them exact again.
        down = {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        }
        with override_settings(
            CACHES={**settings.CACHES, "bench_down": down},
            DISTINCT_COUNTER={
                **settings.DISTINCT_COUNTER,
                "CACHE": "bench_down",
                "WRITE_CACHE": None,
            },
        ):
            down_s, down_plain_s = save_rounds(per_round, repeat, in_transaction=False)
        figures.append(
            figure(
                "save() with Redis down vs up",
                "s",
                down_s,
                counted_s,
                None,
                note=f"connection refused; {down_s / down_plain_s:.2f}x the "
                "plain save measured with it",
            )
        )
        counted_s, plain_s = save_rounds(1000, repeat, in_transaction=True)
        figures.append(
            figure(
                "save(), 1000 in one transaction",
                "s",
                counted_s,
                plain_s,
                1.05,
                note=f"median of {repeat} rounds, per save",
            )
        )

        self.say(verbosity, "rebuild against the bare GROUP BY...")
        batch = conf.REBUILD_BATCH_SIZE
        for counter in counted:
            field = counter.field.name
            rebuild_s = median_time(lambda: rebuild(counter), repeat=3)  # noqa: B023
            query_s = median_time(lambda: group_by(field, batch), repeat=3)  # noqa: B023
            figures.append(
                figure(
                    f"rebuild('{field}')",
                    "s",
                    rebuild_s,
                    query_s,
                    2.0,
                    note=f"includes REBUILD_GRACE {conf.REBUILD_GRACE}s",
                )
            )
            # The grace is a fixed wait for writes in flight; without writers, 0 shows the work.
            with override_settings(
                DISTINCT_COUNTER={**settings.DISTINCT_COUNTER, "REBUILD_GRACE": 0.0}
            ):
                work_s = median_time(lambda: rebuild(counter), repeat=3)  # noqa: B023
            figures.append(
                figure(
                    f"rebuild('{field}'), REBUILD_GRACE 0",
                    "s",
                    work_s,
                    query_s,
                    2.0,
                    note="the same rebuild without its fixed wait",
                )
            )

        self.say(verbosity, "Redis memory per distinct value...")
        for counter in counted:
            per_value, raw, values = redis_bytes_per_value(counter)
            figures.append(
                figure(
                    f"Redis bytes per value ('{counter.field.name}')",
                    "B",
                    per_value,
                    raw,
                    None,
                    note=f"{values} values; baseline: their mean length",
                )
            )

        self.say(verbosity, f"rebuild peak memory at {rows} and {rows * 5} rows...")
        small = peak_memory(lambda: rebuild_all(counted))
        copy_messages(rows * 4, seed=1)
        analyze()
        big = peak_memory(lambda: rebuild_all(counted))
        figures.append(
            figure(
                f"rebuild peak memory, {rows * 5} vs {rows} rows",
                "B",
                big,
                small,
                1.5,
                note="tracemalloc peak of rebuilding both counters",
            )
        )
        for counter in counted:
            field = counter.field.name
            exact = exact and DistinctCount.get(field, Message) == count_distinct(field)

        results = {
            "rows": rows,
            "repeat": repeat,
            "exact": exact,
            "machine": {**machine(), "loadavg_before": load_before},
            "settings": {"REBUILD_BATCH_SIZE": batch, "REBUILD_GRACE": conf.REBUILD_GRACE},
            "figures": [f.as_dict() for f in figures],
        }
        if options["json"]:
            Path(options["json"]).write_text(json.dumps(results, indent=2) + "\n")
        self.print_table(results, figures, verbosity)
        if not exact:
            raise CommandError("a count from Redis differed from COUNT(DISTINCT)")

    def print_table(self, results: dict[str, Any], figures: list[Figure], verbosity: int) -> None:
        if verbosity < 1:
            return
        m = results["machine"]
        durability = ", ".join(f"{k} {v}" for k, v in m["postgresql_durability"].items())
        self.stdout.write(
            f"\n{results['rows']} rows; {m['nproc']} CPUs, {m['memory']}; Python "
            f"{m['python']}, Django {m['django']}, PostgreSQL {m['postgresql']} "
            f"({durability}), "
            f"Redis {m['redis']}; load average {m['loadavg_before'][0]} before, "
            f"{m['loadavg'][0]} after; counts exact: {results['exact']}\n"
        )
        write_figures(self, figures)


def write_figures(command: BaseCommand, figures: list[Figure]) -> None:
    """The figures as a table on ``command``'s stdout: a pass in green, a FAIL in red."""
    header = (
        f"{'figure':<46} {'measured':>12} {'baseline':>12} {'ratio':>10} {'target':>10}  result"
    )
    command.stdout.write(header)
    command.stdout.write("-" * len(header))
    for f in figures:
        result = {True: "pass", False: "FAIL", None: "info"}[f.passed]
        line = (
            f"{f.name:<46} {_fmt(f.measured, f.unit):>12} {_fmt(f.baseline, f.unit):>12} "
            f"{f.ratio:>9.{_digits(f.ratio)}f}x {f.target_text():>10}  {result}"
        )
        if f.passed is None:
            command.stdout.write(line)
        else:
            command.stdout.write((command.style.SUCCESS if f.passed else command.style.ERROR)(line))


def _digits(ratio: float) -> int:
    return 0 if ratio >= 100 else 2


def _fmt(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value / 1024**2:.2f} MiB" if value >= 1024**2 else f"{value:.1f} B"
    if value >= 1:
        return f"{value:.3f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3f} ms"
    return f"{value * 1e6:.1f} us"
