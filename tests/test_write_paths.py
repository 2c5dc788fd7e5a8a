"""Every way Django writes a row of a counted table reaches the counters: proxies,
multi-table children, the delete collector's SET_NULL/SET_DEFAULT/SET(...), expressions,
values the database computes, fixtures, bulk_update's own semantics, querysets that cannot
be locked directly, and other apps' raising commit hooks. Each test compares every counter,
value by value, with the database's own ``GROUP BY``, and checks reads come from Redis."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import transaction
from django.db.models import Case, Count, F, Value, When
from django.db.models.functions import Concat, Lower, Upper

from distinct_counter import DistinctCount
from distinct_counter.counting.registry import Counter, all_counters
from tests.conftest import master, stored
from tests.shapes.models import Branch, Kiosk, Owner, Pet, Place, PlaceProxy, Tag

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def built() -> None:
    call_command("rebuild_counts", verbosity=0)


def in_database(counter: Counter) -> dict[str, int]:
    """Each value's number of rows, by the database's own GROUP BY."""
    rows = (
        counter.model._base_manager.values(counter.attname)
        .annotate(n=Count("pk"))
        .order_by()
        .values_list(counter.attname, "n")
    )
    found: dict[str, int] = {}
    for value, n in rows:
        text = counter.normalize(value)
        if text is not None:
            found[text] = found.get(text, 0) + n
    return found


def in_redis(counter: Counter) -> dict[str, int]:
    return {k: v for k, v in stored(counter).items() if v}


def assert_exact() -> None:
    for counter in all_counters():
        if counter.model._meta.app_label not in ("shapes", "shapes5"):
            continue
        assert in_redis(counter) == in_database(counter), counter.label
        result = DistinctCount.read(counter.field.name, counter.model)
        assert (result.source, result.state) == ("redis", "ok"), counter.label
        assert result.count == len(in_database(counter)), counter.label


def test_proxy_writes_count() -> None:
    PlaceProxy.objects.create(city="Paris", name="a")
    PlaceProxy.objects.bulk_create([PlaceProxy(city="Oslo"), PlaceProxy(city="Rome")])
    obj = PlaceProxy.objects.get(city="Paris")
    obj.city = "Lyon"
    obj.save()
    PlaceProxy.objects.filter(city="Oslo").update(city="Bern")
    assert_exact()
    PlaceProxy.objects.filter(city="Rome").delete()
    PlaceProxy.objects.get(city="Lyon").delete()
    assert_exact()


def test_multi_table_children_count_in_their_parents() -> None:
    Branch.objects.create(city="Paris", name="b", code="B1")
    Kiosk.objects.create(city="Oslo", name="k", stall=3)
    Place.objects.create(city="Rome")
    assert_exact()
    branch = Branch.objects.get()
    branch.city = "Lyon"
    branch.code = "B2"
    branch.save()
    Kiosk.objects.update(city="Bern", visits=F("visits") + 2)
    Branch.objects.filter(code="B2").update(city="Nice")
    assert_exact()
    Place.objects.get(city="Nice").delete()  # the Branch row goes with its parent
    Kiosk.objects.all().delete()
    assert_exact()


@pytest.mark.parametrize("how", ["instance", "queryset"])
def test_a_proxy_delete_of_a_row_with_a_multi_table_child(how: str) -> None:
    # The collector holds the row twice, as the proxy and as the child's parent, and sends
    # both instances' delete signals for the one row.
    branch = Branch.objects.create(city="Paris", code="B")
    PlaceProxy.objects.create(city="Oslo")
    if how == "instance":
        PlaceProxy.objects.get(pk=branch.pk).delete()
    else:
        PlaceProxy.objects.all().delete()
    assert_exact()


@pytest.mark.parametrize("how", ["save", "update", "bulk_update"])
def test_a_parent_field_written_through_the_parent_of_a_child_row(how: str) -> None:
    # Branch counts city, a field of its parent: a write through Place of a row that is a
    # Branch changes Branch's counter too.
    branch = Branch.objects.create(city="Paris", code="B")
    place = Place.objects.get(pk=branch.pk)
    place.city = "Oslo"
    if how == "save":
        place.save()
    elif how == "update":
        Place.objects.filter(pk=place.pk).update(city="Oslo")
    else:
        Place.objects.bulk_update([place], ["city"])
    assert_exact()


def test_the_delete_collector_rewrites_counted_foreign_keys() -> None:
    ann, bob, cy = (Owner.objects.create(name=n) for n in ("ann", "bob", "cy"))
    for i in range(3):
        Pet.objects.create(
            name=f"p{i}", owner=cy, carer=ann, vet=ann, sitter=ann, walker=bob, groomer=ann
        )
    assert_exact()
    ann.delete()  # SET_NULL, SET_DEFAULT, SET(callable), DO_NOTHING
    assert_exact()
    Owner.objects.filter(name="cy").delete()  # CASCADE
    assert_exact()


def test_a_deletion_that_also_deletes_rewritten_rows() -> None:
    ann = Owner.objects.create(name="ann")
    Pet.objects.create(name="both", owner=ann, carer=ann)
    Pet.objects.create(name="kept", carer=ann)
    ann.delete()
    assert_exact()


@pytest.mark.parametrize(
    "assign",
    [
        lambda: {"visits": F("visits") + 1},
        lambda: {"city": Upper("city")},
        lambda: {"city": Concat("city", Value("!"))},
        lambda: {"name": Case(When(visits__gt=0, then=Value("big")), default=Value("small"))},
        lambda: {"name": Lower(F("city"))},
    ],
)
def test_expressions_in_save_update_and_bulk_update(assign: Any) -> None:
    Place.objects.bulk_create([Place(city=c, name="n", visits=i) for i, c in enumerate("aAb")])
    first = Place.objects.order_by("pk").first()
    assert first is not None
    for name, value in assign().items():
        setattr(first, name, value)
    first.save()
    assert_exact()
    Place.objects.filter(city__in=["A", "b"]).update(**assign())
    assert_exact()
    rows = list(Place.objects.order_by("pk"))
    for row in rows:
        for name, value in assign().items():
            setattr(row, name, value)
    Place.objects.bulk_update(rows, list(assign()))
    assert_exact()


def test_bulk_update_accepts_what_django_accepts() -> None:
    a, b = Place.objects.bulk_create([Place(city="a"), Place(city="b")])
    twice = Place.objects.get(pk=a.pk)
    a.city, twice.city, b.city = "first", "second", "third"
    Place.objects.bulk_update([a, b, twice], (f for f in ["city"]))  # one batch
    assert_exact()
    a.city, twice.city = "x", "y"
    Place.objects.bulk_update([a, twice], ["city"], batch_size=1)  # across batches
    assert_exact()


def test_update_of_querysets_that_cannot_be_locked_directly() -> None:
    ann = Owner.objects.create(name="ann")
    Pet.objects.create(name="a", carer=ann)
    Pet.objects.create(name="b")
    Pet.objects.filter(carer__isnull=True).update(name="stray")  # outer join
    Pet.objects.filter(carer__name="ann").distinct().update(name="cared")
    Pet.objects.distinct().filter(name="stray").delete()
    assert_exact()


def test_values_the_database_computes() -> None:
    from tests.shapes5.models import Reading

    Reading.objects.create(raw="AbC")
    Reading.objects.bulk_create([Reading(raw="x"), Reading(raw="X", source="manual")])
    reading = Reading.objects.get(raw="AbC")
    reading.raw = "Q"
    reading.save()
    Reading.objects.filter(raw="x").update(raw="Y")
    assert_exact()


def test_loaddata_over_existing_rows_of_a_uuid_pk(tmp_path: Path) -> None:
    tag = Tag.objects.create(label="old")
    place = Place.objects.create(city="old")
    fixture = tmp_path / "rows.json"
    fixture.write_text(
        json.dumps(
            [
                {"model": "shapes.tag", "pk": str(tag.pk), "fields": {"label": "new"}},
                {"model": "shapes.tag", "pk": str(uuid.uuid4()), "fields": {"label": "other"}},
                {"model": "shapes.place", "pk": place.pk, "fields": {"city": "new"}},
            ]
        )
    )
    call_command("loaddata", str(fixture), verbosity=0)
    assert_exact()


def test_a_raising_commit_hook_of_another_app_loses_no_write() -> None:
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            transaction.on_commit(lambda: (_ for _ in ()).throw(RuntimeError("other app")))
            Place.objects.create(city="Paris")
            Tag.objects.create(label="t")
    assert Place.objects.filter(city="Paris").exists()
    assert_exact()


def test_rolled_back_savepoints_send_nothing() -> None:
    with transaction.atomic():
        Place.objects.create(city="kept")
        try:
            with transaction.atomic():
                Place.objects.create(city="gone")
                raise ValueError
        except ValueError:
            pass
    assert_exact()


@pytest.mark.parametrize("mode", ["ignore", "update"])
def test_bulk_create_with_conflicts(mode: str) -> None:
    Tag.objects.create(label="old", slug="a")
    Tag.objects.create(label="kept", slug="b")
    rows = [Tag(label="new", slug="a"), Tag(label="fresh", slug="c"), Tag(label="x", slug=None)]
    if mode == "ignore":
        Tag.objects.bulk_create(rows, ignore_conflicts=True)
    else:
        Tag.objects.bulk_create(
            rows, update_conflicts=True, unique_fields=["slug"], update_fields=["label"]
        )
    assert_exact()


def test_bulk_create_ignoring_conflicts_on_an_automatic_pk() -> None:
    kept = Place.objects.create(city="kept")
    Place.objects.bulk_create(
        [Place(pk=kept.pk, city="clash"), Place(city="new"), Place(city="kept")],
        ignore_conflicts=True,
    )
    assert_exact()


def test_rebuild_and_check_of_every_shape() -> None:
    from distinct_counter.api import check

    owner = Owner.objects.create(name="o")
    Branch.objects.create(city="Paris", code="B")
    Kiosk.objects.create(city="Oslo")
    PlaceProxy.objects.create(city="Rome")
    Tag.objects.create(label="t", slug="s")
    Pet.objects.create(name="p", owner=owner, carer=owner)
    master().flushall()
    call_command("rebuild_counts", verbosity=0)
    assert_exact()
    assert all(d.ok for d in check("shapes"))


def test_django_refuses_what_it_refuses_with_its_own_errors() -> None:
    Place.objects.create(city="a")
    with pytest.raises(TypeError, match="slice"):
        Place.objects.all()[:1].update(city="b")
    with pytest.raises(TypeError, match="limit"):
        Place.objects.all()[:1].delete()
    with pytest.raises(TypeError, match="values"):
        Place.objects.values("city").delete()
    assert_exact()


def test_bulk_create_with_conflicts_inside_a_savepoint() -> None:
    Tag.objects.create(label="old", slug="a")
    with transaction.atomic():
        Place.objects.create(city="first")
        with transaction.atomic():  # rows written here carry the savepoint's own xid
            Tag.objects.bulk_create(
                [Tag(label="new", slug="a"), Tag(label="x", slug="b")],
                update_conflicts=True,
                unique_fields=["slug"],
                update_fields=["label"],
            )
    assert_exact()


def test_bulk_create_ignoring_conflicts_of_rows_the_database_computes() -> None:
    from tests.shapes5.models import Reading

    Reading.objects.bulk_create([Reading(), Reading(raw="Ab")], ignore_conflicts=True)
    assert_exact()


def test_bulk_writes_of_values_equal_in_python_but_not_in_the_database() -> None:
    """``1``, ``1.0`` and ``True`` are one dict key in Python and three texts in a
    ``CharField``; a ``str`` subclass and ``None`` among plain strings: every bulk path
    counts what the database stores."""

    class Text(str):
        pass

    cities: list[Any] = [1, 1.0, True, "1", "True", Text("1"), None, "x", "x"]
    created = Place.objects.bulk_create([Place(city=c, visits=v) for v, c in enumerate(cities)])
    assert_exact()
    for place, city in zip(created, reversed(cities), strict=True):
        place.city = city
    Place.objects.bulk_update(created, ["city"])
    assert_exact()
    Place.objects.filter(pk__in=[p.pk for p in created[:4]]).update(city=True)
    assert_exact()
