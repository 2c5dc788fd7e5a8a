"""Signal handlers that turn saves and deletes of counted models into counter deltas.

Old values are read from the database, locked, inside the writing transaction
(:mod:`~distinct_counter.counting.rows`); deltas are sent after the transaction commits
(:mod:`~distinct_counter.counting.commit`).
"""

from __future__ import annotations

import contextvars
from typing import Any

from django.db import models
from django.db.models.signals import post_delete, post_save, pre_delete, pre_save

from distinct_counter.counting import deltas
from distinct_counter.counting.commit import record
from distinct_counter.counting.registry import counters_of, touched
from distinct_counter.counting.rows import locked_row

_OLD = "_distinct_counter_old"

#: Old values of rows that ``CountedQuerySet.delete()`` already read, locked, in one query:
#: (model, pk) -> values, so the per-instance handler does not read them again. None (not
#: a shared dict) by default: a mutable default would be shared by every context.
prefetched_deletes: contextvars.ContextVar[
    dict[tuple[type[models.Model], Any], tuple[Any, ...]] | None
] = contextvars.ContextVar("distinct_counter_prefetched_deletes", default=None)


def handle_pre_save(
    sender: type[models.Model],
    instance: models.Model,
    using: str,
    update_fields: Any = None,
    **kwargs: Any,
) -> None:
    counters = touched(sender, update_fields)
    if not counters:
        return
    deltas.ensure_available(sender)
    old = None
    fresh = instance._state.adding and sender._meta.pk.has_default()
    if instance.pk is not None and not fresh:
        old = locked_row(sender, using, instance.pk, counters)
    instance.__dict__[_OLD] = (counters, old)


def handle_post_save(
    sender: type[models.Model], instance: models.Model, using: str, created: bool, **kwargs: Any
) -> None:
    stash = instance.__dict__.pop(_OLD, None)
    if stash is None:
        return
    counters, old = stash
    new = tuple(getattr(instance, c.attname) for c in counters)
    record(using, deltas.between(counters, None if created else old, new))


def handle_pre_delete(
    sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any
) -> None:
    counters = counters_of(sender)
    if not counters or instance.pk is None:
        return
    deltas.ensure_available(sender)
    prefetched = prefetched_deletes.get() or {}
    key = (sender, instance.pk)
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
    record(using, deltas.between(counters, old, None))


def connect(model: type[models.Model]) -> None:
    """Connect the handlers for one counted model (``sender=``, so other models pay nothing)."""
    uid = f"distinct_counter:{model._meta.label}"
    pre_save.connect(handle_pre_save, sender=model, dispatch_uid=uid)
    post_save.connect(handle_post_save, sender=model, dispatch_uid=uid)
    pre_delete.connect(handle_pre_delete, sender=model, dispatch_uid=uid)
    post_delete.connect(handle_post_delete, sender=model, dispatch_uid=uid)
