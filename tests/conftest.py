from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.db import connections

from distinct_counter import connection as redis_connection
from distinct_counter.counting import buckets, stale
from distinct_counter.counting.registry import Counter
from tests import servers

#: The fixtures of the index operations' tests (indexapp, sessions of their own).
pytest_plugins = ["tests.index_fixtures"]


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker: pytest.FixtureRequest) -> None:
    """Migrate the real database the servers hold (no ``test_`` copy: the replica must see
    the very database the primary writes)."""
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        call_command("migrate", verbosity=0, database="default")
        call_command("flush", verbosity=0, interactive=False, database="default")


def master() -> redis.Redis:
    return redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])


def stored(counter: Counter) -> dict[str, int]:
    """A counter's counts as the master holds them, every bucket read straight from it."""
    pages = buckets.entries(master(), counter)
    return {k.decode(): int(v) for page in pages for bucket in page for k, v in bucket.items()}


def plant(counter: Counter, value: str, count: int) -> None:
    """Write a count straight into a counter's map, as a Redis gone wrong would hold it."""
    found = buckets.header(master(), counter.key("meta"))
    assert found is not None, f"{counter} has no map"
    gen, n, _ = found
    key = buckets.bucket_key(counter, gen, buckets.slot(buckets.hash_of(value), n))
    if master().hset(key, value, count):
        master().hincrby(counter.key("meta"), "len", 1)


@pytest.fixture(autouse=True)
def clean_redis() -> Iterator[None]:
    """Every test starts with empty Redis servers and a closed circuit breaker."""
    try:
        client = master()
        client.flushall()
        client.wait(len(settings.CACHES) - 2, 2000)
    except redis.RedisError:
        pass
    redis_connection.reset()
    stale.clear()
    yield
    redis_connection.reset()
    stale.clear()


@pytest.fixture
def topology() -> servers.Topology:
    """The servers, for tests that stop and restart them; skipped for external servers."""
    top = servers.owned()
    if top is None:
        pytest.skip("servers are external (DISTINCT_COUNTER_TEST_*): they are not stopped")
    return top


def distinct_in_db(model: type, field: str, using: str = "default") -> int:
    """The database's own answer: SELECT COUNT(DISTINCT field)."""
    table = model._meta.db_table
    column = model._meta.get_field(field).column
    with connections[using].cursor() as cur:
        cur.execute(f'SELECT COUNT(DISTINCT "{column}") FROM "{table}"')
        return int(cur.fetchone()[0])


def wait_until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
