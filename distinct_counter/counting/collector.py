"""Counted foreign keys that Django's delete collector rewrites without a signal.

Deleting a row that counted foreign keys point at with ``on_delete=SET_NULL``,
``SET_DEFAULT`` or ``SET(...)`` makes the collector update the pointing rows with a plain
``UPDATE`` (no ``pre_save``/``post_save``). So when such a row is about to be deleted
(``pre_delete``) the rows pointing at it are read and locked, and once it is gone
(``post_delete``: the collector has run its updates by then) the same rows are read again:
their values as the database now holds them give the deltas. Rows the same deletion also
deletes are left to their own delete signals, which saw them before any update.
"""

from __future__ import annotations

from typing import Any

from django.db import connections, models
from django.db.models.signals import post_delete, pre_delete

from distinct_counter.counting import deltas
from distinct_counter.counting.commit import record
from distinct_counter.counting.registry import rewritten_by
from distinct_counter.counting.rows import locked_rows

_POINTING = "_distinct_counter_pointing"
_DELETING = "_distinct_counter_deleting"


def deleting(origin: Any) -> set[tuple[type[models.Model], Any]]:
    """The counted rows, as (model, pk), whose delete signals ran ``pre_delete`` but not yet
    ``post_delete`` in the deletion started by ``origin`` (what ``delete()`` was called on)."""
    if origin is None:
        return set()
    pending: set[tuple[type[models.Model], Any]] = origin.__dict__.setdefault(_DELETING, set())
    return pending


def handle_pre_delete(
    sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any
) -> None:
    counters = rewritten_by(sender)
    conn = connections[using]
    if not counters or instance.pk is None:
        return
    if conn.in_atomic_block:
        # Lock the row first: a transaction that would point a new row at it waits (and
        # then fails the foreign key check) instead of slipping past the rows read below.
        list(sender._base_manager.using(using).filter(pk=instance.pk).select_for_update())
    pointing = []
    for counter in counters:
        target = getattr(instance, counter.field.target_field.attname)  # type: ignore[attr-defined]
        rows = counter.model._base_manager.using(using).filter(**{counter.attname: target})
        if conn.in_atomic_block:
            rows = rows.select_for_update()
        old = dict(rows.order_by("pk").values_list("pk", counter.column))
        if old:
            pointing.append((counter, old))
    instance.__dict__[_POINTING] = pointing


def handle_post_delete(
    sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any
) -> None:
    pointing = instance.__dict__.pop(_POINTING, None)
    if not pointing:
        return
    pending = deleting(kwargs.get("origin"))
    changes: deltas.Deltas = {}
    for counter, old in pointing:
        left = [pk for pk in old if (counter.model, pk) not in pending]
        for pk, new in locked_rows(counter.model, using, left, [counter]).items():
            deltas.merge(changes, deltas.between([counter], [old[pk]], new))
    record(using, changes)


def connect(model: type[models.Model]) -> None:
    """Connect the handlers for deletes of ``model``, if they rewrite counted foreign keys."""
    if rewritten_by(model):
        uid = f"distinct_counter.collector:{model._meta.label}"
        pre_delete.connect(handle_pre_delete, sender=model, dispatch_uid=uid)
        post_delete.connect(handle_post_delete, sender=model, dispatch_uid=uid)
