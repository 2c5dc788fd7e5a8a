"""Counted foreign keys that Django's delete collector rewrites without a signal.

Deleting a row that counted foreign keys point at with ``on_delete=SET_NULL``,
``SET_DEFAULT`` or ``SET(...)`` makes the collector update the pointing rows with a plain
``UPDATE`` (no ``pre_save``/``post_save``). The collector already knows which rows: the
querysets and instances it will update (``Collector.field_updates``), collected before the
deletion's transaction began. So at the deletion's first ``pre_delete`` of a row such keys
point at, the rows about to be deleted are locked (no new row can point at them any more),
then the rows to be rewritten are read and locked; at its first ``post_delete`` (the
collector has run its updates by then) they are read again: their values as the database
now holds them give the deltas. Rows the same deletion also deletes are left to their own
delete signals, which saw them before any update.

Signals do not pass the collector: it is the ``self`` of a caller's frame (the
``Collector.delete()`` that sends them). Without one there is no collector update either.
"""

from __future__ import annotations

import sys
from typing import Any

from django.db import connections, models
from django.db.models.deletion import Collector
from django.db.models.signals import post_delete, pre_delete

from distinct_counter.counting import deltas
from distinct_counter.counting.commit import record
from distinct_counter.counting.registry import Counter, all_counters, rewritten_by
from distinct_counter.counting.rows import locked_rows

#: The rows a running collector rewrites: [(counter, {pk: old value})], on the collector.
_REWRITES = "_distinct_counter_rewrites"


def running_collector() -> Collector | None:
    """The ``Collector`` whose ``delete()`` is sending the current signal, if any."""
    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Collector):
            return candidate
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _rows(objs: Any) -> list[Any]:
    """The pks of one entry of ``Collector.field_updates``: a queryset the collector will
    update by its filter (locked now), or instances it will update by pk."""
    if isinstance(objs, models.QuerySet) and objs._result_cache is None:
        return list(objs.select_for_update().order_by("pk").values_list("pk", flat=True))
    return [obj.pk for obj in objs]


def handle_pre_delete(sender: type[models.Model], using: str, **kwargs: Any) -> None:
    collector = running_collector()
    if collector is None or _REWRITES in collector.__dict__:
        return
    collector.__dict__[_REWRITES] = rewrites = []
    rewritten = {field for field, _ in collector.field_updates}
    counters = [c for c in all_counters() if c.field in rewritten]
    if not counters:
        return
    if connections[using].in_atomic_block:
        for model, objs in collector.data.items():
            if rewritten_by(model):
                pks = [obj.pk for obj in objs]
                list(model._base_manager.using(using).filter(pk__in=pks).select_for_update())
    for (field, _), entries in collector.field_updates.items():
        pks = [pk for objs in entries for pk in _rows(objs)]
        for counter in counters:
            if counter.field is field:
                old = locked_rows(counter.model, using, pks, [counter])
                rewrites.append((counter, {pk: values[0] for pk, values in old.items()}))


def handle_post_delete(sender: type[models.Model], using: str, **kwargs: Any) -> None:
    collector = running_collector()
    rewrites: list[tuple[Counter, dict[Any, Any]]] = (
        collector.__dict__.pop(_REWRITES, None) if collector is not None else None
    ) or []
    if collector is None or not rewrites:
        return
    gone = {(m._meta.concrete_model, obj.pk) for m, objs in collector.data.items() for obj in objs}
    changes: deltas.Deltas = {}
    for counter, old in rewrites:
        left = [pk for pk in old if (counter.model, pk) not in gone]
        for pk, new in locked_rows(counter.model, using, left, [counter]).items():
            deltas.merge(changes, deltas.between([counter], [old[pk]], new))
    record(using, changes)


def connect(model: type[models.Model]) -> None:
    """Connect the handlers for deletes of ``model``, if they rewrite counted foreign keys."""
    if rewritten_by(model):
        uid = f"distinct_counter.collector:{model._meta.label}"
        pre_delete.connect(handle_pre_delete, sender=model, dispatch_uid=uid)
        post_delete.connect(handle_post_delete, sender=model, dispatch_uid=uid)
