"""The Sphinx documentation builds without a single warning (``-W``), and its settings and
checks pages keep up with the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).parent.parent / "docs"


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (tmp_path / "html" / "index.html").exists()


def test_settings_page_documents_every_setting() -> None:
    from distinct_counter.cache.conf import ClientOptions
    from distinct_counter.counting.conf import CountingSettings
    from distinct_counter.routing.conf import RoutingSettings

    text = (DOCS / "settings.rst").read_text()
    keys = [*CountingSettings.options(), *RoutingSettings.options(), *ClientOptions.options()]
    missing = [k for k in keys if f"``{k}``" not in text]
    assert not missing, f"docs/settings.rst does not document {missing}"


def test_checks_page_lists_every_check_id() -> None:

    from distinct_counter import checks

    ids = set(re.findall(r"distinct_counter\.[EW]\d{3}", checks.__doc__ or ""))
    assert ids
    text = (DOCS / "checks.rst").read_text()
    missing = sorted(i for i in ids if f"``{i}``" not in text)
    assert not missing, f"docs/checks.rst does not list {missing}"
