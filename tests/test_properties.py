"""Property: any sequence of creates, updates, deletes, bulk writes and rollbacks leaves every
counter equal to the database's own ``GROUP BY`` (hence to its ``COUNT(DISTINCT)``)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distinct_counter import DistinctCount
from distinct_counter.api import check
from distinct_counter.counting.registry import counters_of
from tests.conftest import distinct_in_db
from tests.testapp.models import Message

pytestmark = pytest.mark.django_db(transaction=True)

# Few values, so operations keep meeting each other's values; some of them look like keys.
cities = st.sampled_from(["Paris", "paris", "", "a:b", "{tag}", "Zürich", "x\ny", None])
users = st.sampled_from(["ann", "bob", "cy", "ann "])
picks = st.integers(min_value=0, max_value=10_000)


class Rollback(Exception):
    pass


def _row(pick: int) -> Message | None:
    pks = list(Message.objects.order_by("pk").values_list("pk", flat=True))
    return Message.objects.get(pk=pks[pick % len(pks)]) if pks else None


def create(username: str, city: str | None) -> None:
    Message.objects.create(username=username, city=city)


def change(pick: int, city: str | None, username: str | None) -> None:
    row = _row(pick)
    if row is not None:
        row.city = city
        if username is not None:
            row.username = username
        row.save()


def delete(pick: int) -> None:
    row = _row(pick)
    if row is not None:
        row.delete()


def bulk_create(rows: list[tuple[str, str | None]]) -> None:
    Message.objects.bulk_create([Message(username=u, city=c) for u, c in rows])


def queryset_update(old: str | None, new: str | None) -> None:
    Message.objects.filter(city=old).update(city=new)


def queryset_delete(username: str) -> None:
    Message.objects.filter(username=username).delete()


def bulk_update(pick: int, city: str | None) -> None:
    rows = list(Message.objects.order_by("pk")[pick % 5 :][:3])
    for row in rows:
        row.city = city
    Message.objects.bulk_update(rows, ["city"])


simple_ops = st.one_of(
    st.tuples(st.just(create), users, cities),
    st.tuples(st.just(change), picks, cities, st.one_of(st.none(), users)),
    st.tuples(st.just(delete), picks),
    st.tuples(st.just(bulk_create), st.lists(st.tuples(users, cities), max_size=4)),
    st.tuples(st.just(queryset_update), cities, cities),
    st.tuples(st.just(queryset_delete), users),
    st.tuples(st.just(bulk_update), picks, cities),
)
# A block is run in a transaction (or savepoint) that commits or rolls back.
blocks = st.tuples(
    st.sampled_from(["commit", "rollback", "savepoint_rollback"]),
    st.lists(simple_ops, min_size=1, max_size=4),
)
programs = st.lists(st.one_of(simple_ops, blocks), min_size=1, max_size=8)


def run(op: tuple[Any, ...]) -> None:
    if callable(op[0]):
        op[0](*op[1:])
        return
    mode, ops = op
    try:
        with transaction.atomic():
            for inner in ops[: len(ops) // 2]:
                run(inner)
            if mode == "savepoint_rollback":
                try:
                    with transaction.atomic():
                        for inner in ops[len(ops) // 2 :]:
                            run(inner)
                        raise Rollback
                except Rollback:
                    pass
            else:
                for inner in ops[len(ops) // 2 :]:
                    run(inner)
            if mode == "rollback":
                raise Rollback
    except Rollback:
        pass


@pytest.fixture(autouse=True)
def built() -> None:
    call_command("rebuild_counts", verbosity=0)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=programs)
def test_counters_equal_the_database_after_any_program(program: list[tuple[Any, ...]]) -> None:
    # Examples run one after the other on the same tables: the counters must stay exact across
    # all of them, not only from a fresh start.
    for op in program:
        run(op)
    for counter in counters_of(Message):
        [drift] = check(counter)
        assert drift.ok, (counter.label, drift.as_dict())
        assert DistinctCount.get(counter.field.name, Message) == distinct_in_db(
            Message, counter.field.name
        )
