"""``manage.py bench_cache``: what the master/replica cache client costs, and how fast a delete
made on one node reaches another node's reads.

On a Redis master and two replicas of it (throwaway servers on loopback, started here and
stopped afterwards, on SIGTERM too; or ``--servers`` of your own), node 1 (this process) and
node 2 (a process of its own) each read their own replica through a
``distinct_counter.cache.client.MasterReplicaClient``. It measures (details in
``messaging.cache_bench`` and docs/benchmarks.rst):

* the delay from node 2's delete of a key to node 1's miss of it, p50 and p99 over
  ``--trials`` trials: for a key node 1 wrote within ``READ_YOUR_WRITES`` (read from the
  master), for one it did not write (read from its replica), and the bare replication delay
  measured the same way through plain django-redis caches;
* a replica read (the node's ``get``) against a plain django-redis ``get`` on the same
  replica, and a write (the node's ``set``) against a plain ``set`` on the master: ratios
  within ``--rounds`` interleaved rounds of ``--ops`` operations, beside a bare ``PING``.

``--profile`` adds cProfile's view of each operation: where the time goes, per operation.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser

from distinct_counter.testing.servers import exit_on_sigterm
from messaging import cache_bench as cb
from messaging.management.commands.bench import Figure, write_figures

#: The targets of the issue: the client's read and write within 1.1x plain django-redis.
TARGET = 1.1


class Command(BaseCommand):
    help = (
        "Benchmark the master/replica cache client on a Redis master and two replicas "
        "(throwaway servers unless --servers): delete visibility across two node "
        "processes, and the client's cost against plain django-redis."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--trials", type=int, default=1000, help="deletes timed per case (default 1000)"
        )
        parser.add_argument(
            "--rounds", type=int, default=40, help="interleaved rounds (default 40; medians)"
        )
        parser.add_argument(
            "--ops", type=int, default=500, help="operations of each kind per round (500)"
        )
        parser.add_argument(
            "--window",
            type=float,
            default=5.0,
            help="the nodes' READ_YOUR_WRITES, in seconds (default 5)",
        )
        parser.add_argument(
            "--servers",
            metavar="MASTER,REPLICA1,REPLICA2",
            help="Redis URLs of a master and two replicas of it, used by nothing else, instead "
            "of throwaway servers (keys under 'bench_cache:' are written and deleted)",
        )
        parser.add_argument(
            "--profile", action="store_true", help="also profile each operation (cProfile)"
        )
        parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["trials"] < 1 or options["rounds"] < 1 or options["ops"] < 1:
            raise CommandError("--trials, --rounds and --ops must be >= 1")
        if options["window"] <= 0:
            raise CommandError("--window must be a positive number of seconds")
        exit_on_sigterm()
        if options["servers"]:
            urls = options["servers"].split(",")
            if len(urls) != 3:
                raise CommandError("--servers lists three URLs: the master, then two replicas")
            self.run(cb.Servers(*urls), None, options)
            return
        self.on_throwaway_servers(options)

    def on_throwaway_servers(self, options: dict[str, Any]) -> None:
        """Start a master and two replicas of it, run, stop them (the reaper stops them
        should this process be killed)."""
        from distinct_counter.testing.servers import RedisServer, temp_root

        root = temp_root("distinct_counter-bench-cache-")
        self.say(options, f"Starting a throwaway Redis master and two replicas in {root}")
        started: list[RedisServer] = []
        try:
            master = RedisServer(root / "master").start()
            started.append(master)
            for i in (1, 2):
                started.append(RedisServer(root / f"replica{i}", master=master).start())
            for replica in started[1:]:
                cb.wait_for(partial(_link_up, redis.Redis(port=replica.port)), timeout=30)
            servers = cb.Servers(*(s.url() for s in started))
            self.run(servers, root, options)
        finally:
            for server in reversed(started):
                server.stop()
            shutil.rmtree(root, ignore_errors=True)

    def say(self, options: dict[str, Any], text: str) -> None:
        if int(options["verbosity"]) >= 1:
            self.stdout.write(text)
            self.stdout.flush()

    def run(self, servers: cb.Servers, root: Path | None, options: dict[str, Any]) -> None:
        """Measure on ``servers``; the nodes' journals in ``root`` (None: a directory of its
        own, removed afterwards)."""
        if root is not None:
            self.measure(servers, root, options)
            return
        workdir = Path(tempfile.mkdtemp(prefix="distinct_counter-bench-cache-"))
        try:
            self.measure(servers, workdir, options)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def measure(self, servers: cb.Servers, workdir: Path, options: dict[str, Any]) -> None:
        trials, rounds, count = options["trials"], options["rounds"], options["ops"]
        window = float(options["window"])
        journals = (workdir / "journal1", workdir / "journal2")
        load_before = [round(x, 2) for x in os.getloadavg()]

        self.say(options, f"Delete visibility: {trials} trials of each case, two processes...")
        started = time.perf_counter()
        delays = self.delays(servers, trials, window, journals)
        self.say(options, f"  done in {time.perf_counter() - started:.1f}s")

        self.say(options, f"get and set against plain django-redis: {rounds} rounds...")
        ops = cb.Ops(servers, window, journals[0], keys=100)
        times = cb.measure_ops(ops, rounds=rounds, count=count)
        figures = self.figures(times, rounds, count)
        profiles = {}
        if options["profile"]:
            self.say(options, "Profiling each operation against its baseline...")
            for op in ("get", "set"):
                profiles[f"node {op} vs django-redis {op}"] = cb.profile_diff(
                    ops, f"node {op}", f"django-redis {op}", count
                )

        results = {
            "trials": trials,
            "rounds": rounds,
            "ops": count,
            "machine": {**cb.machine(servers), "loadavg_before": load_before},
            "settings": {
                "READ_YOUR_WRITES": window,
                "servers": "given" if options["servers"] else "throwaway",
                "value_bytes": len(cb.VALUE),
            },
            "figures": [f.as_dict() for f in figures],
            "delays": cb.delay_rows(delays),
            "profile": profiles,
        }
        if options["json"]:
            Path(options["json"]).write_text(json.dumps(results, indent=2) + "\n")
        if int(options["verbosity"]) >= 1:
            self.print_results(results, figures)

    def delays(
        self, servers: cb.Servers, trials: int, window: float, journals: tuple[Path, Path]
    ) -> cb.Delays:
        """Node 2 in a process of its own (``spawn``: nothing inherited but the pipe), node 1
        here."""
        context = multiprocessing.get_context("spawn")
        here, there = context.Pipe()
        node2 = context.Process(
            target=cb.node2_main,
            args=(there, servers, window, str(journals[1])),
            name="bench_cache node 2",
            daemon=True,
        )
        node2.start()
        there.close()
        try:
            return cb.measure_delays(
                here, servers, trials=trials, window=window, journal=journals[0]
            )
        finally:
            here.close()
            node2.join(10)
            if node2.is_alive():
                node2.terminate()
                node2.join(10)

    def figures(self, times: dict[str, list[float]], rounds: int, count: int) -> list[Figure]:
        med = {name: statistics.median(values) for name, values in times.items()}
        note = f"median of {rounds} interleaved rounds of {count}; ratio: median per round"
        return [
            Figure(
                "node get (replica) vs django-redis get",
                "s",
                med["node get"],
                med["django-redis get"],
                cb.paired_ratio(times, "node get", "django-redis get"),
                TARGET,
                note=f"{note}; the same replica",
            ),
            Figure(
                "node set vs django-redis set",
                "s",
                med["node set"],
                med["django-redis set"],
                cb.paired_ratio(times, "node set", "django-redis set"),
                TARGET,
                note=f"{note}; the master",
            ),
            Figure(
                "node get (replica) vs PING",
                "s",
                med["node get"],
                med["PING replica"],
                cb.paired_ratio(times, "node get", "PING replica"),
                None,
                note="baseline: one bare round trip to the replica",
            ),
            Figure(
                "node set vs PING",
                "s",
                med["node set"],
                med["PING master"],
                cb.paired_ratio(times, "node set", "PING master"),
                None,
                note="baseline: one bare round trip to the master",
            ),
        ]

    def print_results(self, results: dict[str, Any], figures: list[Figure]) -> None:
        m = results["machine"]
        self.stdout.write(
            f"\n{m['nproc']} CPUs, {m['memory']}; Python {m['python']}, Django {m['django']}, "
            f"django-redis {m['django-redis']}, redis-py {m['redis']}, hiredis {m['hiredis']}, "
            f"Redis {m['redis_server']}; load average {m['loadavg_before'][0]} before, "
            f"{m['loadavg'][0]} after\n"
        )
        write_figures(self, figures)
        header = (
            f"\n{'delete on node 2 -> miss on node 1':<42} {'p50':>10} {'p99':>10} "
            f"{'mean':>10} {'max':>10} {'trials':>7} {'timeouts':>8} {'stale':>6}"
        )
        self.stdout.write(header)
        self.stdout.write("-" * (len(header) - 1))
        for row in results["delays"]:
            self.stdout.write(
                f"{row['name']:<42} {_us(row['p50']):>10} {_us(row['p99']):>10} "
                f"{_us(row['mean']):>10} {_us(row['max']):>10} {row['samples']:>7} "
                f"{row['timeouts']:>8} {row['stale_after_delete']:>6}"
            )
        self.stdout.write(
            "delay: from node 2 sending its delete to node 1 holding the miss (one clock); "
            "stale: trials in which\nnode 1 still read the key with a get sent after node 2's "
            "delete had returned"
        )
        for name, rows in results["profile"].items():
            self.stdout.write(
                f"\ncProfile, {name}: own time per operation, most extra first\n"
                f"{'extra':>9} {'node':>9} {'plain':>9} {'calls':>11}  function"
            )
            for row in rows:
                calls = f"{row['calls_per_op']:g}/{row['baseline_calls_per_op']:g}"
                self.stdout.write(
                    f"{row['extra_us_per_op']:7.2f}us {row['us_per_op']:7.2f}us "
                    f"{row['baseline_us_per_op']:7.2f}us {calls:>11}  {row['function']}"
                )


def _link_up(replica: redis.Redis) -> bool:
    return bool(replica.info("replication")["master_link_status"] == "up")


def _us(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"
