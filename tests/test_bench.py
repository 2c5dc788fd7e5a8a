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
    "DistinctCount.get('username')",
    "DistinctCount.get('city')",
    "DistinctCount.get('username') vs PING",
    "save(), one per transaction",
    "save(), 1000 in one transaction",
    "save() with Redis down vs up",
    "rebuild('username')",
    "rebuild('city')",
    "rebuild('username'), REBUILD_GRACE 0",
    "rebuild('city'), REBUILD_GRACE 0",
    "Redis bytes per value ('username')",
    "Redis bytes per value ('city')",
    "rebuild peak memory, 10000 vs 2000 rows",
}


def test_bench_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(MANAGE),
            "bench",
            "--rows",
            "2000",
            "--repeat",
            "2",
            "--json",
            str(out),
        ],
        env=embedded_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["rows"] == 2000 and results["exact"] is True
    figures = {f["name"]: f for f in results["figures"]}
    assert set(figures) == FIGURES
    for f in figures.values():
        for key in ("measured", "baseline", "ratio"):
            assert isinstance(f[key], (int, float)) and math.isfinite(f[key]) and f[key] > 0, f
        assert f["passed"] in (True, False, None)
        assert (f["passed"] is None) == (f["target"] is None), f
    machine = results["machine"]
    assert machine["postgresql"] and machine["redis"] and machine["nproc"] >= 1
    # The same figures, as a table on stdout.
    for name in FIGURES:
        assert name in proc.stdout
    assert "postgres" in proc.stdout.lower() or "PostgreSQL" in proc.stdout


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
    proc = subprocess.run(
        [
            sys.executable,
            str(MANAGE),
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
        ],
        env=embedded_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
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
        assert name in proc.stdout
    root = re.search(r"two replicas in (\S+)", proc.stdout)
    assert root and not Path(root.group(1)).exists()
