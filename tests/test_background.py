"""``SEND = "background"``: writes queue their deltas for a sender thread instead of waiting
for Redis, and the counts stay exact.

Redis is really paused (``CLIENT PAUSE ... WRITE``: scripts that write wait) or stopped
here, so that the thread is provably behind the writes; counts are checked against the
database's own ``COUNT(DISTINCT)`` and ``GROUP BY``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import path

from distinct_counter import DistinctCount
from distinct_counter.connection import get_client, round_trip
from distinct_counter.counting.conf import conf
from distinct_counter.counting.deltas import sender
from distinct_counter.counting.registry import resolve
from distinct_counter.models import CounterState
from distinct_counter.testing.servers import RedisServer
from tests.conftest import distinct_in_db, master, stored
from tests.test_reliability import built, stopped_master  # noqa: F401 (fixtures)
from tests.testapp.models import Message

pytestmark = pytest.mark.django_db(transaction=True)

#: Shorter than the counters' SOCKET_TIMEOUT (0.5 s): a paused Redis only delays them. (Not
#: raised with the cache's OPTIONS: django-redis keeps one pool per URL for the process, so
#: the next tests would inherit it.)
PAUSE_MS = 300


@pytest.fixture
def background(settings: Any, built: None) -> Iterator[None]:  # noqa: F811
    settings.DISTINCT_COUNTER = {**settings.DISTINCT_COUNTER, "SEND": "background"}
    yield
    sender.flush()


def pause_writes(ms: int = PAUSE_MS) -> None:
    master().execute_command("CLIENT", "PAUSE", ms, "WRITE")


def frequencies_equal_the_database(field: str) -> None:
    rows = Message.objects.values(field).annotate(n=Count("pk")).order_by()
    expected = {r[field]: r["n"] for r in rows if r[field] is not None}
    assert DistinctCount.get(field, Message) == distinct_in_db(Message, field) == len(expected)
    for value, n in expected.items():
        assert DistinctCount.frequency(field, value, Message) == n, value
    assert DistinctCount.read(field, Message).state == "ok"


def test_a_write_returns_before_redis_answers(background: None) -> None:
    Message.objects.create(username="u0", city="Paris")
    for i in range(1, 5):
        pause_writes()
        started = time.monotonic()
        Message.objects.create(username=f"u{i}", city="Paris")
        elapsed = time.monotonic() - started
        assert elapsed < PAUSE_MS / 1000 / 2, elapsed
    # The read waits for the queued deltas (Redis answers once the pause ends).
    frequencies_equal_the_database("username")
    frequencies_equal_the_database("city")


def test_with_send_wait_a_write_waits_for_redis(built: None) -> None:  # noqa: F811
    """The default, for contrast: the same write waits out the pause."""
    pause_writes()
    started = time.monotonic()
    Message.objects.create(username="u", city="Paris")
    assert time.monotonic() - started >= PAUSE_MS / 1000 * 0.8
    frequencies_equal_the_database("city")


def test_a_read_sees_the_writes_queued_before_it(background: None) -> None:
    """Without the read's flush the count would be read while the delta is still held up by
    the paused server."""
    for i in range(3):
        pause_writes()
        Message.objects.create(username=f"reader{i}", city=f"City {i}")
        assert DistinctCount.get("city", Message) == distinct_in_db(Message, "city") == i + 1


def write_view(request: HttpRequest) -> HttpResponse:
    Message.objects.create(username=request.GET["username"], city="Web")
    return HttpResponse("ok")


urlpatterns = [path("write/", write_view)]


def test_a_request_ends_with_its_writes_sent(background: None, settings: Any) -> None:
    """Once a response is finished, Redis holds the request's deltas, read straight from
    Redis (a read through the API would send them itself): even with the sender thread held
    up by the paused server, the end of the request sends them."""
    settings.ROOT_URLCONF = __name__
    pause_writes()
    assert Client().get("/write/", {"username": "visitor"}).content == b"ok"
    assert stored(resolve("username", Message))["visitor"] == 1
    frequencies_equal_the_database("username")


def test_concurrent_writers_stay_exact(background: None) -> None:
    """Threads writing creates, updates, deletes, bulk writes and rolled-back transactions,
    all through one sender thread."""

    def writer(n: int) -> None:
        try:
            for i in range(30):
                with transaction.atomic():
                    m = Message.objects.create(username=f"w{n}-{i % 7}", city=f"C{i % 5}")
                    if i % 3 == 0:
                        m.city = f"C{(i + n) % 6}"
                        m.save()
                if i % 4 == 0:
                    Message.objects.filter(pk=m.pk).update(username=f"w{n}-moved")
                if i % 5 == 0:
                    Message.objects.filter(username=f"w{n}-{i % 7}").delete()
                if i % 6 == 0:
                    Message.objects.bulk_create(
                        [Message(username=f"b{n}-{k}", city=f"B{k}") for k in range(3)]
                    )
                if i % 9 == 0:
                    with pytest.raises(ZeroDivisionError), transaction.atomic():
                        Message.objects.create(username="rolled back", city="Nowhere")
                        _ = 1 / 0
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    pause_writes(100)  # a backlog builds up behind the paused server
    for t in threads:
        t.join()
    frequencies_equal_the_database("username")
    frequencies_equal_the_database("city")


def test_redis_down_marks_the_counters_stale(
    background: None,
    stopped_master: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="distinct_counter")
    Message.objects.create(username="lost", city="Lost")  # the write itself commits
    sender.flush()
    assert Message.objects.filter(username="lost").exists()
    stale = CounterState.objects.filter(stale_since__isnull=False)
    assert set(stale.values_list("label", flat=True)) == {
        "testapp.message.username",
        "testapp.message.city",
    }
    read = DistinctCount.read("city", Message)
    assert (read.source, read.count) == ("database", distinct_in_db(Message, "city"))


def test_scripts_flushed_from_redis_are_sent_again(background: None) -> None:
    Message.objects.create(username="before", city="Paris")
    sender.flush()
    master().script_flush()
    pause_writes()
    for i in range(4):  # queued together, all meeting NOSCRIPT
        Message.objects.create(username=f"after{i}", city=f"City {i}")
    frequencies_equal_the_database("username")
    frequencies_equal_the_database("city")


def _run_python(code: str) -> None:
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        cwd=Path(__file__).parent.parent,
        timeout=60,
    )


def test_a_process_sends_its_queue_when_it_exits(background: None) -> None:
    """A process that writes and exits at once: its queue is sent on the way out. The paused
    server holds the thread's first batch, so the rest is still queued at exit."""
    _run_python(
        "import django; django.setup()\n"
        "from django.test import override_settings\n"
        "from django.conf import settings\n"
        "override_settings(DISTINCT_COUNTER={**settings.DISTINCT_COUNTER, 'SEND': 'background'})"
        ".enable()\n"
        "from tests.conftest import master\n"
        "from tests.testapp.models import Message\n"
        f"master().execute_command('CLIENT', 'PAUSE', {PAUSE_MS}, 'WRITE')\n"
        "for i in range(40): Message.objects.create(username=f'exit{i}', city=f'Exit {i}')\n"
    )
    assert Message.objects.count() == 40
    frequencies_equal_the_database("username")
    frequencies_equal_the_database("city")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_does_not_send_its_parents_queue(background: None) -> None:
    """The parent's queued deltas are sent once, by the parent: a child that inherited the
    queue would count them twice."""
    pause_writes(PAUSE_MS)
    for i in range(3):
        Message.objects.create(username=f"parent{i}", city="Fork")
    connection.close()  # the child must not share the parent's database connection
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        signal.alarm(10)  # a child stuck on its parent's state dies, and the test fails
        try:
            sender.flush()
            sender.put(({}, ""))  # and its own sender works
            sender.flush()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    frequencies_equal_the_database("username")
    frequencies_equal_the_database("city")


def test_a_child_forked_while_a_thread_holds_a_pool_lock_still_reaches_redis(
    background: None,
) -> None:
    """A fork while another thread is inside a connection pool (the sender, taking or
    returning a connection): the child, where that thread does not exist, must not wait on
    the lock it held."""
    Message.objects.create(username="before", city="Fork")  # the client and its pool exist
    pool = get_client(conf.write_cache).connection_pool
    connection.close()
    held, forked = threading.Event(), threading.Event()

    def hold() -> None:  # as the sender thread holds it, for a moment, at every send
        with pool._lock:
            held.set()
            forked.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        signal.alarm(10)  # a child stuck on the inherited lock dies, and the test fails
        try:
            round_trip(get_client(conf.write_cache), ("PING",))
        finally:
            os._exit(0)
    forked.set()
    holder.join(30)
    _, status = os.waitpid(pid, 0)
    assert status == 0


def test_rebuild_with_writes_queued(background: None) -> None:
    """Deltas the rebuild's snapshot saw, reaching Redis after it: not counted twice."""
    for i in range(5):
        Message.objects.create(username=f"r{i}", city="Rebuilt")
    pause_writes()
    Message.objects.create(username="late", city="Late")
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    frequencies_equal_the_database("username")
    frequencies_equal_the_database("city")
