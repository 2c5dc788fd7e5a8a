"""What turns saves and deletes of counted models into counter deltas: a save's two steps,
:func:`before_save` and :func:`after_save` (a ``CountedModel`` runs them in its own
``save_base`` and ``_save_table``; a multi-table parent that is not one, through
``pre_save``/``post_save`` receivers), and the delete signals' receivers.

Old values are read from the database, locked, inside the writing transaction
(:mod:`~distinct_counter.counting.rows`), or, for a loaded row on PostgreSQL, returned by
the UPDATE itself (:mod:`~distinct_counter.counting.statements`, through
``CountedModel._do_update``); deltas are sent after the transaction commits
(:mod:`~distinct_counter.counting.commit`). Values the database computes (an expression
assigned to a field, a generated column, a database default) are read back from the row.
"""

from __future__ import annotations

import contextvars
import functools
import types
from collections.abc import Sequence
from itertools import repeat
from typing import Any

from django.db import connections, models
from django.db.models.signals import post_delete, post_save, pre_delete, pre_save

from distinct_counter.counting import collector, deltas
from distinct_counter.counting.commit import record, record_rows
from distinct_counter.counting.registry import (
    MARKER,
    Counter,
    counters_of,
    lineage,
    touched,
    written_counters,
)
from distinct_counter.counting.rows import canonical_pk, locked_row

#: The old values of a save, still to be read: by the UPDATE itself (``RETURNING``).
IN_UPDATE = object()

_OLD = "_distinct_counter_old"
#: The id of the transaction that saved the instance, when its INSERT or UPDATE returned it.
_TXID = "_distinct_counter_txid"
#: The connection a save writes on, looked up once for all of its steps (0.9 µs a lookup).
_CONN = "_distinct_counter_conn"
#: The rows a running delete collector has sent ``pre_delete`` for, on the collector.
_SEEN = "_distinct_counter_seen"

#: Old values of rows that ``CountedQuerySet.delete()`` already read, locked, in one query:
#: (concrete model, pk) -> values, so the per-instance handler does not read them again. None
#: (not a shared dict) by default: a mutable default would be shared by every context.
prefetched_deletes: contextvars.ContextVar[
    dict[tuple[type[models.Model], Any], tuple[Any, ...]] | None
] = contextvars.ContextVar("distinct_counter_prefetched_deletes", default=None)


def inserts_fresh(instance: models.Model, raw: bool = False) -> bool:
    """Whether saving ``instance`` inserts without trying an UPDATE first: Django's own rule
    for an instance being added whose primary key has a default (not for fixtures, ``raw``,
    which update an existing row of that pk)."""
    pk = instance._meta.pk
    has_db_default = getattr(pk, "has_db_default", lambda: False)
    return instance._state.adding and not raw and bool(pk.has_default() or has_db_default())


def computed(instance: models.Model, counter: Counter) -> bool:
    """Whether the database computes ``counter``'s value at save: a generated column, an
    expression (``F("n") + 1``, ``Lower(...)``, a database default) or a deferred field."""
    value = instance.__dict__.get(counter.attname, computed)  # deferred: not there
    return counter.generated or _is_computed(value)


def _is_computed(value: Any) -> bool:
    """Whether a value an instance holds is one the database computes: the :func:`computed`
    marker of a deferred field, or an expression."""
    return value is computed or hasattr(value, "resolve_expression")


def _any_computed(values: list[Any]) -> bool:
    """Whether any of ``values`` is :func:`_is_computed`: judged by their types, one check
    per value only when a type says it may."""
    kinds = set(map(type, values))
    if kinds <= _PLAIN:
        return False
    if types.FunctionType in kinds or any(hasattr(k, "resolve_expression") for k in kinds):
        return any(map(_is_computed, values))
    return False


def held(objs: Sequence[models.Model], counter: Counter) -> list[Any]:
    """The values of ``counter``'s field as ``objs`` hold them, in one C-speed pass (the
    :func:`computed` marker for a deferred one)."""
    return list(map(dict.get, map(vars, objs), repeat(counter.attname), repeat(computed)))


def held_values(instance: models.Model, counters: Sequence[Counter]) -> list[Any] | None:
    """The values of ``counters`` that ``instance`` holds, None when the database computes
    one of them (:func:`computed`), in one pass."""
    values = [
        computed if c.generated else instance.__dict__.get(c.attname, computed) for c in counters
    ]
    return None if _any_computed(values) else values


#: Immutable types that may be the database's computed value only as an expression (not
#: these): a value of one of them is taken as is, and tallied later as it is.
_PLAIN = frozenset({str, int, float, bool, type(None)})


def pks_of(objs: Sequence[models.Model]) -> list[Any]:
    """The pks of ``objs`` (instances of one model), in one C-speed pass where the pk is one
    column (``obj.pk`` is a Python property: 0.4 µs a row)."""
    if not objs:
        return []
    meta = objs[0]._meta
    if getattr(meta, "is_composite_pk", False):
        return [o.pk for o in objs]
    return list(map(dict.get, map(vars, objs), repeat(meta.pk.attname)))


def computed_in(
    objs: Sequence[models.Model], counter: Counter, values: list[Any] | None = None
) -> bool:
    """Whether :func:`computed` holds for any of ``objs`` (a bulk write's), whose
    :func:`held` values may be given: judged by the types of the values, one check per
    value only when a type says it may."""
    if counter.generated:
        return True
    return _any_computed(held(objs, counter) if values is None else values)


@functools.cache
def _one_table(model: type[models.Model]) -> bool:
    """Whether every counter a save of ``model`` writes is a plain column of the one table
    a save of it updates: a counted model with no multi-table parent or counted descendant,
    no ``select_on_save``, a single-column pk."""
    concrete = model._meta.concrete_model or model
    counters = counters_of(concrete)
    meta = concrete._meta
    return (
        getattr(model, MARKER, False)
        and not meta.parents
        and not meta.select_on_save
        and bool(getattr(meta.pk, "column", None))
        and written_counters(model) == counters
        and all(c.column == c.attname for c in counters)
    )


#: A save's old values read, locked, before its statement (:func:`old_source`).
LOCKED = object()


def old_source(
    model: type[models.Model],
    instance: models.Model,
    conn: Any,
    counters: tuple[Counter, ...],
    raw: bool = False,
) -> Any:
    """Where the old values of ``counters`` of the save of ``instance`` on ``conn`` come
    from: None, it inserts; :data:`IN_UPDATE`, a loaded row's UPDATE returns them
    (``statements.update_returning_old``: PostgreSQL, one table, and no value the database
    computes, read back after the save); else :data:`LOCKED`, read before it."""
    if instance.pk is None or inserts_fresh(instance, raw):
        return None
    if (
        not instance._state.adding
        and _one_table(model)
        and conn.vendor == "postgresql"
        and held_values(instance, counters) is not None
    ):
        return IN_UPDATE
    return LOCKED


def in_transaction(instance: models.Model, counters: tuple[Counter, ...], source: Any) -> bool:
    """Whether a save whose old values come from ``source`` (:func:`old_source`) must run
    in a transaction: they are read, locked, before its UPDATE (the lock must last until
    it), or the database computes a new value (read back after the INSERT)."""
    return source is LOCKED or (source is None and held_values(instance, counters) is None)


def before_save(
    model: type[models.Model],
    instance: models.Model,
    conn: Any,
    counters: tuple[Counter, ...],
    source: Any,
) -> None:
    """The counters' part of a save before its statement: the old values of ``counters``
    read, locked, when ``source`` is :data:`LOCKED` (else None, or left to the UPDATE:
    :data:`IN_UPDATE`), kept on the instance for :func:`after_save` with ``conn``."""
    deltas.ensure_available(model)
    old = locked_row(model, conn.alias, instance.pk, counters) if source is LOCKED else source
    instance.__dict__[_OLD] = (counters, old)
    instance.__dict__[_CONN] = conn


def forget_save(instance: models.Model) -> None:
    """Drop what an earlier save of ``instance`` that failed left on it: a save that writes
    no counter must not count it."""
    instance.__dict__.pop(_OLD, None)
    instance.__dict__.pop(_TXID, None)
    instance.__dict__.pop(_CONN, None)


def handle_pre_save(
    sender: type[models.Model],
    instance: models.Model,
    using: str,
    update_fields: Any = None,
    raw: bool = False,
    **kwargs: Any,
) -> None:
    """:func:`before_save` for a model that is not a ``CountedModel`` (whose ``save_base``
    does it): a multi-table parent whose table holds a descendant's counted column."""
    counters = touched(sender, update_fields)
    if counters:
        conn = connections[using]
        source = old_source(sender, instance, conn, counters, raw)
        before_save(sender, instance, conn, counters, source)
    else:
        forget_save(instance)


def old_values(instance: models.Model) -> Any:
    """What :func:`before_save` left of ``instance``'s save: (counters, old values), with
    :data:`IN_UPDATE` for old values still to be read; None when no counter is written."""
    return instance.__dict__.get(_OLD)


def set_old_values(instance: models.Model, counters: tuple[Counter, ...], old: Any) -> None:
    instance.__dict__[_OLD] = (counters, old)


def connection_of(instance: models.Model) -> Any:
    """The connection a save of ``instance`` under way writes on (:func:`before_save`)."""
    return instance.__dict__.get(_CONN)


def set_txid(instance: models.Model, txid: str) -> None:
    """Keep the id of the transaction saving ``instance``, as its statement returned it,
    for :func:`after_save`."""
    instance.__dict__[_TXID] = txid


def handle_post_save(
    sender: type[models.Model], instance: models.Model, using: str, created: bool, **kwargs: Any
) -> None:
    """:func:`after_save` for a model that is not a ``CountedModel`` (see
    :func:`handle_pre_save`)."""
    after_save(sender, instance, using, created)


def after_save(
    model: type[models.Model], instance: models.Model, using: str, created: bool
) -> None:
    """The counters' part of a save after its statement: the row's new values recorded
    against the old ones :func:`before_save` left, for when the transaction commits."""
    stash = instance.__dict__.pop(_OLD, None)
    txid = instance.__dict__.pop(_TXID, None)
    conn = instance.__dict__.pop(_CONN, None)
    if stash is None:
        return
    counters, old = stash
    new = held_values(instance, counters)
    if new is None or _below(model):
        new = _stored(model, instance, using, counters, created)
    if created:
        if not _PLAIN.issuperset(map(type, new)):
            # Tallied later, at commit at the latest: a value the application may still
            # change in place (a bytearray, a FieldFile) is written down now.
            new = [c.normalize(v) for c, v in zip(counters, new, strict=True)]
        record_rows(conn or connections[using], counters, [new], 1, txid)
    else:
        record(using, deltas.between(counters, old, new), txid)


@functools.cache
def _below(model: type[models.Model]) -> tuple[Counter, ...]:
    """The :func:`~distinct_counter.counting.registry.written_counters` of ``model`` that
    count a descendant's rows: a row saved as ``model`` may be one of them."""
    tables = lineage(model)
    return tuple(c for c in written_counters(model) if c.model not in tables)


def _stored(
    model: type[models.Model],
    instance: models.Model,
    using: str,
    counters: tuple[Counter, ...],
    created: bool,
) -> list[Any]:
    """The new values of ``counters`` of a saved row, those it does not hold read back."""
    # A descendant's counter (the row may be one of the descendant's rows) is read back too;
    # a row just inserted has no descendant row yet.
    below = _below(model)
    unknown = [c for c in counters if computed(instance, c) or (c in below and not created)]
    stored: dict[Counter, Any] = {}
    if unknown:
        found = locked_row(model, using, instance.pk, unknown) or ()
        stored = dict(zip(unknown, found, strict=False))
    return [
        stored.get(c) if c in unknown or c in below else getattr(instance, c.attname)
        for c in counters
    ]


def handle_pre_delete(
    sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any
) -> None:
    counters = counters_of(sender)
    if not counters or instance.pk is None:
        return
    deltas.ensure_available(sender)
    key = (counters[0].model, canonical_pk(sender, instance.pk))
    running = collector.running_collector()
    seen: set[Any] = running.__dict__.setdefault(_SEEN, set()) if running else set()
    if key in seen:
        # The same row collected twice, as two classes of one concrete model (deleting a
        # proxy instance of a row that has a multi-table child collects it as the proxy, and
        # as the child's parent): Django sends both instances' signals, one row goes.
        return
    seen.add(key)
    prefetched = prefetched_deletes.get() or {}
    old: tuple[Any, ...] | None = prefetched.get(key)
    if key not in prefetched:
        old = locked_row(sender, using, instance.pk, counters)
    instance.__dict__[_OLD] = (counters, old)


def handle_post_delete(
    sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any
) -> None:
    stash = instance.__dict__.pop(_OLD, None)
    if stash is None:
        return
    counters, old = stash
    if old is not None:
        record_rows(connections[using], counters, [old], -1)


def connect(model: type[models.Model]) -> None:
    """Connect the handlers ``model`` needs (``sender=``, so other models pay nothing): its
    saves write :func:`written_counters` (a proxy's and a multi-table child's too), its
    deletes change :func:`counters_of`, and deleting it may rewrite counted foreign keys
    (:mod:`~distinct_counter.counting.collector`)."""
    uid = f"distinct_counter:{model._meta.label}"
    if written_counters(model) and not getattr(model, MARKER, False):
        # A CountedModel's own save_base and _save_table do it, with no signal: faster, and
        # before any other receiver of post_save, which may save the row again.
        pre_save.connect(handle_pre_save, sender=model, dispatch_uid=uid)
        post_save.connect(handle_post_save, sender=model, dispatch_uid=uid)
    if counters_of(model):
        pre_delete.connect(handle_pre_delete, sender=model, dispatch_uid=uid)
        post_delete.connect(handle_post_delete, sender=model, dispatch_uid=uid)
    collector.connect(model)
