"""The quick extra configuration: the counting tests (and the differential one) again, on
SQLite, in a subprocess.

The subprocess inherits this session's environment, so it uses the same Redis servers
rather than starting its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_counting_tests_pass_on_sqlite() -> None:
    if os.environ.get("DISTINCT_COUNTER_SQLITE_RUN"):
        pytest.skip("already inside the SQLite run")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            "--ds=tests.settings_sqlite",
            "tests/test_counting.py",
            "tests/test_properties.py",
            "tests/test_write_paths.py",
            "tests/test_values.py",
            "tests/test_differential.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "DISTINCT_COUNTER_SQLITE_RUN": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
