"""The public API module: everything in it is importable from ``distinct_counter``, and
``counters``, ``rebuild`` and ``check`` take counters by name, by field or by model."""

from __future__ import annotations

import pytest
from django.db import connection

import distinct_counter
from distinct_counter import (
    CountedModel,
    Counter,
    DistinctCount,
    check,
    counters,
    rebuild,
)
from tests.conftest import distinct_in_db, master
from tests.testapp.models import Item, Message, Venue

pytestmark = pytest.mark.django_db(transaction=True)


def labels(selected: list[Counter]) -> list[str]:
    return [c.label for c in selected]


def test_counters_by_app_model_field_name_model_class_and_counter() -> None:
    assert labels(counters("testapp.Message")) == [
        "testapp.message.username",
        "testapp.message.city",
    ]
    assert labels(counters("testapp.message.city")) == ["testapp.message.city"]
    # A field's name alone, as DistinctCount takes it: that field in every model counting it.
    assert [x for x in labels(counters("city")) if x.startswith("testapp.")] == [
        "testapp.message.city",
        "testapp.venue.city",
    ]
    assert labels(counters("author_id")) == ["testapp.item.author"]
    assert labels(counters(Venue)) == ["testapp.venue.city"]
    [venue_city] = counters(Venue)
    assert counters(venue_city, "testapp.Venue") == [venue_city]  # no counter twice
    assert {x for x in labels(counters()) if x.startswith("testapp.")} == {
        *labels(counters("testapp"))
    }
    assert len(counters("testapp")) == 2 + 6 + 1


@pytest.mark.parametrize("name", ["nope", "testapp.Nope", "testapp.message.body", "a.b.c.d"])
def test_an_unknown_name_is_a_value_error_listing_the_counters(name: str) -> None:
    with pytest.raises(ValueError, match=f"'{name}' names no counted model or field; counters: "):
        counters(name)


def test_a_model_without_counted_fields_is_a_value_error() -> None:
    class NotCountedHere(CountedModel):
        class Meta:
            app_label = "testapp"
            abstract = True

    with pytest.raises(ValueError, match="has no counted field"):
        counters(NotCountedHere)


def test_rebuild_and_check_answer_as_the_database_does() -> None:
    Message.objects.bulk_create(
        [Message(username=f"u{i % 7}", city=f"c{i % 3}") for i in range(50)]
    )
    Venue.objects.create(city="Oslo")
    with connection.cursor() as cur:  # a write the ORM does not see: counters now drift
        cur.execute("UPDATE testapp_message SET city = 'raw' WHERE username = 'u1'")
    master().flushall()
    results = rebuild("testapp.message.city", "testapp.venue.city")
    assert [(r.counter.label, r.values) for r in results] == [
        ("testapp.message.city", distinct_in_db(Message, "city")),
        ("testapp.venue.city", 1),
    ]
    assert DistinctCount.read("city", Message).source == "redis"
    assert DistinctCount.get("city", Message) == distinct_in_db(Message, "city")
    assert [d.ok for d in check("testapp.message.city", "testapp.venue.city")] == [True, True]
    assert [d.state for d in check(Message)] == ["missing", "ok"]  # username: not rebuilt
    with connection.cursor() as cur:
        cur.execute("UPDATE testapp_message SET city = 'raw2' WHERE username = 'u2'")
    [drift] = check("testapp.message.city")
    assert not drift.ok and drift.missing == 1 and "raw2" in drift.examples
    assert [d.ok for d in check(Item)] == [False] * 6  # never built: state "missing"


def test_every_public_name_is_documented() -> None:
    from distinct_counter import api

    for name in api.__all__:
        assert getattr(distinct_counter, name).__doc__, name
