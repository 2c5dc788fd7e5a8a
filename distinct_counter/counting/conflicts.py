"""``bulk_create(ignore_conflicts=True)`` and ``bulk_create(update_conflicts=True)``: which
rows the database inserted, updated or left alone, as PostgreSQL (or SQLite) tells it.

Before the insert, the rows that the new ones could conflict with (same value of a unique
field or constraint, or of ``unique_fields``) are read and locked; after it, the same rows
and the new ones are read again, each with whether this transaction wrote it (its ``xmin``
is still in progress: a row is visible to us only once its writer committed, or if we
wrote it) and whether it was an update (``xmax`` set by ``ON CONFLICT DO UPDATE``'s lock).
Rows read before give their old values; rows this transaction inserted count as new; rows
it did not write (a conflict skipped) change nothing. A row this transaction updated that
was not there before (another transaction inserted it in between, a matter of
milliseconds) has old values no one read: its counters are marked stale, never guessed.
On SQLite no other connection can commit between the read and the insert (the
transaction's snapshot holds, or its write fails), so a row not there before is ours.
Other databases do not tell: the counters are marked stale there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from typing import Any

from django.db import IntegrityError, connections, models, transaction
from django.db.models import Q
from django.db.models.expressions import RawSQL

from distinct_counter.counting.commit import record, stale_on_commit
from distinct_counter.counting.deltas import Deltas, between, merge
from distinct_counter.counting.handlers import computed
from distinct_counter.counting.registry import Counter, lineage
from distinct_counter.counting.rows import locked_rows

#: Whether the row's ``xmin`` is a transaction still in progress, i.e. this one or one of its
#: savepoints (a row is visible to us only once its writer committed, or if we wrote it).
#: ``xmin`` is 32 bits; ``txid_status`` wants the 64-bit id: the one nearest to this
#: transaction's (every live id is within 2**31 of it). Ids below 3 are special (frozen).
_OURS = (
    "CASE WHEN {t}.xmin::text::bigint < 3 THEN false ELSE COALESCE(txid_status("
    "txid_current() + mod(mod({t}.xmin::text::bigint - (txid_current() & 4294967295)"
    " + 2147483648, 4294967296) + 4294967296, 4294967296) - 2147483648"
    ") = 'in progress', false) END"
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
    options: dict[str, Any],
    insert: Callable[[list[models.Model], dict[str, Any]], object],
) -> list[models.Model]:
    """Insert ``objs`` with ``insert(objs, options)`` (the conflict-handling ``bulk_create``)
    and record what it did to ``counters``."""
    model: type[models.Model] = queryset.model
    db = queryset.db
    vendor = connections[db].vendor
    if vendor not in ("postgresql", "sqlite"):
        insert(objs, options)
        stale_on_commit(db, counters, f"bulk_create() with conflicts handled, on {vendor}")
        return objs
    meta = model._meta
    unique_fields = options["unique_fields"] if options["update_conflicts"] else None
    sets = [_attnames(model, unique_fields)] if unique_fields else unique_sets(meta.concrete_model)
    sets = [*sets, (str(meta.pk.attname),)]
    # New rows with no key conflict with nothing. ignore_conflicts does not name the rows it
    # inserts: those whose values the database computes are inserted apart, plainly, so
    # that it names them (unless an automatic pk collides: then with the others, unnamed).
    keyed = objs
    free = [obj for obj in objs if not _keys(obj, sets)]
    if options["ignore_conflicts"] and any(computed(o, c) for o in free for c in counters):
        try:
            with transaction.atomic(using=db):
                insert(free, {**options, "ignore_conflicts": False})
            apart = {id(obj) for obj in free}
            keyed = [obj for obj in objs if id(obj) not in apart]
        except IntegrityError:
            pass
    match = Q(pk__in=[])
    for names in sets:
        keys = [key for obj in keyed for key in _keys(obj, [names])]
        if len(names) == 1 and keys:  # one IN list, not an OR of thousands of terms
            match |= Q(**{f"{names[0]}__in": [key[names[0]] for key in keys]})
        for key in keys if len(names) > 1 else []:
            match |= Q(**key)
    base = model._base_manager.using(db)
    locked = base.filter(match).select_for_update().order_by("pk").values_list("pk", flat=True)
    before = locked_rows(model, db, list(locked), counters)
    insert(keyed, options)
    table = connections[db].ops.quote_name(meta.db_table)
    named = [o.pk for o in objs if o.pk is not None]
    rows = base.filter(match | Q(pk__in=[*before, *named]))
    if vendor == "postgresql":
        flags: Any = rows.annotate(
            _dc_ours=RawSQL(_OURS.format(t=table), [], models.BooleanField()),
            _dc_updated=RawSQL(_UPDATED.format(t=table), [], models.BooleanField()),
        ).values_list("pk", "_dc_ours", "_dc_updated")
    else:
        # SQLite lets no other connection commit while this transaction holds what it read
        # (or fails this one's write if one did): a row that was not there before is ours.
        flags = [(pk, pk not in before, False) for pk in rows.values_list("pk", flat=True)]
    inserted, mine = [], []
    for pk, ours, updated in flags:
        if pk in before or ours:
            mine.append(pk)
        if ours and updated and pk not in before:  # its old values were never read
            stale_on_commit(db, counters, "bulk_create() updated a row inserted meanwhile")
        elif ours and pk not in before:
            inserted.append(pk)
    after = locked_rows(model, db, mine, counters)
    deltas: Deltas = {}
    for pk in [*before, *inserted]:
        merge(deltas, between(counters, before.get(pk), after.get(pk)))
    tables = lineage(model)
    for obj in objs:
        if obj.pk is not None or _keys(obj, sets):
            continue  # read back above
        if any(computed(obj, c) for c in counters):  # computed in a row no one can name
            stale_on_commit(db, counters, "bulk_create() of computed values, no pks")
        else:  # Inserted (it conflicts with nothing) as it was sent.
            sent = [getattr(obj, c.attname) if c.model in tables else None for c in counters]
            merge(deltas, between(counters, None, sent))
    record(db, deltas)
    return objs
