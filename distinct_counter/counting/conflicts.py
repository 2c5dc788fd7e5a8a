"""``bulk_create(ignore_conflicts=True)`` and ``bulk_create(update_conflicts=True)``: which
rows the database inserted, updated or left alone, as PostgreSQL tells it.

Before the insert, the rows that the new ones could conflict with (same value of a unique
field or constraint, or of ``unique_fields``) are read and locked; after it, the same rows
and the new ones are read again, each with whether this transaction wrote it (its ``xmin``
is still in progress: a row is visible to us only once its writer committed, or if we
wrote it) and whether it was an update (``xmax`` set by ``ON CONFLICT DO UPDATE``'s lock).
Rows read before give their old values; rows this transaction inserted count as new; rows
it did not write (a conflict skipped) change nothing. A row this transaction updated that
was not there before (another transaction inserted it in between, a matter of
milliseconds) has old values no one read: its counters are marked stale, never guessed.
Other databases do not tell: the counters are marked stale there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from typing import Any

from django.db import connections, models
from django.db.models import Q
from django.db.models.expressions import RawSQL

from distinct_counter.counting.commit import record, stale_on_commit
from distinct_counter.counting.deltas import Deltas, between, merge
from distinct_counter.counting.handlers import computed
from distinct_counter.counting.registry import Counter

#: Whether the row's ``xmin`` is a transaction still in progress, i.e. this one or one of its
#: savepoints. ``xmin`` is 32 bits; ``txid_status`` wants the epoch too, taken from the
#: current transaction's id (the epoch before it for an id above the current one's).
_OURS = (
    "COALESCE(txid_status((CASE WHEN {t}.xmin::text::bigint <= (txid_current() & 4294967295)"
    " THEN ((txid_current() >> 32) << 32) ELSE (((txid_current() >> 32) - 1) << 32) END)"
    " | {t}.xmin::text::bigint) = 'in progress', false)"
)
_UPDATED = "{t}.xmax::text <> '0'"


@functools.cache
def unique_sets(model: type[models.Model]) -> tuple[tuple[str, ...], ...]:
    """The attnames of each unique field, ``unique_together`` and unconditional
    ``UniqueConstraint`` of ``model``: what an insert can conflict on."""
    meta = model._meta
    sets: list[tuple[str, ...]] = [(f.attname,) for f in meta.concrete_fields if f.unique]
    sets += [_attnames(model, names) for names in meta.unique_together]
    sets += [_attnames(model, c.fields) for c in meta.total_unique_constraints]
    return tuple(dict.fromkeys(sets))


def _attnames(model: type[models.Model], names: Collection[str]) -> tuple[str, ...]:
    """The columns' attnames of fields named ``names`` (``"pk"`` included)."""
    meta = model._meta
    return tuple(
        str(meta.pk.attname if n == "pk" else meta.get_field(n).attname)  # type: ignore[union-attr]
        for n in names
    )


def _keys(obj: models.Model, sets: Sequence[tuple[str, ...]]) -> list[dict[str, Any]]:
    """``obj``'s values in each of ``sets`` that can conflict (NULLs conflict with nothing)."""
    keys = [{name: getattr(obj, name) for name in names} for names in sets]
    return [key for key in keys if None not in key.values()]


def create(
    queryset: models.QuerySet[Any],
    objs: list[models.Model],
    counters: Sequence[Counter],
    unique_fields: Collection[str] | None,
    insert: Callable[[], list[models.Model]],
) -> list[models.Model]:
    """Run ``insert`` (the conflict-handling ``bulk_create``) and record what it did to
    ``counters``. ``unique_fields`` is the conflict target of ``update_conflicts``."""
    model: type[models.Model] = queryset.model
    db = queryset.db
    if connections[db].vendor != "postgresql":
        created = insert()
        stale_on_commit(db, counters, "bulk_create() with conflicts handled, not on PostgreSQL")
        return created
    meta = model._meta
    sets = [_attnames(model, unique_fields)] if unique_fields else unique_sets(meta.concrete_model)
    sets = [*sets, (str(meta.pk.attname),)]
    columns = list(dict.fromkeys(c.column for c in counters))
    picks = [columns.index(c.column) for c in counters]
    base = model._base_manager.using(db)
    # Rows holding a key of the new ones: the rows they may conflict with, and after the
    # insert the rows that hold those keys. New rows with no key conflict with nothing.
    free = [obj for obj in objs if not _keys(obj, sets)]
    match = Q(pk__in=[])
    for names in sets:
        keys = [key for obj in objs for key in _keys(obj, [names])]
        if len(names) == 1 and keys:  # one IN list, not an OR of thousands of terms
            match |= Q(**{f"{names[0]}__in": [key[names[0]] for key in keys]})
        for key in keys if len(names) > 1 else []:
            match |= Q(**key)
    before = {
        row[0]: tuple(row[1:][i] for i in picks)
        for row in base.filter(match).select_for_update().order_by("pk").values_list("pk", *columns)
    }
    created = insert()
    table = connections[db].ops.quote_name(meta.db_table)
    after = (
        base.filter(match | Q(pk__in=[*before, *(o.pk for o in free if o.pk is not None)]))
        .annotate(
            _dc_ours=RawSQL(_OURS.format(t=table), [], output_field=models.BooleanField()),
            _dc_updated=RawSQL(_UPDATED.format(t=table), [], output_field=models.BooleanField()),
        )
        .order_by("pk")
        .values_list("pk", "_dc_ours", "_dc_updated", *columns)
    )
    deltas: Deltas = {}
    for pk, ours, updated, *row in after:
        values = tuple(row[i] for i in picks)
        if pk in before:
            merge(deltas, between(counters, before[pk], values))
        elif ours and not updated:
            merge(deltas, between(counters, None, values))
        elif ours:
            stale_on_commit(db, counters, "bulk_create() updated a row inserted meanwhile")
    for obj in free:
        if obj.pk is not None:
            continue
        if any(computed(obj, c) for c in counters):  # computed in a row no one can name
            stale_on_commit(db, counters, "bulk_create() of computed values, no pks")
        else:  # Inserted (it conflicts with nothing) as it was sent.
            merge(deltas, between(counters, None, [getattr(obj, c.attname) for c in counters]))
    record(db, deltas)
    return created
