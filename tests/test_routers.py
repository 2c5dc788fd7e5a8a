"""PrimaryReplicaRouter and PinPrimaryMiddleware against the real PostgreSQL streaming replica.

A read proves where it went by what it sees: with WAL replay paused on the replica, a row
committed on the primary is visible on the primary only.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connections, router, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext
from django.urls import path

from distinct_counter.api import DistinctCount, rebuild
from distinct_counter.counting.registry import resolve
from distinct_counter.models import CounterState
from distinct_counter.routing import health
from distinct_counter.routing.conf import conf
from distinct_counter.routing.context import (
    mark_written,
    routing_scope,
    use_primary,
    use_replica,
    wrote,
)
from distinct_counter.routing.health import replica_states
from distinct_counter.routing.router import PrimaryReplicaRouter
from distinct_counter.testing import mirror_replicas
from tests.conftest import distinct_in_db, wait_until
from tests.testapp.models import Author, Message

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])

ROUTER = "distinct_counter.routing.router.PrimaryReplicaRouter"
MIDDLEWARE = "distinct_counter.routing.middleware.PinPrimaryMiddleware"
#: Seconds to wait for the servers (replay, restarts): generous, the machine may be loaded.
TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def routed(settings: Any) -> Iterator[None]:
    """The router on, with the real replica; each test in its own routing scope."""
    settings.DATABASE_ROUTERS = [ROUTER]
    settings.DISTINCT_COUNTER = {
        **settings.DISTINCT_COUNTER,
        "REPLICAS": ["replica"],
        "REPLICA_RETRY_SECONDS": 0.2,
    }
    health.reset()
    with routing_scope():
        yield
    health.reset()


def reads() -> str | None:
    return router.db_for_read(Message)


def exists(username: str) -> bool:
    return Message.objects.filter(username=username).exists()


def _primary_lsn() -> str:
    with connections["default"].cursor() as cur:
        cur.execute("SELECT pg_current_wal_insert_lsn()::text")
        return str(cur.fetchone()[0])


def _replica_sql(sql: str, params: list[Any] | None = None) -> Any:
    with connections["replica"].cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def wait_for_replay(timeout: float = TIMEOUT) -> None:
    lsn = _primary_lsn()
    wait_until(
        lambda: _replica_sql("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]), timeout
    )


@contextmanager
def replay_paused() -> Iterator[None]:
    """WAL replay paused on the replica: it keeps receiving, and answers, but stays behind."""
    wait_for_replay()
    _replica_sql("SELECT pg_wal_replay_pause()")
    try:
        wait_until(
            lambda: _replica_sql("SELECT pg_get_wal_replay_pause_state()") == "paused", TIMEOUT
        )
        yield
    finally:
        _replica_sql("SELECT pg_wal_replay_resume()")
        wait_for_replay()


# --- Routing ---------------------------------------------------------------------------------


def test_writes_and_migrations_go_to_the_primary() -> None:
    assert router.db_for_write(Message) == "default"
    assert router.allow_migrate("default", "testapp", model_name="message")
    assert not router.allow_migrate("replica", "testapp", model_name="message")
    assert not router.allow_migrate("replica", "distinct_counter")
    on_replica, on_primary = Author(name="r"), Author(name="p")
    on_replica._state.db, on_primary._state.db = "replica", "default"
    assert PrimaryReplicaRouter().allow_relation(on_replica, on_primary) is True
    on_replica._state.db = "elsewhere"
    assert PrimaryReplicaRouter().allow_relation(on_replica, on_primary) is None


def test_reads_go_to_the_replica_at_no_query_cost() -> None:
    reads()  # Opens the replica's connection.
    with (
        CaptureQueriesContext(connections["replica"]) as on_replica,
        CaptureQueriesContext(connections["default"]) as on_primary,
    ):
        assert {reads() for _ in range(50)} == {"replica"}
    assert on_replica.captured_queries == on_primary.captured_queries == []
    with CaptureQueriesContext(connections["replica"]) as on_replica:
        Message.objects.count()
    assert len(on_replica.captured_queries) == 1


def test_unpinned_read_hits_the_replica_pinned_read_sees_the_write() -> None:
    with replay_paused():
        with routing_scope() as scope:
            Message.objects.create(username="fresh")
            assert scope is not None and scope.wrote and wrote()
            assert reads() == "default"
            assert exists("fresh")  # read-your-writes: this task wrote it
        with routing_scope():
            assert not wrote() and reads() == "replica"
            assert not exists("fresh")  # the replica has not replayed it
            with use_primary():
                assert exists("fresh")
        with routing_scope(pinned=True):
            assert exists("fresh")
    with routing_scope():
        wait_until(lambda: exists("fresh"), TIMEOUT)  # resumed: the replica caught up
        assert reads() == "replica"


def test_open_transaction_on_the_primary_reads_from_it() -> None:
    with transaction.atomic():
        with connections["default"].cursor() as cur:  # A write the router does not see.
            cur.execute("INSERT INTO testapp_message (username, body) VALUES ('tx', '')")
        assert not wrote()
        assert reads() == "default" and exists("tx")
        with use_replica():
            assert reads() == "replica" and not exists("tx")
    assert reads() == "replica"


def test_mark_written_pins_after_a_raw_write() -> None:
    assert reads() == "replica"
    mark_written()
    assert reads() == "default"


def test_use_primary_and_use_replica_nest_and_restore() -> None:
    assert reads() == "replica"
    with use_primary():
        assert reads() == "default"
        with use_replica():
            assert reads() == "replica"
            with use_primary():
                assert reads() == "default"
            assert reads() == "replica"
        assert reads() == "default"
    assert reads() == "replica"
    mark_written()
    with use_replica():
        assert reads() == "replica"  # explicit beats the write pin
    assert reads() == "default"


def test_use_primary_decorates_sync_and_async_functions() -> None:
    @use_primary()
    def sync_read() -> str | None:
        return reads()

    @use_primary()
    async def async_read() -> str | None:
        await asyncio.sleep(0)
        return await sync_to_async(reads)()

    assert sync_read() == "default"
    assert async_to_sync(async_read)() == "default"
    assert reads() == "replica"


def test_routing_scope_decorates_a_task() -> None:
    @routing_scope()
    def task() -> tuple[str | None, str | None]:
        before = reads()
        Message.objects.create(username="task")
        return before, reads()

    assert task() == ("replica", "default")
    assert not wrote() and reads() == "replica"  # the task's write pinned the task only


@pytest.mark.django_db(databases=["default", "replica"])  # TestCase: one transaction per test
def test_inside_a_testcase_transaction_reads_go_to_the_primary() -> None:
    assert connections["default"].in_atomic_block
    assert reads() == "default"
    with use_replica():
        assert reads() == "replica"


@pytest.mark.parametrize("replicas", ["replica", 5, None, ["default"]])
def test_misconfigured_replicas_route_to_the_primary(settings: Any, replicas: Any) -> None:
    settings.DISTINCT_COUNTER = {**settings.DISTINCT_COUNTER, "REPLICAS": replicas}
    assert reads() == "default"
    assert router.allow_migrate("default", "testapp")


def test_counter_bookkeeping_does_not_pin() -> None:
    CounterState.mark_rebuilt("testapp.Message.username")
    assert not wrote() and reads() == "replica"


def test_without_replicas_reads_go_to_the_primary(settings: Any) -> None:
    settings.DISTINCT_COUNTER = {**settings.DISTINCT_COUNTER, "REPLICAS": []}
    assert reads() == "default"
    assert Message.objects.count() == 0


def test_route_app_labels_leaves_other_apps_alone() -> None:
    class ShopRouter(PrimaryReplicaRouter):
        route_app_labels = frozenset({"shop"})

    assert ShopRouter().db_for_read(Message) is None
    assert ShopRouter().db_for_write(Message) is None
    assert not wrote()


# --- Replica health --------------------------------------------------------------------------


def test_stopped_replica_is_skipped_then_used_again(topology: Any, web: None) -> None:
    Message.objects.bulk_create([Message(username="a"), Message(username="b")])
    wait_for_replay()
    with routing_scope():
        assert reads() == "replica"
        assert Message.objects.count() == 2  # the replica's connection is open
        topology.pg_replica.stop()
        try:
            # Its connection is dead and it refuses new ones: the primary answers.
            assert reads() == "default"
            assert Message.objects.count() == 2
            assert sorted(Message.objects.values_list("username", flat=True)) == ["a", "b"]
            assert replica_states()["replica"]["down"]
            with use_replica():
                assert exists("a")
            response = Client().get("/read/?username=a")
            assert json.loads(response.content) == {"db": "default", "found": True}
        finally:
            topology.pg_replica.start()
        wait_until(lambda: reads() == "replica", timeout=60)
        assert not replica_states()["replica"]["down"]
        with CaptureQueriesContext(connections["replica"]) as on_replica:
            assert Message.objects.count() == 2
        assert len(on_replica.captured_queries) == 1


def test_lagging_replica_is_skipped(settings: Any) -> None:
    settings.DISTINCT_COUNTER = {
        **settings.DISTINCT_COUNTER,
        "MAX_REPLICA_LAG": 0.5,
        "LAG_CHECK_SECONDS": 0.05,
    }
    with routing_scope():
        # Caught up (an earlier test's last write may still be replaying, and looks old).
        wait_for_replay()
        wait_until(lambda: reads() == "replica", TIMEOUT)
        with replay_paused():
            with routing_scope():
                Message.objects.create(username="behind")
            # The replica received the write but does not replay it: it falls behind.
            wait_until(lambda: reads() == "default", TIMEOUT)
            state = replica_states()["replica"]
            assert state["lagging"] and state["lag"] > 0.5
            assert exists("behind")
        wait_until(lambda: reads() == "replica", TIMEOUT)
        state = replica_states()["replica"]
        assert not state["down"] and not state["lagging"] and state["lag"] <= 0.5


def test_lag_is_checked_at_most_every_lag_check_seconds(settings: Any) -> None:
    settings.DISTINCT_COUNTER = {
        **settings.DISTINCT_COUNTER,
        "MAX_REPLICA_LAG": 30,
        "LAG_CHECK_SECONDS": 60,
    }
    with CaptureQueriesContext(connections["replica"]) as on_replica:
        assert {reads() for _ in range(50)} == {"replica"}
    assert len(on_replica.captured_queries) == 1
    assert "pg_last_xact_replay_timestamp" in on_replica.captured_queries[0]["sql"]


# --- Counters ------------------------------------------------------------------------------


def test_distinct_count_fallback_reads_from_the_replica() -> None:
    with replay_paused():
        with routing_scope():
            Message.objects.create(username="u1")
            Message.objects.create(username="u2")
        on_replica = distinct_in_db(Message, "username", using="replica")
        on_primary = distinct_in_db(Message, "username")
        assert on_replica != on_primary
        with routing_scope():
            result = DistinctCount.read("username", Message)
            assert (result.source, result.count) == ("database", on_replica)
        with routing_scope(pinned=True):
            assert DistinctCount.read("username", Message).count == on_primary


def test_rebuild_reads_from_the_replica() -> None:
    Message.objects.bulk_create([Message(username=u) for u in "abca"])
    with routing_scope(), CaptureQueriesContext(connections["replica"]) as on_replica:
        [result] = rebuild(resolve("username", Message))
    assert (result.rows, result.values) == (4, 3)
    assert any("testapp_message" in q["sql"] for q in on_replica.captured_queries)
    assert DistinctCount.read("username", Message).source == "redis"


# --- Middleware ----------------------------------------------------------------------------


def write_view(request: HttpRequest) -> HttpResponse:
    Message.objects.create(username=request.POST["username"])
    return HttpResponseRedirect(f"/read/?username={request.POST['username']}")


def read_view(request: HttpRequest) -> HttpResponse:
    username = request.GET["username"]
    return JsonResponse({"db": reads(), "found": exists(username)})


async def awrite_view(request: HttpRequest) -> HttpResponse:
    await Message.objects.acreate(username=request.POST["username"])
    return HttpResponse("ok")


class Rendezvous:
    """Holds each arriving coroutine until ``n`` have arrived: the requests overlap."""

    def __init__(self, n: int) -> None:
        self.n, self.arrived, self.all_here = n, 0, asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.n:
            self.all_here.set()
        await asyncio.wait_for(self.all_here.wait(), 30)


rendezvous: Rendezvous | None = None


async def aread_view(request: HttpRequest) -> HttpResponse:
    assert rendezvous is not None
    await rendezvous.wait()
    found = await Message.objects.filter(username=request.GET["username"]).aexists()
    return JsonResponse({"db": await sync_to_async(reads)(), "found": found})


urlpatterns = [
    path("write/", write_view),
    path("read/", read_view),
    path("awrite/", awrite_view),
    path("aread/", aread_view),
]


@pytest.fixture
def web(settings: Any) -> None:
    settings.ROOT_URLCONF = __name__
    settings.MIDDLEWARE = [MIDDLEWARE]


def test_post_then_get_with_the_cookie_reads_from_the_primary(web: None) -> None:
    with replay_paused():
        client = Client()
        posted = client.post("/write/", {"username": "posted"})
        assert posted.status_code == 302
        cookie = posted.cookies[conf.PIN_COOKIE]
        assert cookie["max-age"] == 5 and cookie["httponly"] and cookie["samesite"] == "Lax"
        assert not cookie["secure"]
        assert float(cookie.value) > time.time()
        pinned = client.get(posted["Location"])
        assert json.loads(pinned.content) == {"db": "default", "found": True}
        assert conf.PIN_COOKIE not in pinned.cookies  # a read does not extend the pin
        unpinned = Client().get(posted["Location"])
        assert json.loads(unpinned.content) == {"db": "replica", "found": False}
    assert not wrote()  # the requests' scopes did not leak into the caller's


def test_expired_or_garbled_cookie_does_not_pin(web: None) -> None:
    for value in (str(time.time() - 1), "garbage"):
        client = Client()
        client.cookies[conf.PIN_COOKIE] = value
        assert json.loads(client.get("/read/?username=x").content)["db"] == "replica"


def test_cookie_attributes_follow_the_settings(web: None, settings: Any) -> None:
    settings.DISTINCT_COUNTER = {
        **settings.DISTINCT_COUNTER,
        "PIN_SECONDS": 0.5,
        "PIN_COOKIE": "pin",
        "PIN_COOKIE_SECURE": True,
        "PIN_COOKIE_HTTPONLY": False,
        "PIN_COOKIE_SAMESITE": "Strict",
    }
    cookie = Client().post("/write/", {"username": "c"}).cookies["pin"]
    assert cookie["max-age"] == 1 and cookie["secure"] and cookie["samesite"] == "Strict"
    assert not cookie["httponly"]
    assert float(cookie.value) <= time.time() + 0.501  # printed to the millisecond


def test_async_requests_each_keep_their_own_pin(web: None) -> None:
    async def scenario() -> list[dict[str, Any]]:
        global rendezvous
        writer = AsyncClient()
        written = await writer.post("/awrite/", {"username": "async"})
        assert conf.PIN_COOKIE in written.cookies  # the write in sync_to_async pinned it
        rendezvous = Rendezvous(2)
        responses = await asyncio.gather(
            writer.get("/aread/?username=async"), AsyncClient().get("/aread/?username=async")
        )
        return [json.loads(r.content) for r in responses]

    with replay_paused():
        pinned, unpinned = async_to_sync(scenario)()
    assert pinned == {"db": "default", "found": True}
    assert unpinned == {"db": "replica", "found": False}


def test_threads_each_keep_their_own_pin() -> None:
    wrote_it, checked = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def worker() -> None:
        try:
            seen["first"] = reads()
            Message.objects.create(username="threaded")
            wrote_it.set()
            checked.wait(30)
            seen["after"] = (reads(), exists("threaded"))
        finally:
            wrote_it.set()
            connections.close_all()

    with replay_paused():
        thread = threading.Thread(target=worker)
        thread.start()
        assert wrote_it.wait(30)
        # The thread's write pins the thread only.
        assert not wrote() and reads() == "replica" and not exists("threaded")
        checked.set()
        thread.join(30)
    assert seen == {"first": "replica", "after": ("default", True)}


# --- Test settings helper --------------------------------------------------------------------


def test_mirror_replicas() -> None:
    databases: dict[str, dict[str, Any]] = {
        "default": {"NAME": "app"},
        "r1": {"NAME": "app", "TEST": {"NAME": "x"}},
        "r2": {"NAME": "app"},
    }
    mirrored = mirror_replicas(databases, ["r1", "r2"])
    assert mirrored["r1"]["TEST"] == {"NAME": "x", "MIRROR": "default"}
    assert mirrored["r2"]["TEST"] == {"MIRROR": "default"}
    assert "TEST" not in mirrored["default"] and "MIRROR" not in databases["r1"]["TEST"]
    with pytest.raises(ValueError):
        mirror_replicas(databases, ["default"])
    with pytest.raises(KeyError):
        mirror_replicas(databases, ["r3"])
