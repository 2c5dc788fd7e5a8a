"""How a value is written down in Redis: one canonical text per value the database stores.

Values go through :func:`normalize` on every path (signals, bulk operations, rebuilds,
lookups), so values the database treats as equal count once whatever Python type they
arrived as, and values it stores apart count apart. What a database stores can depend on
the database: a decimal is rounded half away from zero by PostgreSQL (and MySQL, Oracle),
kept unrounded by SQLite, which also stores a float NaN as NULL. Each counter follows the
database its model's rows are written to (:func:`database_of`).

:func:`inexact` names the fields whose values cannot be counted exactly (the system checks
refuse them).
"""

from __future__ import annotations

import datetime
import decimal
import functools
import math
import re
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, models, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.expressions import Expression
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.ipv6 import clean_ipv6_address

#: Precision wide enough to quantize any decimal a database column holds without raising.
_WIDE = decimal.Context(prec=1000)
_SQLITE_READ = decimal.Context(prec=15)  # SQLite keeps 15 significant digits of a REAL
_INTEGER = re.compile(r"[+-]?\d+")
_IPV4 = re.compile(r"(\d+)\.(\d+)\.(\d+)\.(\d+)(?:/32)?")


#: The column types (``get_internal_type()`` of the column, or of a generated field's
#: ``output_field``) whose values :func:`normalize` writes down as the database compares
#: them. Others (``JSONField``: ``jsonb`` equality is not the equality of any Python text;
#: PostgreSQL's arrays, ranges, ``hstore``; custom types) cannot be counted exactly.
EXACT_TYPES = frozenset(
    {
        "AutoField",
        "BigAutoField",
        "SmallAutoField",
        "IntegerField",
        "BigIntegerField",
        "SmallIntegerField",
        "PositiveIntegerField",
        "PositiveBigIntegerField",
        "PositiveSmallIntegerField",
        "BooleanField",
        "CharField",
        "TextField",
        "SlugField",
        "FilePathField",
        "FileField",
        "DecimalField",
        "FloatField",
        "DateField",
        "DateTimeField",
        "TimeField",
        "DurationField",
        "UUIDField",
        "GenericIPAddressField",
        "BinaryField",
    }
)
#: Collations that compare text byte by byte, as the counters do. Any other (a
#: nondeterministic ICU collation, SQLite's NOCASE or RTRIM) may make "A" = "a" in GROUP BY.
BYTEWISE_COLLATIONS = frozenset({"C", "POSIX", "ucs_basic", "BINARY"})


def target(field: models.Field[Any, Any]) -> models.Field[Any, Any]:
    """The field whose column holds the value: the target of a relation, else ``field``."""
    if field.is_relation:
        column: models.Field[Any, Any] = field.target_field  # type: ignore[attr-defined]
        return column
    return field


def storage(field: models.Field[Any, Any]) -> models.Field[Any, Any]:
    """The field that says how the column stores values: :func:`target`, or a generated
    field's ``output_field``."""
    column = target(field)
    output: models.Field[Any, Any] | None = getattr(column, "output_field", None)
    return output if isinstance(output, models.Field) else column


@functools.cache
def database_of(model: type[models.Model] | None) -> str:
    """The alias of the database ``model``'s rows are written to (the router's choice).

    Cached: ``registry.clear_cache()`` forgets it (on ``setting_changed`` of ``DATABASES``
    or ``DATABASE_ROUTERS``)."""
    if model is None:
        return DEFAULT_DB_ALIAS
    return str(router.db_for_write(model) or DEFAULT_DB_ALIAS)


def _connection(field: models.Field[Any, Any]) -> BaseDatabaseWrapper:
    return connections[database_of(getattr(field, "model", None))]


def normalize(field: models.Field[Any, Any], value: Any, vendor: str | None = None) -> str | None:
    """The canonical text of ``value`` as the database stores it in ``field``; ``None`` for
    SQL NULL.

    ``Decimal("1.1")`` and ``Decimal("1.10")`` in a ``decimal_places=2`` field both become
    ``"1.10"``; ``Decimal("1.005")`` becomes ``"1.01"`` on PostgreSQL, ``"1.005"`` on SQLite
    (which stores it unrounded); a model instance given for a ForeignKey becomes the value
    of the field it points to; datetimes become UTC. ``vendor`` (``"postgresql"``,
    ``"sqlite"``...) defaults to the vendor of the database the field's model is written to.
    The text of a value normalizes to itself.
    """
    if type(value) is str and text_as_is(field):
        return value  # The common case, and the whole of a rebuild's per-value work.
    column = storage(field)
    if isinstance(value, models.Model):
        value = getattr(value, column.attname) if field.is_relation else value.pk
    if value is None:
        return None
    kind = column.get_internal_type()
    if kind == "GenericIPAddressField":
        return _address(column, value, vendor or _connection(field).vendor)
    if kind == "BinaryField":
        return (bytes.fromhex(value) if isinstance(value, str) else bytes(value)).hex()
    value = column.to_python(value)
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, decimal.Decimal):
        return _decimal(column, value, field, vendor)
    if isinstance(value, float):
        if math.isnan(value):
            return None if (vendor or _connection(field).vendor) == "sqlite" else "nan"
        return "0.0" if value == 0 else repr(value)  # -0.0 = 0.0 in SQL
    if isinstance(value, datetime.datetime):
        return _moment(value)
    if isinstance(value, datetime.time):
        return value.replace(tzinfo=None).isoformat()  # A time column keeps no offset.
    if isinstance(value, datetime.date):
        return value.isoformat()
    return str(value)


def _decimal(
    column: models.Field[Any, Any], value: decimal.Decimal, field: Any, vendor: str | None
) -> str:
    """What the database stores of a decimal: Django adapts it (Django 4.2 rounds it half to
    even, as text; 5.x sends it as it is), then PostgreSQL rounds half away from zero to the
    field's places, while SQLite stores the number unrounded (NUMERIC affinity)."""
    connection = _connection(field)
    places: int = column.decimal_places  # type: ignore[attr-defined]
    sent = connection.ops.adapt_decimalfield_value(value, column.max_digits, places)  # type: ignore[attr-defined]
    if (vendor or connection.vendor) == "sqlite":
        return _sqlite_number(str(sent), places)
    stored = decimal.Decimal(str(sent)).quantize(
        decimal.Decimal(1).scaleb(-places), rounding=decimal.ROUND_HALF_UP, context=_WIDE
    )
    return format(stored.copy_abs() if stored.is_zero() else stored, "f")


def _sqlite_number(text: str, places: int) -> str:
    """The text of the number SQLite's NUMERIC affinity makes of ``text``: an INTEGER when
    the number is a whole one within 64 bits (exactly), else a REAL, of which SQLite (and
    Django's read) keep 15 significant digits. Written with at least ``places`` places."""
    number: int | float
    if _INTEGER.fullmatch(text) and -(2**63) <= int(text) < 2**63:
        number = int(text)
    else:
        number = float(text)
        if number.is_integer() and -(2**63) <= number < 2**63:
            number = int(number)
    exact = (
        decimal.Decimal(number)
        if isinstance(number, int)
        else _SQLITE_READ.create_decimal_from_float(number).normalize(_SQLITE_READ)
    )
    if exact.as_tuple().exponent > -places:  # type: ignore[operator]
        exact = exact.quantize(decimal.Decimal(1).scaleb(-places), context=_WIDE)
    return format(exact.copy_abs() if exact.is_zero() else exact, "f")


def _moment(value: datetime.datetime) -> str:
    """A datetime as the database stores it: with ``USE_TZ``, the instant (a naive value is
    taken in the default time zone, as Django saves it), written in UTC with its offset;
    without, the local time."""
    if settings.USE_TZ:
        if timezone.is_naive(value):
            value = timezone.make_aware(value, timezone.get_default_timezone())
        return value.astimezone(datetime.timezone.utc).isoformat()
    if timezone.is_aware(value):
        value = timezone.make_naive(value, timezone.get_default_timezone())
    return value.isoformat()


def _address(column: models.Field[Any, Any], value: Any, vendor: str) -> str | None:
    """An IP address as the database stores it: the text Django sends (IPv6 compressed, ""
    as NULL); PostgreSQL's ``inet`` keeps the address, not its text (``01.2.3.4`` is
    ``1.2.3.4``, a host mask is dropped, IPv6 it prints its own way)."""
    text = column.get_prep_value(value)
    if not text:
        return None
    if vendor == "postgresql":
        if match := _IPV4.fullmatch(text):
            return ".".join(str(int(part)) for part in match.groups())
        if ":" in text:
            try:
                return str(clean_ipv6_address(text.removesuffix("/128")))
            except Exception:
                return str(text)  # Not an address: the database refuses it.
    return str(text)


@functools.cache
def stored_value(field: models.Field[Any, Any]) -> str | Expression:
    """What to select to read ``field`` as the database stores it: its attname, except for
    a decimal on SQLite, read as SQLite's text of the number (Django's read rounds it to the
    field's places, while SQLite stores and groups it unrounded). Cached, so one field's
    expression is one object: queries select it once however many counters read it."""
    attname = str(field.attname)
    column = storage(field)
    if column.get_internal_type() == "DecimalField" and _connection(field).vendor == "sqlite":
        return Cast(attname, models.TextField())
    return attname


def denormalize(field: models.Field[Any, Any], text: str) -> Any:
    """Turn a normalized value back into one the ORM can filter ``field`` on."""
    column = storage(field)
    if column.get_internal_type() == "BinaryField":
        return bytes.fromhex(text)
    value = column.to_python(text)
    if isinstance(column, models.DateTimeField) and value is not None:
        if settings.USE_TZ and timezone.is_naive(value):
            value = timezone.make_aware(value, datetime.timezone.utc)
    return value


@functools.cache
def text_as_is(field: models.Field[Any, Any]) -> bool:
    """Whether ``field`` stores a ``str`` as it is: a text column whose ``to_python`` is
    Django's own (a subclass that overrides it, e.g. to change case, goes the long way).

    Then a rebuild's per-value work is nothing at all, and a save's is one type check."""
    column_type = type(storage(field))
    to_python = getattr(column_type.to_python, "__func__", column_type.to_python)
    return to_python in (models.CharField.to_python, models.TextField.to_python)
