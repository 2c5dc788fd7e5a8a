"""A counter's values spread over small hashes (``counting.buckets``): placed alike by Python
and by the scripts, grown and shrunk by writes and rebuilds, each bucket kept in Redis's
compact encoding, and every count still the database's own."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from hypothesis import given, settings
from hypothesis import strategies as st

from distinct_counter import DistinctCount
from distinct_counter.counting import buckets
from distinct_counter.counting.registry import resolve
from distinct_counter.counting.scripts import _MAP
from tests.conftest import distinct_in_db, master, stored
from tests.testapp.models import Message

pytestmark = pytest.mark.django_db(transaction=True)


def grouped_in_db(field: str) -> dict[str, int]:
    with connection.cursor() as cur:
        cur.execute(
            f'SELECT "{field}", COUNT(*) FROM testapp_message '
            f'WHERE "{field}" IS NOT NULL GROUP BY 1'
        )
        return {value: n for value, n in cur.fetchall()}


def bucket_keys() -> list[bytes]:
    return list(master().scan_iter("distinct_counter:{testapp.message.username}:b:*", count=1000))


def assert_layout(field: str = "username") -> None:
    """The counter holds the database's counts, its header says how many, and every bucket
    is a listpack (Redis's compact encoding) within the default 128 entries."""
    counter = resolve(field, Message)
    expected = grouped_in_db(field)
    assert stored(counter) == expected
    found = buckets.header(master(), counter.key("meta"))
    assert found is not None
    _, n, length = found
    assert length == len(expected) == distinct_in_db(Message, field)
    assert length <= max(1, n) * buckets.LOAD
    for key in master().scan_iter(f"distinct_counter:{{testapp.message.{field}}}:b:*"):
        assert master().object("encoding", key) == b"listpack", key
        assert master().hlen(key) <= 128, key


def create(count: int, prefix: str = "user") -> None:
    Message.objects.bulk_create(
        [Message(username=f"{prefix}{i}", city=f"city{i % 7}") for i in range(count)],
        batch_size=2000,
    )


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.text(min_size=0, max_size=40), min_size=1, max_size=20),
    n=st.integers(1, 5000),
)
def test_python_and_the_scripts_place_a_value_in_the_same_bucket(values: list[str], n: int) -> None:
    """Any text (any Unicode, empty, NUL), any number of buckets: Python's ``zlib.crc32`` and
    the scripts' own CRC-32 agree, and so do the bucket each side derives from it."""
    script = (
        _MAP
        + """
local m = map('p:{c}:meta', '7', ARGV[1], 0)
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = tostring(crc32(ARGV[i]))
  out[#out + 1] = bucket(m, ARGV[i])
end
return out
"""
    )
    out = master().eval(script, 0, n, *values)
    for i, value in enumerate(values):
        assert int(out[2 * i]) == buckets.hash_of(value)
        assert out[2 * i + 1].decode() == f"p:{{c}}:b:7:{buckets.slot(buckets.hash_of(value), n)}"


def test_slot_stays_below_the_number_of_buckets() -> None:
    for n in range(1, 300):
        seen = {buckets.slot(h, n) for h in range(0, 4096 * 3, 7)}
        assert seen == set(range(n)), n


def test_writes_grow_the_map_bucket_by_bucket() -> None:
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    create(3000)
    assert_layout()
    assert_layout("city")
    _, n, _ = buckets.header(master(), resolve("username", Message).key("meta")) or (0, 0, 0)
    assert n >= 3000 // buckets.LOAD
    for i in range(0, 3000, 97):
        assert DistinctCount.frequency("username", f"user{i}", Message) == 1
    assert DistinctCount.frequency("username", "nobody", Message) == 0
    assert sorted(DistinctCount.members("username", Message, batch_size=100)) == sorted(
        grouped_in_db("username")
    )


def test_a_first_rebuild_grows_its_map_to_the_values_it_finds() -> None:
    """A first rebuild cannot know how many values it will find: it starts with one bucket
    and doubles as they come."""
    create(5000)
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    assert_layout()
    assert not master().exists("distinct_counter:{testapp.message.username}:tmp")
    assert not master().exists("distinct_counter:{testapp.message.username}:old")


def test_a_first_rebuild_sizes_its_map_by_postgresqls_estimate() -> None:
    create(5000)
    with connection.cursor() as cur:
        cur.execute("ANALYZE testapp_message")
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    found = buckets.header(master(), resolve("username", Message).key("meta"))
    assert found is not None and found[1] == buckets.sized(5000)  # no growth on the way
    assert_layout()


def test_a_rebuild_leaves_only_the_new_buckets() -> None:
    create(2000)
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    before = set(bucket_keys())
    Message.objects.filter(username__startswith="user1").delete()
    create(500, prefix="other")
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    after = set(bucket_keys())
    assert after and not before & after
    assert_layout()


def test_deletes_empty_the_map_and_its_buckets() -> None:
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    create(1000)
    Message.objects.all().delete()
    assert stored(resolve("username", Message)) == {}
    assert bucket_keys() == []
    assert DistinctCount.get("username", Message) == 0
    create(10)
    assert_layout()


def test_a_counter_built_by_an_earlier_layout_reads_as_missing_until_rebuilt(
    settings: Any,
) -> None:
    """A counter built before buckets (one hash of values, a meta with a state but no map)
    is not read as empty: it is missing, read from the database, and the next rebuild
    replaces it and deletes the old hash."""
    create(20)
    counter = resolve("username", Message)
    master().hset(counter.key("meta"), mapping={"state": "ok", "built_at": 1})
    master().hset(counter.key("values"), mapping={"user1": 1})
    result = DistinctCount.read("username", Message)
    assert (result.count, result.source, result.state) == (20, "database", "missing")
    create(5, prefix="late")  # a write meanwhile: not applied to a counter with no map
    call_command("rebuild_counts", "testapp.Message.username", verbosity=0)
    assert not master().exists(counter.key("values"))
    assert DistinctCount.read("username", Message).source == "redis"
    assert_layout()


def test_values_take_a_small_share_of_the_memory_of_one_hash() -> None:
    """What the layout is for: measured by Redis itself, about 20 bytes per value here
    against about 60 in one hash."""
    create(4000)
    call_command("rebuild_counts", "testapp.Message", verbosity=0)
    client = master()
    used = sum(client.memory_usage(k) or 0 for k in bucket_keys())
    assert used / 4000 < 30
