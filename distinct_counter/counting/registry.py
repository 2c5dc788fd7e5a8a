"""Which fields are counted, and where in Redis their counters live.

One :class:`Counter` per counted field of each concrete counted model (a subclass of
:class:`~distinct_counter.models.CountedModel`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field as attribute
from typing import Any

from django.apps import apps
from django.db import models

from distinct_counter.counting.conf import conf
from distinct_counter.counting.values import (
    database_of,
    denormalize,
    normalize,
    stored_value,
    text_as_is,
)
from distinct_counter.exceptions import NotCounted

#: The class attribute that marks ``CountedModel`` and its subclasses. The registry looks for
#: it rather than importing ``CountedModel``, which sits above it (it needs the write path).
MARKER = "_distinct_counter_counted"


@dataclass(frozen=True)
class Counter:
    """The distinct values of one field of one model."""

    model: type[models.Model]
    field: models.Field[Any, Any]
    #: The column attribute: ``city`` or, for a ForeignKey, ``author_id``.
    attname: str = attribute(init=False, repr=False, compare=False, default="")
    #: Whether the field is a generated column (Django 5's ``GeneratedField``).
    generated: bool = attribute(init=False, repr=False, compare=False, default=False)
    # Counters key the dicts of every write's deltas: hashed once, not per lookup; and the
    # attributes above are read several times per save.
    _hash: int = attribute(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.model, self.field)))
        object.__setattr__(self, "attname", str(self.field.attname))
        object.__setattr__(self, "generated", bool(getattr(self.field, "generated", False)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def label(self) -> str:
        """``app_label.modelname.field``, the counter's name in commands and key names."""
        return f"{self.model._meta.label_lower}.{self.field.name}"

    @property
    def column(self) -> Any:
        """What to select to read the value as the database stores it: the attname, or an
        expression where the ORM's read would change it (``values.stored_value``)."""
        return stored_value(self.field)

    def key(self, part: str) -> str:
        """A Redis key of this counter.

        The hash tag ``{...}`` puts every key of one counter in one Redis Cluster slot, so the
        scripts that touch several of them at once run anywhere. Values never appear in key
        names (they are hash fields), so no value can collide with or inject into a key.
        """
        return f"{conf.KEY_PREFIX}:{{{self.label}}}:{part}"

    def hot_keys(self) -> tuple[str, ...]:
        """The keys every write (``scripts.APPLY``) names: meta, journal_on, journal,
        missed and pending, built once per ``KEY_PREFIX``."""
        return _hot_keys(self, conf.KEY_PREFIX)

    def normalize(self, value: Any) -> str | None:
        return normalize(self.field, value)

    def denormalize(self, text: str) -> Any:
        return denormalize(self.field, text)

    def __str__(self) -> str:
        return self.label


@functools.lru_cache(maxsize=4096)
def _hot_keys(counter: Counter, prefix: str) -> tuple[str, ...]:
    parts = ("meta", "journal_on", "journal", "missed", "pending")
    return tuple(counter.key(part) for part in parts)


def is_counted(model: type[models.Model]) -> bool:
    """Whether ``model`` is a concrete model with counters of its own: a subclass of
    ``CountedModel`` that declares ``counted_fields`` itself (or through an abstract base).

    A multi-table child that only inherits its parent's ``counted_fields`` has none: its rows
    are rows of the parent's table, counted by the parent's counters. A proxy has none: it is
    its concrete model's.
    """
    if not getattr(model, MARKER, False) or model._meta.abstract or model._meta.proxy:
        return False
    owner = next((c for c in model.__mro__ if "counted_fields" in c.__dict__), model)
    meta = getattr(owner, "_meta", None)
    return owner is model or meta is None or bool(meta.abstract)


def counted_models() -> list[type[models.Model]]:
    """Every installed concrete model with counters of its own."""
    return [m for m in apps.get_models() if is_counted(m)]


@functools.cache
def counters_of(model: type[models.Model]) -> tuple[Counter, ...]:
    """The counters of one model (of its concrete model, for a proxy), in the order of its
    ``counted_fields``: the counters that a row of its table is counted in, and that a
    delete of one of its instances changes.

    Fields that do not exist or cannot be counted are left out here; the system checks report
    them.
    """
    model = model._meta.concrete_model or model
    if not is_counted(model):
        return ()
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
def lineage(model: type[models.Model]) -> tuple[type[models.Model], ...]:
    """``model``'s concrete model and its multi-table parents: the tables a save writes."""
    concrete = model._meta.concrete_model or model
    return (concrete, *concrete._meta.get_parent_list())


@functools.cache
def written_counters(model: type[models.Model]) -> tuple[Counter, ...]:
    """The counters that a save (or an update) of ``model``'s rows changes: its own, those
    of its multi-table parents (a child's save writes its parents' rows too, with no signal
    of their own), and those of its multi-table descendants on a column of those tables (a
    row written through the parent may be a child's row). A delete sends a signal per
    table, so it changes only :func:`counters_of` of each.
    """
    tables = lineage(model)
    below = (
        c
        for c in all_counters()
        if c.model not in tables
        and tables[0] in c.model._meta.get_parent_list()
        and c.field.model._meta.concrete_model in tables
    )
    return tuple(c for m in tables for c in counters_of(m)) + tuple(below)


def touched(model: type[models.Model], names: Iterable[str] | None) -> tuple[Counter, ...]:
    """The :func:`written_counters` of ``model`` whose field is among ``names`` (a name or an
    attname), and its generated fields' whenever any field is written; all of them for None
    (a save without ``update_fields``)."""
    counters = written_counters(model)
    if names is None:
        return counters
    wanted = set(names)
    if not wanted:
        return ()
    return tuple(
        c for c in counters if c.field.name in wanted or c.attname in wanted or c.generated
    )


@functools.cache
def all_counters() -> tuple[Counter, ...]:
    """Every counter of every installed counted model (computed once: apps do not change)."""
    return tuple(c for model in counted_models() for c in counters_of(model))


def rewrites(field: models.Field[Any, Any]) -> bool:
    """Whether deleting the row ``field`` points at makes the collector rewrite ``field``."""
    on_delete = getattr(field.remote_field, "on_delete", None)
    if on_delete in (models.SET_NULL, models.SET_DEFAULT):
        return True
    deconstruct = getattr(on_delete, "deconstruct", None)
    return deconstruct is not None and deconstruct()[0] == "django.db.models.SET"


@functools.cache
def rewritten_by(model: type[models.Model]) -> tuple[Counter, ...]:
    """The counters of foreign keys that a delete of ``model``'s rows rewrites."""
    concrete = model._meta.concrete_model
    return tuple(
        c
        for c in all_counters()
        if (c.field.many_to_one or c.field.one_to_one)
        and c.field.related_model._meta.concrete_model is concrete  # type: ignore[union-attr]
        and rewrites(c.field)
    )


def resolve(field: str, model: type[models.Model] | str | None = None) -> Counter:
    """Find the counter of ``field`` (of ``model``, a class or ``"app_label.Model"``).

    :raises NotCounted: the field is not counted, or several models count it and ``model``
        was not given; the message lists the counters there are.
    """
    return _resolve_cached(field, model)


def _resolve(field: str, model: type[models.Model] | str | None) -> Counter:
    candidates = all_counters()
    if isinstance(model, str):
        model_label = model.lower()
        matches = [c for c in candidates if c.model._meta.label_lower == model_label]
    elif model is not None:
        concrete = model._meta.concrete_model
        matches = [c for c in candidates if c.model is concrete]
    else:
        matches = list(candidates)
    matches = [c for c in matches if field in (c.field.name, c.attname)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sorted(c.label for c in candidates)) or "none"
    if not matches:
        where = ""
        if model is not None:
            where = f" of {model if isinstance(model, str) else model._meta.label}"
        raise NotCounted(f"{field!r}{where} is not a counted field; counted fields: {known}")
    names = ", ".join(sorted(c.model._meta.label for c in matches))
    raise NotCounted(
        f"{field!r} is counted by several models ({names}); pass model=... to choose one"
    )


@functools.lru_cache(maxsize=4096)
def _resolve_cached(field: str, model: type[models.Model] | str | None) -> Counter:
    """:func:`_resolve`, once per argument: every read resolves its counter."""
    return _resolve(field, model)


def counters_named(names: Iterable[str]) -> list[Counter]:
    """Counters selected by ``app_label``, ``app_label.Model`` or ``app_label.Model.field``,
    or by a field's name alone (as ``DistinctCount`` takes it: the counters of that field in
    every model); every counter when ``names`` is empty.

    :raises ValueError: a name matches no counter.
    """
    counters = all_counters()
    selected: list[Counter] = []
    for name in names:
        parts = name.lower().split(".")
        matches = [c for c in counters if c.label.split(".")[: len(parts)] == parts]
        if not matches and len(parts) == 1:
            matches = [c for c in counters if name in (c.field.name, c.attname)]
        if not matches or len(parts) > 3:
            known = ", ".join(c.label for c in counters) or "none"
            raise ValueError(f"{name!r} names no counted model or field; counters: {known}")
        selected += [c for c in matches if c not in selected]
    return selected or list(counters)


def clear_cache() -> None:
    """Forget the counters found so far, and the databases they follow (on
    ``setting_changed``, and when apps change)."""
    text_as_is.cache_clear()
    database_of.cache_clear()
    stored_value.cache_clear()
    counters_of.cache_clear()
    lineage.cache_clear()
    written_counters.cache_clear()
    rewritten_by.cache_clear()
    all_counters.cache_clear()
    _resolve_cached.cache_clear()
