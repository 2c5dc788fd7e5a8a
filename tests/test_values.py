"""Every value is counted as the database stores it: for each counted field type, awkward
values written through each ORM path, compared with the database's own ``GROUP BY`` and
``COUNT(DISTINCT)`` (never with what the counters were sent).

This module also runs on SQLite (tests/test_sqlite.py).
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.db import connection, models, transaction
from django.db.models import Count
from django.db.models.functions import Cast

from distinct_counter import DistinctCount
from distinct_counter.counting.values import normalize
from tests.typesapp.models import Target, Typed, UuidTarget

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # Naive datetimes are among the values: Django saves them in the default time zone.
    pytest.mark.filterwarnings("ignore:DateTimeField Typed.moment received a naive:RuntimeWarning"),
]

D = decimal.Decimal
UTC = datetime.timezone.utc
INDIA = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
NEW_YORK = ZoneInfo("America/New_York")
TEXTS = [
    "a",
    "a ",
    " a",
    "A",
    "",
    "\u00e9",  # é composed
    "e\u0301",  # é decomposed: another string, another value
    "ß",
    "ss",
    "0",
    "None",
    "İ",
    "x" * 50,
]
UID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def _targets() -> dict[str, list[Any]]:
    first, second = Target.objects.create(code="A"), Target.objects.create(code="a")
    one, two = UuidTarget.objects.create(), UuidTarget.objects.create()
    return {
        "target": [first, first.pk, str(first.pk), second, second.pk],
        "uuid_target": [one, one.pk, str(one.pk).upper(), one.pk.hex, two, str(two.pk)],
        "code": [first, "A", "a", second, "a"],
    }


VALUES: dict[str, list[Any]] = {
    "char": TEXTS,
    "text": [*TEXTS, "line\nbreak", "y" * 5000],
    "slug": ["a", "A", "a-b", "a_b", ""],
    "email": ["a@example.org", "A@example.org", "a@EXAMPLE.org", "a@example.org "],
    "url": ["http://example.org", "http://example.org/", "HTTP://example.org", ""],
    "file": ["a.txt", "A.txt", "a.txt ", "dir/a.txt", ""],
    "integer": [0, -1, 1, 2**31 - 1, -(2**31), "7", 7, 7.9, D("7.2"), True],
    "big": [2**63 - 1, -(2**63), 2**53, 2**53 + 1, "9223372036854775807", 0],
    "small": [-32768, 32767, "0", 0, False],
    "positive": [0, 2**31 - 1, "1", 1.0],
    "positive_big": [0, 2**63 - 1, 2**53 + 1, 2**53],
    "positive_small": [0, 32767, "32767"],
    "boolean": [True, False, 1, 0, "t", "False", "1"],
    "decimal": [
        D("1.005"),
        D("1.015"),
        D("-1.005"),
        D("1.1"),
        D("1.10"),
        "1.100",
        D("1.01"),
        D("1.00"),
        D("-0.00"),
        D("0"),
        D("-0"),
        D("0.001"),
        D("-0.001"),
        D("0.005"),
        D("-0.005"),
        D("0.0049"),
        D("999999.99"),
        D("-999999.99"),
        1.005,  # a float: Django makes a Decimal of max_digits digits first
        2.675,
        D("1E+2"),
        12,
        "12.000",
        D("2.5"),
        D("3.5"),
    ],
    "wide_decimal": [
        D("12345.0000000001"),
        D("1234.00000000005"),
        D("1234.00000000015"),
        D("1E-10"),
        D("0.00000000005"),
        D("-0.00000000005"),
        D("99999999999999.5"),
        D("100000000000000"),
        0.1,
    ],
    "real": [
        0.0,
        -0.0,
        1.0,
        1,
        0.1,
        0.1 + 0.2,
        0.3,
        1e308,
        -1e-308,
        5e-324,
        float("inf"),
        float("-inf"),
        float("nan"),
        -float("nan"),
        "2.5",
        D("0.1"),
        2**53 + 1,
    ],
    "day": [
        datetime.date(2024, 1, 2),
        "2024-01-02",
        datetime.date(1, 1, 1),
        datetime.date(9999, 12, 31),
        datetime.datetime(2024, 1, 2, 3, 0, tzinfo=UTC),  # 2024-01-01 in Chicago
    ],
    "moment": [
        datetime.datetime(2024, 1, 1, 12, 0, tzinfo=UTC),
        datetime.datetime(2024, 1, 1, 17, 30, tzinfo=INDIA),  # the same instant
        datetime.datetime(2024, 1, 1, 7, 0, tzinfo=NEW_YORK),  # the same instant again
        datetime.datetime(2024, 1, 1, 12, 0, 0, 1, tzinfo=UTC),
        datetime.datetime(2024, 1, 1, 12, 0, 0, 999999, tzinfo=UTC),
        datetime.datetime(2024, 1, 1, 6, 0),  # naive: Chicago's 12:00 UTC
        datetime.datetime(2024, 1, 1, 12, 0),  # naive
        datetime.date(2024, 1, 1),  # midnight in Chicago
        "2024-01-01T12:00:00Z",
        "2024-01-01 12:00:00+00:00",
        datetime.datetime(2024, 11, 3, 1, 30, fold=0, tzinfo=NEW_YORK),
        datetime.datetime(2024, 11, 3, 1, 30, fold=1, tzinfo=NEW_YORK),  # an hour later
    ],
    "time": [
        datetime.time(10, 0),
        "10:00",
        datetime.time(10, 0, 0, 1),
        datetime.time(23, 59, 59, 999999),
        "10:00:00.000000",
        datetime.time(0, 0),
    ],
    "duration": [
        datetime.timedelta(0),
        datetime.timedelta(days=1),
        datetime.timedelta(hours=24),
        datetime.timedelta(microseconds=-1),
        datetime.timedelta(days=-1),
        datetime.timedelta(days=-1, seconds=86399),
        datetime.timedelta(days=1, microseconds=1),
    ],
    "uuid": [
        UID,
        str(UID),
        str(UID).upper(),
        UID.hex,
        UID.hex.upper(),
        f"{{{UID}}}",
        uuid.UUID(int=0),
    ],
    "address": [
        "1.2.3.4",
        "::1",
        "0:0:0:0:0:0:0:1",
        "2001:DB8::1",
        "2001:0db8:0000:0000:0000:0000:0000:0001",
        "2001:db8:0:0:1:0:0:1",
        "::ffff:1.2.3.4",
        "::ffff:102:304",
        "::1:0",
        "",
    ],
    "ipv4": ["1.2.3.4", "::ffff:1.2.3.4", "::ffff:0102:0304", "::1"],
    "blob": [b"a", b"a\x00", b"", bytearray(b"a"), memoryview(b"b"), b"\xff\xfe", b"A"],
}
FOREIGN_KEYS = ("target", "uuid_target", "code")
FIELDS = [*VALUES, *FOREIGN_KEYS]


def given(name: str, value: Any) -> dict[str, Any]:
    """The keyword that writes ``value``: the field's name for an instance, else its
    attname (a foreign key's raw value)."""
    field = Typed._meta.get_field(name)
    return {name if isinstance(value, models.Model) else field.attname: value}


def set_value(row: Typed, name: str, value: Any) -> None:
    [(key, value)] = given(name, value).items()
    setattr(row, key, value)


def read_as_stored(name: str) -> Any:
    """What the test selects to name a group: the ORM's value, except a decimal on SQLite
    (which stores it unrounded, while the ORM's read rounds it)."""
    field = Typed._meta.get_field(name)
    if connection.vendor == "sqlite" and isinstance(field, models.DecimalField):
        return Cast(name, models.TextField())
    return field.attname


def assert_exact(name: str) -> None:
    """Redis agrees with the database, value by value."""
    field = Typed._meta.get_field(name)
    table, column = Typed._meta.db_table, field.column
    with connection.cursor() as cur:
        cur.execute(f'SELECT COUNT(DISTINCT "{column}") FROM "{table}"')
        distinct = cur.fetchone()[0]
        cur.execute(
            f'SELECT COUNT(*) FROM "{table}" WHERE "{column}" IS NOT NULL GROUP BY "{column}"'
        )
        sizes = sorted(n for (n,) in cur.fetchall())
    result = DistinctCount.read(name, Typed)
    assert (result.source, result.state, result.count) == ("redis", "ok", distinct)
    members = list(DistinctCount.members(name, Typed))
    # A member's text is a value too: it names its own group.
    assert sorted(DistinctCount.frequency(name, m, Typed) for m in members) == sizes
    groups = (
        Typed.objects.filter(**{f"{field.attname}__isnull": False})
        .values_list(read_as_stored(name))
        .annotate(n=Count("pk"))
        .order_by()
    )
    for value, n in groups:
        assert DistinctCount.frequency(name, value, Typed) == n, (value, normalize(field, value))


@pytest.fixture(autouse=True)
def built() -> None:
    call_command("rebuild_counts", "typesapp", verbosity=0)


def values_of(name: str) -> list[Any]:
    return _targets()[name] if name in FOREIGN_KEYS else VALUES[name]


@pytest.mark.parametrize("name", FIELDS)
def test_every_write_path_counts_values_as_stored(name: str) -> None:
    values = values_of(name)
    rows = [Typed.objects.create(**given(name, v)) for v in values]
    assert_exact(name)
    Typed.objects.bulk_create([Typed(**given(name, v)) for v in values])
    assert_exact(name)
    for row, value in zip(rows, values[1:] + values[:1], strict=True):
        set_value(row, name, value)
        row.save()
    assert_exact(name)
    Typed.objects.filter(pk__in=[r.pk for r in rows[::2]]).update(**given(name, values[-1]))
    assert_exact(name)
    everyone = list(Typed.objects.order_by("pk"))
    for row, value in zip(everyone, reversed(values * 2), strict=False):
        set_value(row, name, value)
    Typed.objects.bulk_update(everyone, [name])
    assert_exact(name)
    rows[0].delete()
    Typed.objects.filter(pk__in=[r.pk for r in rows[1::3]]).delete()
    assert_exact(name)
    call_command("rebuild_counts", f"typesapp.Typed.{name}", verbosity=0)
    assert_exact(name)


@pytest.mark.parametrize("name", FIELDS)
def test_a_values_text_normalizes_to_itself(name: str) -> None:
    field = Typed._meta.get_field(name)
    for value in values_of(name):
        text = normalize(field, value)
        assert text is None or normalize(field, text) == text, (value, text)


@pytest.mark.parametrize("name", FOREIGN_KEYS)
def test_a_foreign_key_is_found_by_its_instance(name: str) -> None:
    values = values_of(name)
    for value in values:
        Typed.objects.create(**given(name, value))
    instance = values[0]
    assert (
        DistinctCount.frequency(name, instance, Typed)
        == Typed.objects.filter(**{name: instance}).count()
    )
    assert DistinctCount.frequency(name, instance, Typed) > 0


@pytest.mark.parametrize(
    "value,postgresql,sqlite",
    [
        (D("1.005"), "1.01", "1.005"),  # half away from zero, where quantize is half-even
        (D("-1.005"), "-1.01", "-1.005"),
        (D("1.1"), "1.10", "1.10"),
        (D("-0.001"), "0.00", "-0.001"),
        (D("-0.00"), "0.00", "0.00"),
        # SQLite keeps 15 significant digits of a REAL: these count as one there.
        (D("1.0000000000000001"), "1.00", "1.00"),
        (D("1234567.123456789012"), "1234567.12", "1234567.12345679"),
    ],
)
def test_decimals_as_each_database_rounds_them(value: Any, postgresql: str, sqlite: str) -> None:
    field = Typed._meta.get_field("decimal")
    assert normalize(field, value, vendor="postgresql") == postgresql
    assert normalize(field, value, vendor="sqlite") == sqlite


def test_each_counter_follows_its_models_database(settings: Any) -> None:
    from distinct_counter.counting import values

    class ToReplica:
        def db_for_write(self, model: Any, **hints: Any) -> str | None:
            return "replica" if model is Typed else None

    assert values.database_of(Typed) == "default"
    settings.DATABASE_ROUTERS = [ToReplica()]
    assert values.database_of(Typed) == "replica"  # setting_changed cleared the cache


def test_a_value_changed_in_place_after_its_save_counts_as_saved() -> None:
    """A row's values are tallied when its transaction commits: one the application changes
    in place after the save (a ``bytearray``, a ``FieldFile``) counts as it was saved."""
    blob = bytearray(b"saved")
    with transaction.atomic():
        row = Typed.objects.create(blob=blob, file="saved.txt")
        blob[:] = b"later"
        row.file.name = "later.txt"
    assert DistinctCount.contains("blob", b"saved", Typed)
    assert not DistinctCount.contains("blob", b"later", Typed)
    assert_exact("blob")
    assert_exact("file")
