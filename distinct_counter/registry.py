"""Which fields are counted, how their values are written down, and where in Redis they live.

One :class:`Counter` per counted field of each concrete :class:`~distinct_counter.models.CountedModel`.
Values go through :func:`normalize` on every path (signals, bulk operations, rebuilds, lookups),
so values the database treats as equal count once whatever Python type they arrived as.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import uuid
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.db import models

from distinct_counter.conf import conf
from distinct_counter.exceptions import NotCounted


@dataclass(frozen=True)
class Counter:
    """The distinct values of one field of one model."""

    model: type[models.Model]
    field: models.Field[Any, Any]

    @property
    def label(self) -> str:
        """``app_label.modelname.field``, the counter's name in commands and key names."""
        return f"{self.model._meta.label_lower}.{self.field.name}"

    @property
    def attname(self) -> str:
        """The column attribute: ``city`` or, for a ForeignKey, ``author_id``."""
        return str(self.field.attname)

    def key(self, part: str, prefix: str | None = None) -> str:
        """A Redis key of this counter.

        The hash tag ``{...}`` puts every key of one counter in one Redis Cluster slot, so the
        scripts that touch several of them at once run anywhere. Values never appear in key
        names (they are hash fields), so no value can collide with or inject into a key.
        """
        return f"{prefix or conf.KEY_PREFIX}:{{{self.label}}}:{part}"

    def normalize(self, value: Any) -> str | None:
        return normalize(self.field, value)

    def __str__(self) -> str:
        return self.label


def normalize(field: models.Field[Any, Any], value: Any) -> str | None:
    """The canonical text of ``value`` as stored in ``field``; ``None`` for SQL NULL.

    ``Decimal("1.1")`` and ``Decimal("1.10")`` in a ``decimal_places=2`` field both become
    ``"1.10"``, as the database stores them; a model instance given for a ForeignKey becomes its
    primary key; datetimes become UTC.
    """
    if value.__class__ is str and _text_as_is(field):
        return value  # The common case, and the whole of a rebuild's per-value work: no copy.
    if isinstance(value, models.Model):
        value = value.pk
    if value is None:
        return None
    target = field.target_field if field.is_relation else field  # type: ignore[attr-defined]
    value = target.to_python(value)
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, decimal.Decimal):
        places = getattr(target, "decimal_places", None)
        if places is not None and value.is_finite():
            value = value.quantize(decimal.Decimal(1).scaleb(-places))
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


@functools.cache
def _text_as_is(field: models.Field[Any, Any]) -> bool:
    """Whether ``field`` stores a ``str`` as it is: a text column whose ``to_python`` is
    Django's own (a subclass that overrides it, e.g. to change case, goes the long way)."""
    target = field.target_field if field.is_relation else field  # type: ignore[attr-defined]
    to_python = getattr(type(target).to_python, "__func__", type(target).to_python)
    return to_python in (models.CharField.to_python, models.TextField.to_python)


def counted_models() -> list[type[models.Model]]:
    """Every installed concrete model that subclasses ``CountedModel``."""
    from distinct_counter.models import CountedModel

    return [
        m for m in apps.get_models()
        if issubclass(m, CountedModel) and not m._meta.abstract and not m._meta.proxy
    ]


@functools.cache
def counters_of(model: type[models.Model]) -> tuple[Counter, ...]:
    """The counters of one model, in the order of its ``counted_fields``.

    Fields that do not exist or cannot be counted are left out here; the system checks report
    them.
    """
    result = []
    for name in getattr(model, "counted_fields", ()) or ():
        try:
            field = model._meta.get_field(name)
        except Exception:
            continue
        if getattr(field, "concrete", False) and not field.many_to_many:
            result.append(Counter(model, field))  # type: ignore[arg-type]
    return tuple(result)


@functools.cache
def all_counters() -> tuple[Counter, ...]:
    """Every counter of every installed counted model (computed once: apps do not change)."""
    return tuple(c for model in counted_models() for c in counters_of(model))


def resolve(field: str, model: type[models.Model] | str | None = None) -> Counter:
    """Find the counter of ``field`` (of ``model``, a class or ``"app_label.Model"``).

    :raises NotCounted: the field is not counted, or several models count it and ``model``
        was not given; the message lists the counters there are.
    """
    if model is None or isinstance(model, str):
        return _resolve_cached(field, model)
    return _resolve(field, model)


def _resolve(field: str, model: type[models.Model] | str | None) -> Counter:
    candidates = all_counters()
    if isinstance(model, str):
        model_label = model.lower()
        matches = [c for c in candidates if c.model._meta.label_lower == model_label]
    elif model is not None:
        concrete = model._meta.concrete_model
        matches = [c for c in candidates if c.model is concrete]
    else:
        matches = candidates
    matches = [c for c in matches if c.field.name == field or c.attname == field]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sorted(c.label for c in candidates)) or "none"
    if not matches:
        where = f" of {model if isinstance(model, str) else model._meta.label}" if model else ""
        raise NotCounted(f"{field!r}{where} is not a counted field; counted fields: {known}")
    names = ", ".join(sorted(c.model._meta.label for c in matches))
    raise NotCounted(
        f"{field!r} is counted by several models ({names}); pass model=... to choose one"
    )


@functools.cache
def _resolve_cached(field: str, model: str | None) -> Counter:
    return _resolve(field, model)


def clear_cache() -> None:
    _text_as_is.cache_clear()
    counters_of.cache_clear()
    all_counters.cache_clear()
    _resolve_cached.cache_clear()
