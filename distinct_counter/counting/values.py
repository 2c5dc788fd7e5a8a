"""How a value is written down in Redis: one canonical text per value the database stores.

Values go through :func:`normalize` on every path (signals, bulk operations, rebuilds,
lookups), so values the database treats as equal count once whatever Python type they
arrived as.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


def target(field: models.Field[Any, Any]) -> models.Field[Any, Any]:
    """The field whose column holds the value: the target of a relation, else ``field``."""
    if field.is_relation:
        column: models.Field[Any, Any] = field.target_field  # type: ignore[attr-defined]
        return column
    return field


def normalize(field: models.Field[Any, Any], value: Any) -> str | None:
    """The canonical text of ``value`` as stored in ``field``; ``None`` for SQL NULL.

    ``Decimal("1.1")`` and ``Decimal("1.10")`` in a ``decimal_places=2`` field both become
    ``"1.10"``, as the database stores them; a model instance given for a ForeignKey becomes its
    primary key; datetimes become UTC.
    """
    if type(value) is str and text_as_is(field):
        return value  # The common case, and the whole of a rebuild's per-value work.
    if isinstance(value, models.Model):
        value = value.pk
    if value is None:
        return None
    column = target(field)
    value = column.to_python(value)
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, decimal.Decimal):
        places = getattr(column, "decimal_places", None)
        if places is not None and value.is_finite():
            value = value.quantize(decimal.Decimal(1).scaleb(-places))
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        moment = value
        if moment.tzinfo is not None:
            moment = moment.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return moment.isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def denormalize(field: models.Field[Any, Any], text: str) -> Any:
    """Turn a normalized value back into one the ORM can filter ``field`` on."""
    column = target(field)
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
    column_type = type(target(field))
    to_python = getattr(column_type.to_python, "__func__", column_type.to_python)
    return to_python in (models.CharField.to_python, models.TextField.to_python)
