"""The counters follow every kind of write, checked against the database's COUNT(DISTINCT).

This module also runs on SQLite (tests/test_sqlite.py), so it uses only portable features.
"""

from __future__ import annotations

import datetime
import decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Upper
from django.db.models.signals import post_save, pre_save
from django.test.utils import CaptureQueriesContext
from redis.crc import key_slot

from distinct_counter import DistinctCount
from distinct_counter.counting import handlers
from distinct_counter.counting.registry import resolve
from distinct_counter.exceptions import CounterUnavailable, NotCounted
from tests.conftest import distinct_in_db, master, stored
from tests.testapp.factories import AuthorFactory, ItemFactory, MessageFactory
from tests.testapp.models import Author, Item, Message, Venue

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGE_FIELDS = ("username", "city")
ITEM_FIELDS = ("price", "day", "qty", "flag", "author", "label")


@pytest.fixture(autouse=True)
def built() -> None:
    """Counters start built (and empty), as after a deployment's first rebuild_counts."""
    call_command("rebuild_counts", verbosity=0)


def assert_exact(model: type = Message, fields: tuple[str, ...] = MESSAGE_FIELDS) -> None:
    for field in fields:
        result = DistinctCount.read(field, model)
        assert (field, result.source, result.count) == (
            field,
            "redis",
            distinct_in_db(model, field),
        ), field


def frequency_in_db(model: type, field: str, value: Any) -> int:
    return int(model._base_manager.filter(**{field: value}).count())


# -- single rows -------------------------------------------------------------------------------


def test_create_update_delete() -> None:
    a = Message.objects.create(username="ann", city="Paris")
    Message.objects.create(username="bob", city="Paris")
    assert DistinctCount.get("city", Message) == 1
    assert DistinctCount.frequency("city", "Paris", Message) == 2
    a.city = "Lyon"
    a.save()
    assert DistinctCount.frequency("city", "Paris", Message) == 1
    assert DistinctCount.frequency("city", "Lyon", Message) == 1
    assert_exact()
    a.delete()
    assert not DistinctCount.contains("city", "Lyon", Message)
    assert_exact()


def test_save_update_fields() -> None:
    m = Message.objects.create(username="ann", city="Paris")
    m.city = "Lyon"
    m.username = "zed"
    m.save(update_fields=["username"])  # city is not saved: its counter must not move
    assert DistinctCount.contains("username", "zed", Message)
    assert DistinctCount.contains("city", "Paris", Message)
    assert not DistinctCount.contains("city", "Lyon", Message)
    assert_exact()
    m.save(update_fields=["city"])
    assert DistinctCount.contains("city", "Lyon", Message)
    assert_exact()


def test_update_fields_without_counted_fields_reads_nothing_more() -> None:
    m = Message.objects.create(username="ann", city="Paris")
    m.body = "changed"
    with CaptureQueriesContext(connection) as ctx:
        m.save(update_fields=["body"])
    assert len(ctx.captured_queries) == 1


def test_refresh_from_db_then_save() -> None:
    m = Message.objects.create(username="ann", city="Paris")
    Message.objects.filter(pk=m.pk).update(city="Oslo")
    m.refresh_from_db()
    m.city = "Rome"
    m.save()
    assert not DistinctCount.contains("city", "Oslo", Message)
    assert_exact()


def test_stale_instance_saved_takes_old_value_from_database() -> None:
    m = Message.objects.create(username="ann", city="Paris")
    other = Message.objects.get(pk=m.pk)
    other.city = "Oslo"
    other.save()
    m.city = "Rome"  # m still believes the row holds Paris
    m.save()
    assert DistinctCount.frequency("city", "Oslo", Message) == 0
    assert_exact()


def test_hand_built_instance_with_existing_pk() -> None:
    m = Message.objects.create(username="ann", city="Paris")
    Message(pk=m.pk, username="ann", city="Lyon").save()
    assert not DistinctCount.contains("city", "Paris", Message)
    assert_exact()
    Message(pk=m.pk + 1000, username="new", city="Lyon").save()  # an insert after all
    assert DistinctCount.frequency("city", "Lyon", Message) == 2
    assert_exact()


def test_null_is_not_counted_and_empty_string_is() -> None:
    Message.objects.create(username="a", city=None)
    Message.objects.create(username="b", city=None)
    assert DistinctCount.get("city", Message) == 0 == distinct_in_db(Message, "city")
    assert DistinctCount.frequency("city", None, Message) == 0
    m = Message.objects.create(username="c", city="")
    assert DistinctCount.get("city", Message) == 1 == distinct_in_db(Message, "city")
    m.city = None
    m.save()
    assert_exact()


# -- values ------------------------------------------------------------------------------------


def test_values_equal_in_the_database_count_once() -> None:
    author = AuthorFactory()
    Item.objects.create(
        price=decimal.Decimal("1.1"), day=datetime.date(2024, 1, 2), qty=3, flag=True, author=author
    )
    Item.objects.create(
        price=decimal.Decimal("1.10"), day="2024-01-02", qty="3", flag=1, author_id=author.pk
    )
    Item.objects.create(
        price="1.100", day=datetime.date(2024, 1, 2), qty=3.0, flag="t", author=author
    )
    assert_exact(Item, ITEM_FIELDS)
    assert DistinctCount.get("price", Item) == 1
    assert DistinctCount.frequency("price", decimal.Decimal("1.1"), Item) == 3
    assert DistinctCount.frequency("author", author, Item) == 3
    assert DistinctCount.frequency("flag", True, Item) == 3
    # The rebuild path normalizes the database's values through the same function.
    call_command("rebuild_counts", "testapp.Item", verbosity=0)
    assert_exact(Item, ITEM_FIELDS)
    call_command("rebuild_counts", "testapp.Item", check=True, stdout=_null())


@pytest.mark.parametrize(
    "value",
    [
        "a:b",
        "{testapp.item.label}:values",
        "}{",
        "line\nbreak",
        "tab\there",
        "ünïcødé ☃ 中文",
        "x" * 1900,
        " padded ",
        "",
        "0",
        "None",
        "\\",
        "'quote\"",
    ],
)
def test_awkward_values_count_and_never_touch_key_names(value: str) -> None:
    Item.objects.create(label=value)
    Item.objects.create(label=value)
    Item.objects.create(label=value + "2")
    assert DistinctCount.frequency("label", value, Item) == 2
    assert_exact(Item, ("label",))
    keys = {k.decode() for k in master().keys("*")}
    assert all(k.startswith("distinct_counter:{") for k in keys), keys
    assert not any(value and value in k.split("}", 1)[1] for k in keys if len(value) > 2)


def test_key_names_carry_prefix_label_field_and_one_hash_slot() -> None:
    MessageFactory.create_batch(3)
    keys = sorted(k.decode() for k in master().keys("distinct_counter:{testapp.message.city}*"))
    assert any(k.startswith("distinct_counter:{testapp.message.city}:b:") for k in keys)
    assert "distinct_counter:{testapp.message.city}:meta" in keys
    assert len({key_slot(k.encode()) for k in keys}) == 1


def test_key_prefix_setting(settings: Any) -> None:
    settings.DISTINCT_COUNTER = {**settings.DISTINCT_COUNTER, "KEY_PREFIX": "other"}
    call_command("rebuild_counts", "testapp.Venue", verbosity=0)
    Venue.objects.create(city="Paris")
    assert master().hget("other:{testapp.venue.city}:meta", "len") == b"1"
    assert DistinctCount.get("city", Venue) == 1


# -- other apps' receivers --------------------------------------------------------------------


@pytest.fixture
def receivers_first() -> Any:
    """Connect receivers for Message ahead of the app's own, as a receiver declared in a
    models module is (it is imported before any app is ready)."""
    connected: list[tuple[Any, Any]] = []

    def connect(signal: Any, receiver: Any) -> None:
        for model_signal in (pre_save, post_save):
            model_signal.disconnect(sender=Message, dispatch_uid=_UID)
        signal.connect(receiver, sender=Message)
        connected.append((signal, receiver))
        handlers.connect(Message)

    yield connect
    for signal, receiver in connected:
        signal.disconnect(receiver, sender=Message)


_UID = "distinct_counter:testapp.Message"


def test_a_receiver_saving_the_new_row_again_keeps_both_saves_counted(receivers_first: Any) -> None:
    def stamp(sender: Any, instance: Message, created: bool, **kwargs: Any) -> None:
        if created and instance.city is None:
            instance.city = f"city of {instance.username}"
            instance.save(update_fields=["city"])

    receivers_first(post_save, stamp)
    Message.objects.create(username="ann")
    Message.objects.create(username="bob", city="Paris")
    row = Message.objects.create(username="cid")
    row.city = None
    row.save()
    assert DistinctCount.contains("city", "city of ann", Message)
    assert_exact()


def test_a_receiver_changing_the_values_before_the_save_is_counted(receivers_first: Any) -> None:
    def upper(sender: Any, instance: Message, **kwargs: Any) -> None:
        instance.city = (instance.city or "").upper() or None

    receivers_first(pre_save, upper)
    Message.objects.create(username="ann", city="paris")
    row = Message.objects.create(username="bob", city="lyon")
    row.city = "rome"
    row.save()
    assert DistinctCount.contains("city", "ROME", Message)
    assert_exact()


def test_a_failed_save_leaves_nothing_for_the_next_save_of_the_instance() -> None:
    kept = Message.objects.create(username="kept", city="Paris")
    clash = Message(pk=kept.pk, username="clash", city="Rome")
    with pytest.raises(IntegrityError), transaction.atomic():
        clash.save(force_insert=True)
    clash.save(update_fields=["body"])  # writes no counted field
    assert not DistinctCount.contains("city", "Rome", Message)
    assert_exact()


# -- transactions ------------------------------------------------------------------------------


def test_rollback_leaves_no_trace() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        Message.objects.create(username="ghost", city="Nowhere")
        raise RuntimeError
    assert not DistinctCount.contains("city", "Nowhere", Message)
    assert_exact()


def test_rolled_back_savepoint_leaves_no_trace() -> None:
    with transaction.atomic():
        Message.objects.create(username="kept", city="Paris")
        with pytest.raises(RuntimeError), transaction.atomic():
            Message.objects.create(username="ghost", city="Nowhere")
            raise RuntimeError
        Message.objects.create(username="kept2", city="Lyon")
    assert not DistinctCount.contains("city", "Nowhere", Message)
    assert DistinctCount.get("username", Message) == 2
    assert_exact()


def test_nothing_reaches_redis_before_commit() -> None:
    with transaction.atomic():
        Message.objects.create(username="ann", city="Paris")
        assert stored(resolve("city", Message)) == {}
    assert stored(resolve("city", Message)) == {"Paris": 1}


def _evalsha_calls() -> int:
    stats = master().info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_transaction_reaches_redis_in_one_call() -> None:
    Message.objects.create(username="warm", city="up")  # loads the script
    before = _evalsha_calls()
    with transaction.atomic():
        for i in range(100):
            Message.objects.create(username=f"u{i}", city=f"c{i % 7}")
        Venue.objects.create(city="Paris")
    # One EVALSHA for every counter touched (message.username, message.city, venue.city),
    # not one per save nor one per counter.
    assert _evalsha_calls() - before == 1
    assert_exact()


def test_a_transaction_asks_for_its_id_once() -> None:
    with CaptureQueriesContext(connection) as ctx, transaction.atomic():
        for i in range(5):
            Message.objects.create(username=f"u{i}", city="Paris")
    asked = [q for q in ctx.captured_queries if "pg_current_xact_id" in q["sql"]]
    assert len(asked) == (1 if connection.vendor == "postgresql" else 0)
    assert_exact()


def test_a_long_transaction_of_creates_and_deletes_is_exact() -> None:
    """Thousands of rows, each write's values tallied in batches during the transaction
    (a thousand at a time), around savepoints kept and rolled back."""
    cities = [None, "", "Paris", "Lyon", "Rome"]
    with transaction.atomic():
        made = [
            Message.objects.create(username=f"u{i % 300}", city=cities[i % 5]) for i in range(2500)
        ]
        for row in made[::2]:
            row.delete()
        quarter = [row.pk for row in made[1::4]]
        with pytest.raises(RuntimeError), transaction.atomic():
            for i in range(1500):
                Message.objects.create(username=f"gone{i}", city="Nowhere")
            for row in made[1::4]:
                row.delete()
            raise RuntimeError
        with transaction.atomic():
            for pk in quarter:
                Message.objects.get(pk=pk).delete()
        Message.objects.create(username="last", city="Oslo")
    assert not DistinctCount.contains("city", "Nowhere", Message)
    assert_exact()


def test_writes_with_and_without_their_own_atomic_block_share_one_part() -> None:
    """A save that opens ``atomic(savepoint=False)`` (to lock the old values it reads) and
    one that does not join the same pending part: ours stay two commit hooks however many
    writes alternate (a part each made a transaction of many writes quadratic)."""
    row = Message.objects.create(username="first", city="Paris")
    with transaction.atomic():
        for i in range(50):
            Message.objects.create(username=f"u{i}", city="Lyon")
            row.city = Upper(Value(f"c{i}"))  # computed: read back, in its own atomic block
            row.save()
        assert len(connection.run_on_commit) <= 2
    assert_exact()


# -- several models ----------------------------------------------------------------------------


def test_several_models_count_separately() -> None:
    Message.objects.create(username="a", city="Paris")
    Venue.objects.create(city="Paris")
    Venue.objects.create(city="Rome")
    assert DistinctCount.get("city", Message) == 1
    assert DistinctCount.get("city", Venue) == 2
    assert DistinctCount.get("city", "testapp.Venue") == 2
    assert DistinctCount.get("username") == 1  # unambiguous without a model


def test_not_counted_and_ambiguous_fields_name_the_counters() -> None:
    with pytest.raises(
        NotCounted, match="'body' of testapp.Message is not a counted field.*testapp.message.city"
    ):
        DistinctCount.get("body", Message)
    with pytest.raises(NotCounted, match=r"several models \(.*testapp.Message, testapp.Venue\)"):
        DistinctCount.get("city")
    with pytest.raises(ValueError, match="nope"):
        DistinctCount.get("nope")


# -- bulk operations ---------------------------------------------------------------------------


def test_bulk_create() -> None:
    Message.objects.bulk_create(
        [
            Message(username=f"u{i % 13}", city=[None, "", "Paris", "Lyon"][i % 4])
            for i in range(500)
        ],
        batch_size=100,
    )
    assert_exact()


def test_bulk_update() -> None:
    messages = MessageFactory.create_batch(60)
    for i, m in enumerate(messages):
        m.city = f"new{i % 5}" if i % 3 else None
        m.username = "same"
    Message.objects.bulk_update(messages, ["city"], batch_size=25)
    assert_exact()
    Message.objects.bulk_update(messages, ["username"])
    assert DistinctCount.get("username", Message) == 1
    assert_exact()


def test_queryset_update() -> None:
    MessageFactory.create_batch(40)
    Message.objects.filter(city="Paris").update(city="Lyon")
    assert_exact()
    Message.objects.filter(username__in=["user1", "user2"]).update(city=None, username="x")
    assert_exact()
    Message.objects.update(city="Everywhere")
    assert DistinctCount.get("city", Message) == 1
    assert_exact()


def test_queryset_update_reads_old_values_in_the_same_statement_or_one_query() -> None:
    MessageFactory.create_batch(30)
    with CaptureQueriesContext(connection) as ctx:
        Message.objects.filter(city__in=["Paris", "Lyon"]).update(city="Rome", username="x")
    first_words = [q["sql"].split()[0] for q in ctx.captured_queries]
    statements = [w for w in first_words if w not in ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE")]
    if connection.vendor == "postgresql":
        # One statement reads the old values and updates the rows it read.
        assert statements == ["WITH"]
    else:
        assert statements == ["SELECT", "UPDATE"]  # one locking read, one update
    assert_exact()


def test_queryset_update_of_every_shape_of_filter() -> None:
    # Filters of the table alone (its WHERE used as is), every row, across a join, through
    # a subquery, with extra() and with an annotation (all rows read by pk): each stays exact.
    authors = AuthorFactory.create_batch(3)
    for i in range(30):
        ItemFactory(author=authors[i % 3], qty=i % 4, label=f"l{i % 5}")
    updates = [
        lambda: Item.objects.filter(pk__gte=Item.objects.order_by("pk")[10].pk),
        lambda: Item.objects.all(),
        lambda: Item.objects.exclude(pk__in=[]),
        lambda: Item.objects.filter(author__name=authors[1].name),
        lambda: Item.objects.filter(pk__in=Item.objects.filter(qty=2).values("pk")),
        lambda: Item.objects.extra(where=["qty >= %s"], params=[2]),
        lambda: Item.objects.annotate(twice=F("qty") * 2).filter(twice__gte=4),
        lambda: Item.objects.filter(label="l1").distinct(),
        lambda: Item.objects.none(),
    ]
    for i, rows in enumerate(updates):
        expected = rows().count()
        assert rows().update(label=f"new{i}", qty=i) == expected, i
        assert_exact(Item, ITEM_FIELDS)


def test_queryset_update_of_a_range_of_pks_reads_it_by_its_own_where() -> None:
    # A range of pks is read by its range (an index), not by "pk IN (subquery)", which
    # PostgreSQL answered by reading the whole table.
    first = MessageFactory.create_batch(20)[5].pk
    with CaptureQueriesContext(connection) as ctx:
        Message.objects.filter(pk__gte=first).update(city="Rome")
    [statement] = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith("WITH")] or [""]
    if connection.vendor == "postgresql":
        reads = statement.split("), _dc_new")[0]
        assert reads.endswith(f'FROM "testapp_message" WHERE "testapp_message"."id" >= {first}')
    assert_exact()


def test_update_of_uncounted_fields_costs_no_extra_query() -> None:
    MessageFactory.create_batch(5)
    with CaptureQueriesContext(connection) as ctx:
        Message.objects.filter(city="Paris").update(body="edited")
    assert len(ctx.captured_queries) == 1


def test_update_with_an_expression_is_read_back_exactly() -> None:
    MessageFactory.create_batch(10)
    Message.objects.update(city=Upper("username"))
    result = DistinctCount.read("city", Message)
    assert (result.state, result.source) == ("ok", "redis")
    assert_exact()


def test_update_with_an_expression_on_an_uncounted_field_stays_exact() -> None:
    MessageFactory.create_batch(5)
    Message.objects.update(body=F("username"))
    assert_exact()


def test_queryset_delete() -> None:
    MessageFactory.create_batch(50)
    Message.objects.filter(city__in=["Paris", ""]).delete()
    assert_exact()
    Message.objects.all().delete()
    assert DistinctCount.get("username", Message) == 0
    assert_exact()


def test_queryset_delete_of_rows_with_nulls_in_many_counted_fields() -> None:
    # Each counted column grouped apart: a NULL is no value, and never taken for "this
    # column was not grouped here".
    author = AuthorFactory()
    for i in range(40):
        Item.objects.create(
            qty=i % 3 if i % 4 else None,
            label=None if i % 5 == 0 else f"l{i % 6}",
            flag=None if i % 2 else bool(i % 3),
            author=author if i % 7 else None,
        )
    Item.objects.filter(qty__isnull=True).delete()
    assert_exact(Item, ITEM_FIELDS)
    some = Item.objects.filter(label__in=["l1", "l2"])
    expected = some.count()
    assert expected and some.delete()[0] == expected
    assert_exact(Item, ITEM_FIELDS)
    left = Item.objects.count()
    assert Item.objects.all().delete()[0] == left
    assert_exact(Item, ITEM_FIELDS)


def test_queryset_delete_is_one_statement_when_nothing_cascades() -> None:
    MessageFactory.create_batch(40)
    paris = Message.objects.filter(city="Paris").count()
    with CaptureQueriesContext(connection) as ctx:
        deleted = Message.objects.filter(city="Paris").delete()
    if connection.vendor == "postgresql":
        # The DELETE returns the values it deleted, grouped: no read before, no collector
        # fetch (elsewhere the old values are read, locked, first).
        assert [q["sql"].split()[0] for q in ctx.captured_queries] == ["WITH"]
    assert deleted == (paris, {"testapp.Message": paris} if paris else {})
    assert_exact()
    assert Message.objects.none().delete() == (0, {})


def test_cascade_from_another_model() -> None:
    a, b = AuthorFactory(), AuthorFactory()
    ItemFactory.create_batch(5, author=a, label="x")
    ItemFactory.create_batch(3, author=b, label="y")
    a.delete()
    assert DistinctCount.get("author", Item) == 1
    assert not DistinctCount.contains("label", "x", Item)
    assert_exact(Item, ITEM_FIELDS)
    Author.objects.all().delete()
    assert_exact(Item, ITEM_FIELDS)


def test_update_or_create_and_get_or_create() -> None:
    m, _ = Message.objects.get_or_create(username="ann", defaults={"city": "Paris"})
    Message.objects.get_or_create(username="ann", defaults={"city": "Lyon"})
    assert not DistinctCount.contains("city", "Lyon", Message)
    Message.objects.update_or_create(pk=m.pk, defaults={"city": "Oslo"})
    Message.objects.update_or_create(username="bob", defaults={"city": "Oslo"})
    assert DistinctCount.frequency("city", "Oslo", Message) == 2
    assert_exact()


# -- reading -----------------------------------------------------------------------------------


def test_members_streams_every_distinct_value() -> None:
    Message.objects.bulk_create([Message(username=f"user{i}", city=None) for i in range(2500)])
    members = list(DistinctCount.members("username", Message, batch_size=100))
    assert len(members) == len(set(members)) == 2500 == distinct_in_db(Message, "username")
    assert set(members) == set(Message.objects.values_list("username", flat=True))


def test_a_counter_never_built_is_missing_not_zero(settings: Any) -> None:
    Venue.objects.create(city="Paris")
    master().flushall()  # as on a Redis that never saw rebuild_counts
    Venue.objects.create(city="Rome")  # writes do not fill a counter that was never built
    result = DistinctCount.read("city", Venue)
    assert (result.count, result.source, result.state) == (2, "database", "missing")
    assert not master().exists("distinct_counter:{testapp.venue.city}:values")
    settings.DISTINCT_COUNTER = {**settings.DISTINCT_COUNTER, "FALLBACK": "raise"}
    with pytest.raises(CounterUnavailable, match="missing.*rebuild_counts") as exc:
        DistinctCount.get("city", Venue)
    assert exc.value.state == "missing"
    call_command("rebuild_counts", "testapp.Venue", verbosity=0)
    assert DistinctCount.read("city", Venue).source == "redis"
    assert DistinctCount.get("city", Venue) == 2


def test_frequency_contains_and_members_fall_back_too() -> None:
    MessageFactory.create_batch(10)
    master().flushall()
    assert DistinctCount.frequency("city", "Paris", Message) == frequency_in_db(
        Message, "city", "Paris"
    )
    assert DistinctCount.contains("city", "Lyon", Message)
    assert set(DistinctCount.members("city", Message)) == set(
        Message.objects.exclude(city=None).values_list("city", flat=True)
    )


def _null() -> Any:
    import io

    return io.StringIO()


def test_a_text_field_that_converts_values_counts_them_converted() -> None:
    from django.db import models

    from distinct_counter.counting.values import normalize

    class LowerField(models.CharField):
        def to_python(self, value: Any) -> Any:
            value = super().to_python(value)
            return value.lower() if isinstance(value, str) else value

    assert normalize(LowerField(max_length=5), "ABC") == "abc"
    assert normalize(models.CharField(max_length=5), "ABC") == "ABC"
    assert normalize(models.IntegerField(), "7") == "7"


def test_an_instance_given_its_pk_as_text_counts_like_any_other() -> None:
    row = Message.objects.create(username="alice", city="Paris")
    Message(pk=str(row.pk), username="carol", city="Lyon").save()
    assert_exact()
    assert DistinctCount.frequency("username", "alice", Message) == 0
    Message(pk=str(row.pk)).delete()
    assert_exact()
    assert DistinctCount.frequency("username", "carol", Message) == 0
