"""What ``manage.py bench_cache`` measures of the master/replica cache client, on a Redis master
and two replicas (``distinct_counter.cache.client.MasterReplicaClient``, docs/cache.rst).

Two figures of the issue:

* How long a delete made on one node takes to reach another node's reads. Node 1 (this
  process) and node 2 (a process of its own, :func:`node2_main`) each read their own replica
  of one master. Node 1 has a key, tells node 2 through a pipe, node 2 notes the time and
  deletes the key, node 1 polls ``cache.get`` until it misses: the delay runs from the moment
  node 2 sends its delete to the moment node 1 holds the miss (one clock: both processes read
  ``CLOCK_MONOTONIC`` through ``time.perf_counter_ns`` on the same machine). Three cases,
  interleaved: a key node 1 wrote itself within ``READ_YOUR_WRITES`` (read from the master:
  missed at once), a key it did not write (read from its replica: missed once replication
  delivers the delete), and the bare replication delay measured the same way with plain
  django-redis caches (delete on the master, poll the replica).
* What the client adds to a command: ``get`` of a key the node did not write (a replica
  read) against a plain django-redis ``get`` on the same replica, ``set`` against a plain
  ``set`` on the master, in interleaved rounds, beside a bare ``PING`` (one round trip).

Kept apart from the command, and free of models, so that node 2's process, started with the
``spawn`` method, imports nothing that needs Django's apps loaded.
"""

from __future__ import annotations

import cProfile
import math
import pstats
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from django_redis.cache import RedisCache

from messaging.bench_figures import host

CLIENT = "distinct_counter.cache.client.MasterReplicaClient"
PREFIX = "bench_cache"
#: A value of the size of a small cached fragment.
VALUE = "v" * 100
#: The three delays, in the order the first trial measures them.
CASES = ("own", "other", "bare")
CASE_NAMES = {
    "own": "delete -> miss, a key node 1 wrote",
    "other": "delete -> miss, a key node 1 did not write",
    "bare": "replication delay (plain django-redis)",
}
#: How long node 1 polls for a miss before it counts the trial as timed out.
POLL_TIMEOUT_NS = 2_000_000_000


@dataclass(frozen=True)
class Servers:
    """The URLs of the master and of node 1's and node 2's replicas."""

    master: str
    replica1: str
    replica2: str


def plain_cache(url: str) -> RedisCache:
    """A plain django-redis cache of one server, with the example's socket options."""
    options = {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5}
    return RedisCache(url, {"OPTIONS": options})


def node_cache(master: str, replica: str, window: float, journal: Path) -> RedisCache:
    """A cache as a node configures it: a MasterReplicaClient of ``master`` and ``replica``."""
    options = {
        "CLIENT_CLASS": CLIENT,
        "READ_YOUR_WRITES": window,
        "JOURNAL_FILE": str(journal),
        "SOCKET_CONNECT_TIMEOUT": 0.5,
        "SOCKET_TIMEOUT": 0.5,
    }
    return RedisCache(f"{master},{replica}", {"OPTIONS": options})


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the replicas did not catch up in time")
        time.sleep(0.0005)


# -- delete visibility -------------------------------------------------------------------------


def node2_main(conn: Connection, servers: Servers, window: float, journal: str) -> None:
    """Node 2's process: for each ``(case, key)`` received, note the time, delete the key
    (through its node, or a plain cache of the master for ``bare``) and send the time back.
    ``None`` (or the pipe closing with node 1) ends it."""
    import django

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches node 1, which ends this
    django.setup()
    node = node_cache(servers.master, servers.replica2, window, Path(journal))
    plain = plain_cache(servers.master)
    node.get(f"{PREFIX}:warm"), plain.get(f"{PREFIX}:warm")
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        case, key = message
        cache = plain if case == "bare" else node
        started = time.perf_counter_ns()
        cache.delete(key)
        conn.send((started, time.perf_counter_ns()))


@dataclass
class Delays:
    """Each case's delays in nanoseconds; the trials that timed out; the trials in which
    node 1 still read the key with a ``get`` sent after node 2's delete had returned."""

    samples: dict[str, list[int]] = field(default_factory=lambda: {c: [] for c in CASES})
    timeouts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CASES, 0))
    stale: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CASES, 0))


class Node1:
    """Node 1's side of the trials: the caches it reads and writes through, and the pipe."""

    def __init__(self, conn: Connection, servers: Servers, window: float, journal: Path) -> None:
        self.conn = conn
        self.node = node_cache(servers.master, servers.replica1, window, journal)
        self.master = plain_cache(servers.master)
        self.replica = plain_cache(servers.replica1)

    def trial(self, case: str, key: str) -> tuple[int | None, bool]:
        """One delete by node 2, and node 1's wait for the miss: the delay in nanoseconds
        (None: no miss within ``POLL_TIMEOUT_NS``), and whether a ``get`` sent after the
        delete had returned still found the key."""
        reader = self.replica if case == "bare" else self.node
        if case == "own":
            self.node.set(key, VALUE)  # read from the master for READ_YOUR_WRITES seconds
        else:
            self.master.set(key, VALUE)  # someone else's write: node 1 reads its replica
            wait_for(lambda: reader.get(key) is not None)
        self.conn.send((case, key))
        deadline = time.perf_counter_ns() + POLL_TIMEOUT_NS
        missed = None
        last_hit = 0  # when the last get that found the key was sent
        while missed is None:
            asked = time.perf_counter_ns()
            if reader.get(key) is None:
                missed = time.perf_counter_ns()
            elif asked > deadline:
                break
            else:
                last_hit = asked
        started, finished = self.conn.recv()
        return (None if missed is None else missed - started), last_hit > finished


def measure_delays(
    conn: Connection, servers: Servers, *, trials: int, window: float, journal: Path
) -> Delays:
    """``trials`` trials of each case, the cases' order rotated each trial so that drift in
    the machine's load reaches all three; a few warm-up trials first, not counted."""
    node1 = Node1(conn, servers, window, journal)
    if conn.recv() != "ready":
        raise RuntimeError("node 2 did not start")
    delays = Delays()
    warmup = min(20, trials)
    for i in range(-warmup, trials):
        shift = i % len(CASES)
        for case in CASES[shift:] + CASES[:shift]:
            delay, stale = node1.trial(case, f"{PREFIX}:{case}:{i}")
            if i < 0:
                continue
            delays.stale[case] += stale
            if delay is None:
                delays.timeouts[case] += 1
            else:
                delays.samples[case].append(delay)
    conn.send(None)
    return delays


def percentile(values: list[int], q: float) -> float:
    """The nearest-rank percentile ``q`` (0 to 1) of ``values``."""
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])


def delay_rows(delays: Delays) -> list[dict[str, Any]]:
    """Each case's figures, in seconds."""
    rows = []
    for case in CASES:
        ns = delays.samples[case] or [0]
        rows.append(
            {
                "name": CASE_NAMES[case],
                "case": case,
                "p50": percentile(ns, 0.50) / 1e9,
                "p99": percentile(ns, 0.99) / 1e9,
                "mean": statistics.fmean(ns) / 1e9,
                "max": max(ns) / 1e9,
                "samples": len(delays.samples[case]),
                "timeouts": delays.timeouts[case],
                "stale_after_delete": delays.stale[case],
            }
        )
    return rows


# -- what the client adds to a command ---------------------------------------------------------


class Ops:
    """The operations compared, each a function of a key index: the node's ``get`` (of keys
    it never wrote: from its replica) and ``set`` (to the master), the same through plain
    django-redis caches of the replica and of the master, and ``PING`` on each server."""

    def __init__(self, servers: Servers, window: float, journal: Path, keys: int) -> None:
        self.node = node_cache(servers.master, servers.replica1, window, journal)
        self.replica = plain_cache(servers.replica1)
        self.master = plain_cache(servers.master)
        self.read_keys = [f"{PREFIX}:read:{i}" for i in range(keys)]
        self.write_keys = [f"{PREFIX}:write:{i}" for i in range(keys)]
        for key in self.read_keys:
            self.master.set(key, VALUE)
        last = self.read_keys[-1]
        wait_for(lambda: self.replica.get(last) is not None)
        replica_client = self.replica.client.get_client(write=False)
        master_client = self.master.client.get_client(write=True)
        reads, writes = self.read_keys, self.write_keys
        self.ops: dict[str, Callable[[int], Any]] = {
            "node get": lambda i: self.node.get(reads[i]),
            "django-redis get": lambda i: self.replica.get(reads[i]),
            "node set": lambda i: self.node.set(writes[i], VALUE),
            "django-redis set": lambda i: self.master.set(writes[i], VALUE),
            "PING replica": lambda i: replica_client.ping(),
            "PING master": lambda i: master_client.ping(),
        }

    def check(self, count: int = 200) -> None:
        """That the node's ``get`` of the read keys reaches its replica, not the master
        (none of them is a recent write of this process): the master counts no ``GET``."""
        master = self.master.client.get_client(write=True)
        before = get_calls(master)
        self.run("node get", count)
        if get_calls(master) != before:
            raise RuntimeError("the node read the benchmark's keys from the master")

    def run(self, name: str, count: int) -> float:
        """Seconds per operation over ``count`` operations of ``name``."""
        op = self.ops[name]
        keys = len(self.read_keys)
        started = time.perf_counter()
        for i in range(count):
            op(i % keys)
        return (time.perf_counter() - started) / count


def get_calls(client: Any) -> int:
    """How many ``GET`` commands the server of ``client`` has run."""
    stats = client.info("commandstats").get("cmdstat_get", {})
    return int(stats.get("calls", 0))


#: The operations timed together: each with its baseline and a bare round trip to its server
#: (reads apart from writes, so that no read meets the replication of a write just made).
GROUPS = (
    ("node get", "django-redis get", "PING replica"),
    ("node set", "django-redis set", "PING master"),
)


def interleaved(ops: Ops, names: tuple[str, ...], count: int) -> dict[str, float]:
    """Seconds per operation of each of ``names``, run one after the other ``count`` times
    (``a b c a b c ...``): any change in the machine's speed reaches them alike."""
    clock = time.perf_counter_ns
    keys = len(ops.read_keys)
    functions = [(name, ops.ops[name]) for name in names]
    totals = dict.fromkeys(names, 0)
    for i in range(count):
        key = i % keys
        for name, function in functions:
            started = clock()
            function(key)
            totals[name] += clock() - started
    return {name: total / count / 1e9 for name, total in totals.items()}


def measure_ops(ops: Ops, *, rounds: int, count: int) -> dict[str, list[float]]:
    """Seconds per operation of each of ``ops``, one figure per round. A round runs each
    group's operations interleaved, ``count`` times each; their order is rotated and
    reversed from round to round, so that no operation always follows the same one."""
    for name in ops.ops:  # warm up connections and code paths
        ops.run(name, min(count, 200))
    ops.check()
    times: dict[str, list[float]] = {name: [] for name in ops.ops}
    for r in range(rounds):
        for group in GROUPS:
            shift = r % len(group)
            order = group[shift:] + group[:shift]
            measured = interleaved(ops, order if r % 2 == 0 else order[::-1], count)
            for name, seconds in measured.items():
                times[name].append(seconds)
    return times


def paired_ratio(times: dict[str, list[float]], measured: str, baseline: str) -> float:
    """The median over rounds of ``measured / baseline`` within each round."""
    return statistics.median(m / b for m, b in zip(times[measured], times[baseline], strict=True))


def profile(ops: Ops, name: str, count: int) -> dict[str, tuple[float, float]]:
    """cProfile of ``count`` operations ``name``: for each function, its calls and its own
    time in microseconds, per operation (cProfile's own cost included)."""
    profiler = cProfile.Profile()
    profiler.runcall(ops.run, name, count)
    found = {}
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (path, line, func), (_, calls, own, _, _) in stats.items():
        where = f"{Path(path).parent.name}/{Path(path).name}" if line else path
        if func != "<lambda>":  # the benchmark's own lambdas, measured and baseline, alike
            where = f"{where}:{line}" if line else where
        found[f"{func} ({where})"] = (calls / count, own / count * 1e6)
    return found


def profile_diff(
    ops: Ops, measured: str, baseline: str, count: int, top: int = 15
) -> list[dict[str, Any]]:
    """Where ``measured`` spends more time than ``baseline``: the functions whose own time
    per operation grows most from one to the other (cProfile of ``count`` of each)."""
    profiles = {}
    for name in (baseline, measured, baseline, measured):  # the second profile of each counts
        profiles[name] = profile(ops, name, count)
    mine, theirs = profiles[measured], profiles[baseline]
    rows: list[dict[str, Any]] = []
    for function in set(mine) | set(theirs):
        calls, own = mine.get(function, (0.0, 0.0))
        base_calls, base_own = theirs.get(function, (0.0, 0.0))
        rows.append(
            {
                "function": function,
                "calls_per_op": calls,
                "baseline_calls_per_op": base_calls,
                "us_per_op": own,
                "baseline_us_per_op": base_own,
                "extra_us_per_op": own - base_own,
            }
        )
    rows.sort(key=lambda r: -r["extra_us_per_op"])
    return rows[:top]


def machine(servers: Servers) -> dict[str, Any]:
    """The machine and the versions the figures were measured with."""
    info = plain_cache(servers.master).client.get_client().info("server")
    return {
        **host({p: p for p in ("django-redis", "redis", "hiredis")}),
        "redis_server": info.get("redis_version"),
        "redis_server_path": info.get("executable"),
    }
