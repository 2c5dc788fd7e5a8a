"""What the two suites' harnesses share: the Redis servers of a run, and running one pytest of
an upstream suite in a subprocess, with the outcome of each of its tests.

A run is a suite run against a ``Target``: the client class of the caches and the servers it
reaches. The baseline is plain django-redis (``DefaultClient``) on a master alone; the
candidate is the client under test on a master and a replica of it that lags
(``distinct_counter.testing.lag``): nothing waits for replication after a write, so a client
that reads a key it just wrote from the replica reads the old value.

Each pytest runs in a directory of its own making (a copy of the upstream tests, generated
settings, the outcomes plugin), with an environment stripped of this project's Django
settings, and its own ``-c`` configuration: neither this project's ``setup.cfg`` nor the
upstream ``pyproject.toml`` (coverage, ``--numprocesses``) applies.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distinct_counter.testing.lag import DEFAULT_DELAY, lagging_replica
from distinct_counter.testing.servers import RedisServer, temp_root

PLAIN_CLIENT = "django_redis.client.DefaultClient"
OURS = "distinct_counter.cache.client.MasterReplicaClient"
CLIENT_VAR = "DISTINCT_COUNTER_UPSTREAM_CLIENT"
OPTIONS_VAR = "DISTINCT_COUNTER_UPSTREAM_OPTIONS"
JOBS_VAR = "DISTINCT_COUNTER_UPSTREAM_JOBS"
PLUGIN = "dc_upstream_outcomes"
#: Seconds one pytest of a suite may take (the slowest upstream runs take about 25 s).
JOB_TIMEOUT = 600


@dataclass(frozen=True)
class Target:
    """The client class a run's caches use and the servers they reach."""

    name: str
    client_class: str
    master_port: int
    #: None: LOCATION is the master alone (or the master twice, where upstream lists two).
    replica_port: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def url(self, port: int, db: int) -> str:
        return f"redis://127.0.0.1:{port}/{db}"

    def location(self, db: int) -> str | list[str]:
        if self.replica_port is None:
            return self.url(self.master_port, db)
        return [self.url(self.master_port, db), self.url(self.replica_port, db)]


def candidate_client() -> str:
    return os.environ.get(CLIENT_VAR) or OURS


def candidate_options() -> dict[str, Any]:
    options = json.loads(os.environ.get(OPTIONS_VAR) or "{}")
    if not isinstance(options, dict):
        raise ValueError(f"{OPTIONS_VAR} must be a JSON object")
    return options


@contextlib.contextmanager
def targets(
    client_class: str, options: dict[str, Any] | None = None, delay: float = DEFAULT_DELAY
) -> Iterator[tuple[Target, Target]]:
    """Start the servers; yield the baseline (plain django-redis on a master of its own) and
    the candidate (``client_class`` on a master and a replica ``delay`` seconds behind)."""
    root = temp_root("distinct_counter-upstream-")
    started: list[Any] = []
    try:
        plain = RedisServer(root / "baseline").start()
        started.append(plain)
        master = RedisServer(root / "candidate" / "master").start()
        started.append(master)
        replica, proxy = lagging_replica(root / "candidate", master, delay)
        started += [proxy, replica]
        yield (
            Target("plain django-redis", PLAIN_CLIENT, plain.port),
            Target(client_class, client_class, master.port, replica.port, options or {}),
        )
    finally:
        for server in reversed(started):
            with contextlib.suppress(Exception):
                server.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Job:
    """One pytest of an upstream suite, run in ``directory``."""

    directory: Path
    label: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def run(self) -> dict[str, str]:
        """Run it; return ``{test id: outcome}`` (see ``outcomes_plugin``)."""
        outcomes = self.directory / f"outcomes-{self.label}.json"
        log = self.directory / f"pytest-{self.label}.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DJANGO_SETTINGS_MODULE", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")
        }
        env.update(self.env)
        env["PYTHONPATH"] = str(self.directory)
        env["DC_UPSTREAM_OUTCOMES"] = str(outcomes)
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            "pytest.ini",
            "--rootdir",
            ".",
            "-p",
            PLUGIN,
            "-p",
            "no:cacheprovider",
            "-q",
            "--tb=short",
            *self.args,
        ]
        with log.open("w") as out:
            try:
                proc = subprocess.run(
                    command,
                    cwd=self.directory,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=JOB_TIMEOUT,
                )
            except subprocess.TimeoutExpired:
                raise RuntimeError(
                    f"{self.label}: no end after {JOB_TIMEOUT}s; see {log}"
                ) from None
        # 0: all passed, 1: some failed; anything else (usage error, internal error, no test
        # collected) means the run itself went wrong, and its outcomes would say nothing.
        if proc.returncode not in (0, 1) or not outcomes.exists():
            tail = log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{self.label}: pytest exited with {proc.returncode}:\n{tail}")
        result: dict[str, str] = json.loads(outcomes.read_text())
        return result


def write_plugin(directory: Path) -> None:
    shutil.copy(Path(__file__).with_name("outcomes_plugin.py"), directory / f"{PLUGIN}.py")


def run_all(jobs: list[Job], workers: int | None = None) -> list[dict[str, str]]:
    """Run the jobs, a few at a time (they mostly sleep: upstream tests wait for expiries)."""
    workers = workers or int(os.environ.get(JOBS_VAR) or 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(Job.run, jobs))
