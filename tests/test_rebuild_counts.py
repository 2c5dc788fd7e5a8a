"""``manage.py rebuild_counts``: rebuild, --check, --json, --stale, --database, bad input."""

from __future__ import annotations

import contextlib
import json
import threading
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from distinct_counter import DistinctCount, rebuild
from distinct_counter.counting.registry import resolve
from distinct_counter.models import CounterState
from tests.conftest import distinct_in_db, master, plant, stored
from tests.testapp.factories import MessageFactory
from tests.testapp.models import Message, Venue

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])


def run(*args: str, **options: Any) -> str:
    out = StringIO()
    call_command("rebuild_counts", *args, stdout=out, **options)
    return out.getvalue()


def test_rebuild_builds_every_counter_from_the_database() -> None:
    MessageFactory.create_batch(30)
    Venue.objects.create(city="Paris")
    out = run()
    lines = out.splitlines()
    assert [x for line in lines if (x := line.split(":")[0]).startswith("testapp.")] == [
        "testapp.message.username",
        "testapp.message.city",
        "testapp.item.price",
        "testapp.item.day",
        "testapp.item.qty",
        "testapp.item.flag",
        "testapp.item.author",
        "testapp.item.label",
        "testapp.venue.city",
    ]
    assert lines[1].startswith("testapp.message.city: 4 distinct values in 24 rows, ")
    assert DistinctCount.read("city", Message).source == "redis"
    assert DistinctCount.get("city", Message) == distinct_in_db(Message, "city") == 4
    assert CounterState.objects.get(label="testapp.message.city").rebuilt_at is not None


def test_rebuild_selects_by_app_model_or_field() -> None:
    assert len(run("testapp.Venue").splitlines()) == 1
    assert len(run("testapp.message").splitlines()) == 2
    assert run("testapp.Message.city").startswith("testapp.message.city:")
    assert len(run("testapp").splitlines()) == 9


def test_quiet_with_verbosity_zero() -> None:
    assert run("testapp.Message", verbosity=0) == ""


@pytest.mark.parametrize(
    "name", ["nope", "testapp.Nope", "testapp.Message.body", "testapp.Message.city.extra"]
)
def test_unknown_names_are_a_command_error(name: str) -> None:
    with pytest.raises(
        CommandError,
        match=f"'{name}' names no counted model or field; counters: testapp.message.username",
    ):
        run(name)


def test_unknown_database_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="Unknown database 'nope'; choose from: default"):
        run(database="nope")


def test_check_finds_writes_the_orm_cannot_see() -> None:
    MessageFactory.create_batch(10)
    run("testapp.Message", verbosity=0)
    assert "testapp.message.city: ok" in run("testapp.Message", check=True)
    with connection.cursor() as cur:  # another application writes the table
        cur.execute(
            "INSERT INTO testapp_message (username, city, body) "
            "VALUES ('raw', 'RawCity', ''), ('raw', 'Paris', '')"
        )
        cur.execute("DELETE FROM testapp_message WHERE city = 'Lyon'")
    out = StringIO()
    with pytest.raises(
        CommandError, match="drift in testapp.message.username, testapp.message.city"
    ) as exc:
        call_command("rebuild_counts", "testapp.Message", check=True, stdout=out)
    assert exc.value.returncode == 1
    city = [line for line in out.getvalue().splitlines() if "message.city" in line][0]
    assert city == (
        "testapp.message.city: DRIFT (state ok): redis 4, database 4 distinct; "
        "missing 1, extra 1, wrong 1; e.g. 'Paris', 'RawCity'"
    )
    run("testapp.Message", verbosity=0)
    assert "DRIFT" not in run("testapp.Message", check=True)


def test_check_json_for_monitoring() -> None:
    MessageFactory.create_batch(5)
    run("testapp.Message", verbosity=0)
    plant(resolve("city", Message), "Ghost", 1)
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("rebuild_counts", "testapp.Message.city", check=True, json=True, stdout=out)
    report = json.loads(out.getvalue())
    assert report == [
        {
            "counter": "testapp.message.city",
            "state": "ok",
            "ok": False,
            "redis_distinct": distinct_in_db(Message, "city") + 1,
            "db_distinct": distinct_in_db(Message, "city"),
            "missing": 0,
            "extra": 1,
            "wrong": 0,
            "examples": [],
        }
    ]


def test_check_reports_a_counter_never_built() -> None:
    MessageFactory.create_batch(5)
    with pytest.raises(CommandError):
        run("testapp.Message.city", check=True)


def test_stale_only_rebuilds_counters_marked_stale() -> None:
    run(verbosity=0)
    CounterState.record_stale(["testapp.venue.city"], "test")
    assert run(stale=True).splitlines()[0].startswith("testapp.venue.city: ")
    assert len(run(stale=True).splitlines()) == 0


def test_rebuild_reads_the_database_named() -> None:
    MessageFactory.create_batch(12)
    run("testapp.Message", database="replica", verbosity=0)
    assert DistinctCount.get("city", Message) == distinct_in_db(Message, "city", "replica")
    assert "DRIFT" not in run("testapp.Message", check=True, database="replica")


def test_rebuild_replaces_the_live_key_atomically() -> None:
    MessageFactory.create_batch(10)
    run(verbosity=0)
    city = resolve("city", Message)
    plant(city, "Ghost", 3)
    before = set(master().keys("distinct_counter:{testapp.message.city}:b:*"))
    run("testapp.Message.city", verbosity=0)
    assert "Ghost" not in stored(city)
    assert not before & set(master().keys("distinct_counter:{testapp.message.city}:b:*"))
    assert not master().exists("distinct_counter:{testapp.message.city}:tmp")
    assert not master().exists("distinct_counter:{testapp.message.city}:old")
    assert not master().exists("distinct_counter:{testapp.message.city}:lock")
    assert not master().exists("distinct_counter:{testapp.message.city}:journal_on")


@pytest.mark.parametrize("concurrency", [1, 2])
def test_counters_are_rebuilt_up_to_rebuild_concurrency_at_a_time(
    concurrency: int, settings: Any
) -> None:
    # Each rebuild waits, at its first batch, for the other to reach its own: only
    # concurrent rebuilds both get past it.
    settings.DISTINCT_COUNTER = {**settings.DISTINCT_COUNTER, "REBUILD_CONCURRENCY": concurrency}
    MessageFactory.create_batch(30)
    both_scanning = threading.Barrier(2, timeout=5)
    met: set[str] = set()

    def progress(counter: Any, rows: int, values: int) -> None:
        if counter.label not in met:
            met.add(counter.label)
            with contextlib.suppress(threading.BrokenBarrierError):
                both_scanning.wait()

    results = rebuild("testapp.Message", using="default", progress=progress)
    assert [r.counter.label for r in results] == [
        "testapp.message.username",
        "testapp.message.city",
    ]
    assert both_scanning.broken is (concurrency == 1)
    for field in ("username", "city"):
        assert DistinctCount.get(field, model=Message) == distinct_in_db(Message, field)
