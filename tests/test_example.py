"""The example project, run as a user runs it: its commands and its server in subprocesses,
on its embedded defaults (SQLite and an embedded Redis in a temporary data directory)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distinct_counter.testing.servers import free_port

ROOT = Path(__file__).parent.parent
MANAGE = ROOT / "example_project" / "manage.py"
TOPOLOGY_VARS = ("DATABASE_URL", "REPLICA_URLS", "REDIS_MASTER_URL", "REDIS_REPLICA_URL")

pytestmark = pytest.mark.slow


def embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TOPOLOGY_VARS}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return {**env, "DEMO_DATA_DIR": str(data_dir)}


def manage(data_dir: Path, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run(
        [sys.executable, str(MANAGE), *args],
        env=embedded_env(data_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def distinct_in_sqlite(data_dir: Path, field: str) -> int:
    with sqlite3.connect(data_dir / "db.sqlite3") as db:
        sql = f"SELECT COUNT(DISTINCT {field}) FROM messaging_message"
        return int(db.execute(sql).fetchone()[0])


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="distinct_counter-example-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_output(data_dir: Path) -> str:
    return manage(data_dir, "demo", "--rows", "3000", "--no-serve")


@pytest.fixture(scope="module")
def server(data_dir: Path, demo_output: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(MANAGE), "runserver", "--noreload", f"127.0.0.1:{port}"],
        env=embedded_env(data_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/api/stats", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the example server did not start"
                time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # as Ctrl-C: the embedded Redis is shut down at exit
        proc.wait(20)
        if proc.stderr:
            proc.stderr.close()


def request(url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(
        url,
        data=data,
        method="POST" if data is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_demo_prints_redis_counts_equal_to_the_database(data_dir: Path, demo_output: str) -> None:
    assert "3000 messages (sqlite" in demo_output
    for field in ("username", "city"):
        line = next(x for x in demo_output.splitlines() if x.startswith(field))
        redis_count = int(line.split()[1])
        assert redis_count == distinct_in_sqlite(data_dir, field) > 0
        assert "MISMATCH" not in line


def test_demo_again_adds_nothing(data_dir: Path, demo_output: str) -> None:
    again = manage(data_dir, "demo", "--rows", "3000", "--no-serve")
    assert "Loading" not in again and "3000 messages" in again


def test_ingest_then_stats(data_dir: Path, server: str) -> None:
    before = distinct_in_sqlite(data_dir, "username")
    status, body = request(
        server + "/api/messages",
        [
            {"username": "newcomer-1", "city": "Reykjavík"},
            {"username": "newcomer-2", "city": None, "text": "hi"},
        ],
    )
    assert (status, body) == (201, {"created": 2})
    status, stats = request(server + "/api/stats")
    assert status == 200
    by_field = {row["field"]: row for row in stats["counts"]}
    assert by_field["username"]["count"] == distinct_in_sqlite(data_dir, "username") == before + 2
    assert by_field["username"]["source"] == "redis" and by_field["username"]["state"] == "ok"
    assert by_field["city"]["count"] == distinct_in_sqlite(data_dir, "city")
    assert by_field["username"]["rebuilt_at"]


@pytest.mark.parametrize(
    "raw,message",
    [
        (b"{not json", "the body is not JSON"),
        (b'{"city": "Paris"}', "invalid message"),
        (b'{"username": "   "}', "invalid message"),
        (b"[]", "send one message or a list"),
        (b'[{"username": "ok"}, 5]', "invalid message"),
    ],
)
def test_ingest_rejects_bad_input_and_saves_nothing(
    data_dir: Path, server: str, raw: bytes, message: str
) -> None:
    with sqlite3.connect(data_dir / "db.sqlite3") as db:
        rows = db.execute("SELECT COUNT(*) FROM messaging_message").fetchone()[0]
    status, body = request(server + "/api/messages", raw=raw)
    assert status == 400 and message in body["error"]
    with sqlite3.connect(data_dir / "db.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM messaging_message").fetchone()[0] == rows


def test_missing_username_names_the_field(server: str) -> None:
    status, body = request(server + "/api/messages", {"city": "Paris"})
    assert status == 400 and "username" in body["errors"]["0"]


def test_status_page_in_a_headless_browser(data_dir: Path, server: str) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium)")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--dump-dom",
                server + "/",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    dom = proc.stdout
    assert proc.returncode == 0 and "<table" in dom, proc.stderr[-2000:]
    for field in ("username", "city"):
        row = re.search(rf'<tr data-field="{field}">(.*?)</tr>', dom, re.S)
        assert row, dom[-2000:]
        count = int(re.search(r'class="count">(\d+)<', row.group(1)).group(1))  # type: ignore[union-attr]
        assert count == distinct_in_sqlite(data_dir, field)
        assert 'class="source">redis<' in row.group(1)
        assert "state ok" in row.group(1)


def sqlite_indexes(data_dir: Path, table: str) -> set[str]:
    with sqlite3.connect(data_dir / "db.sqlite3") as db:
        return {
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                "AND sql IS NOT NULL",
                (table,),
            )
        }


def test_migrations_build_the_counted_indexes(tmp_path: Path) -> None:
    """Migration 0002 (CreateIndexConcurrently, a plain CREATE INDEX on SQLite) indexes the
    counted fields; the models declare those indexes, so there is nothing left to migrate."""
    assert "No changes detected" in manage(tmp_path, "makemigrations", "--check", "--dry-run")
    manage(tmp_path, "migrate")
    assert sqlite_indexes(tmp_path, "messaging_message") == {
        "messaging_m_usernam_217736_idx",
        "messaging_m_city_7a6f83_idx",
    }
    assert sqlite_indexes(tmp_path, "messaging_plainmessage") == {
        "messaging_p_usernam_31cbee_idx",
        "messaging_p_city_f9afeb_idx",
    }
    assert manage(tmp_path, "counted_indexes", "messaging") == (
        "No counted field of 'messaging' lacks an index.\n"
    )
    assert "no issues" in manage(tmp_path, "check")
    manage(tmp_path, "migrate", "messaging", "0001")
    assert sqlite_indexes(tmp_path, "messaging_message") == set()


def test_demo_topology_counts_a_write_on_node_1_on_node_2(tmp_path: Path) -> None:
    out = manage(tmp_path, "demo", "--topology", "--no-serve", "--rows", "500", timeout=600)
    match = re.search(r"node 2 .*distinct usernames (\d+) -> (\d+) \(source redis, state ok\)", out)
    assert match, out
    assert int(match.group(2)) == int(match.group(1)) + 1
