"""``CountedQuerySet``: bulk operations that keep the counters exact."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

from django.db import connections, models, transaction
from django.db.models.deletion import Collector
from django.db.models.signals import post_delete, pre_delete

from distinct_counter.counting import collector, conflicts, handlers
from distinct_counter.counting.commit import record, stale_on_commit
from distinct_counter.counting.deltas import (
    Deltas,
    between,
    ensure_available,
    merge,
    tally,
    tally_counts,
)
from distinct_counter.counting.handlers import computed_in, held, pks_of, prefetched_deletes
from distinct_counter.counting.registry import (
    Counter,
    counters_of,
    lineage,
    touched,
    written_counters,
)
from distinct_counter.counting.rows import canonical_pk, lock_absent, locked_rows, selected
from distinct_counter.counting.statements import (
    delete_returning,
    update_pks,
    update_returning,
)

#: Rows read, locked and updated per query by ``update()``: memory stays flat on huge updates.
CHUNK = 10000


class CountedQuerySet(models.QuerySet[Any]):
    """A queryset whose bulk operations keep the counters exact.

    ``bulk_create``, ``bulk_update``, ``update`` and ``delete`` send the same deltas as the
    equivalent row-by-row saves would, with a constant number of extra queries per call (per
    chunk of rows, for ``update`` and ``bulk_update``). Values the database computes
    (expressions, generated columns) are read back from the rows, locked, in the same
    transaction. ``update()`` of fields that are not counted costs nothing extra.
    """

    _bypass = False

    @property
    def _model(self) -> type[models.Model]:
        model: type[models.Model] = self.model
        return model

    def _clone(self) -> CountedQuerySet:
        clone = super()._clone()  # type: ignore[misc]
        clone._bypass = self._bypass
        return clone  # type: ignore[no-any-return]

    def _locked(self, counters: Sequence[Counter]) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of this queryset as chunks of ``(pk, *values of counters)``, locked.

        Locked through ``pk IN (this queryset)``: ``FOR UPDATE`` itself is refused on a
        ``DISTINCT`` query or the nullable side of an outer join, which ``update()`` and
        ``delete()`` accept.
        """
        columns, picks = selected(counters)
        rows = (
            self.model._base_manager.using(self.db)
            .filter(pk__in=self.order_by().values("pk"))
            .select_for_update()
            .order_by("pk")
            .values_list("pk", *columns)
        )
        # Pages by pk rather than a server-side cursor: one query for the usual small write
        # (a cursor costs three), and memory stays flat on a huge one.
        page = list(rows[:CHUNK])
        while page:
            yield [(r[0], *(r[i] for i in picks)) for r in page]
            page = list(rows.filter(pk__gt=page[-1][0])[:CHUNK]) if len(page) == CHUNK else []

    def bulk_create(
        self,
        objs: Iterable[models.Model],
        batch_size: int | None = None,
        ignore_conflicts: bool = False,
        update_conflicts: bool = False,
        update_fields: Collection[str] | None = None,
        unique_fields: Collection[str] | None = None,
    ) -> list[models.Model]:
        options: dict[str, Any] = {
            "batch_size": batch_size,
            "ignore_conflicts": ignore_conflicts,
            "update_conflicts": update_conflicts,
            "update_fields": update_fields,
            "unique_fields": unique_fields,
        }
        counters = counters_of(self._model)
        if not counters:
            return super().bulk_create(objs, **options)
        ensure_available(self.model)
        objs = list(objs)
        if ignore_conflicts or update_conflicts:
            with transaction.atomic(using=self.db, savepoint=False):
                return conflicts.create(
                    self,
                    objs,
                    # An updated row may be a child's; an insert has no child row yet.
                    written_counters(self._model) if update_conflicts else counters,
                    options,
                    lambda some, how: super(CountedQuerySet, self).bulk_create(some, **how),
                )
        # Explicit pks take the locks that deletes and updates of missing rows wait on. Not
        # pks of a default (fresh: nobody else can be writing them).
        pk_field: Any = self.model._meta.pk
        explicit = [] if pk_field.has_default() else [pk for pk in pks_of(objs) if pk is not None]
        with transaction.atomic(using=self.db, savepoint=False):
            lock_absent(self.model, self.db, explicit)
            created = super().bulk_create(objs, **options)
            values = {c: held(created, c) for c in counters}
            unknown = [c for c in counters if computed_in(created, c, values[c])]
            if unknown and any(o.pk is None for o in created):
                # The database computed values of rows it did not name: nothing to read back.
                stale_on_commit(self.db, counters, "bulk_create() of computed values, no pks")
                return created
            stored = locked_rows(self.model, self.db, pks_of(created), unknown) if unknown else {}
            deltas: Deltas = {}
            for c in counters:
                if c in unknown:
                    pks = (canonical_pk(self.model, o.pk) for o in created)
                    tally(deltas, c, (stored[pk][unknown.index(c)] for pk in pks), 1)
                else:
                    tally(deltas, c, values[c], 1)
            record(self.db, deltas)
        return created

    def bulk_update(
        self, objs: Iterable[models.Model], fields: Iterable[str], batch_size: int | None = None
    ) -> int:
        fields = list(fields)  # read twice below: a generator would be empty the second time
        counters = touched(self.model, fields)
        if not counters:
            return int(super().bulk_update(objs, fields, batch_size=batch_size))
        ensure_available(self.model)
        objs = list(objs)
        pks = [canonical_pk(self.model, obj.pk) for obj in objs]
        with transaction.atomic(using=self.db, savepoint=False):
            old = locked_rows(self.model, self.db, pks, counters)
            bypass = self._clone()
            bypass._bypass = True  # its internal update() must not count a second time
            updated = int(models.QuerySet.bulk_update(bypass, objs, fields, batch_size=batch_size))
            # An expression, or a pk given twice (the first in a batch wins, the last batch
            # wins), leaves the rows' new values to the database: read them back.
            # So does a descendant's counter: whether the row is the descendant's is not known.
            tables = lineage(self._model)
            unknown = [c for c in counters if c.model not in tables or computed_in(objs, c)]
            if len(set(pks)) < len(pks):
                unknown = list(counters)
            stored = locked_rows(self.model, self.db, old, unknown)
            latest = {pk: obj for pk, obj in zip(pks, objs, strict=True) if pk in old}
            deltas: Deltas = {}
            for pk, obj in latest.items():
                merge(deltas, between(counters, old[pk], _values(obj, counters, unknown, stored)))
            record(self.db, deltas)
        return updated

    def update(self, **kwargs: Any) -> int:
        counters = touched(self.model, kwargs)
        if not counters or self._bypass or self.query.is_sliced:
            return int(super().update(**kwargs))  # Django refuses a sliced one itself
        ensure_available(self.model)
        given = {c: kwargs.get(c.field.name, kwargs.get(c.attname)) for c in counters}
        # Values read back after the update: expressions, generated columns, and the counters
        # of multi-table descendants (whether a row is a descendant's is not known here).
        tables = lineage(self._model)
        direct = [c for c in counters if c.model in tables]
        below = [c for c in counters if c.model not in tables]
        unknown = below + [
            c
            for c in direct
            if getattr(c.field, "generated", False) or hasattr(given[c], "resolve_expression")
        ]
        base = self.model._base_manager.using(self.db)
        deltas: Deltas = {}
        rows = 0
        txid = None
        with transaction.atomic(using=self.db, savepoint=False):
            rest: CountedQuerySet | None = self
            if not unknown and self._one_table():
                rows, deltas, skipped, txid = update_returning(self, kwargs, direct)
                for c in direct:
                    tally_counts(deltas, c, [(given[c], rows)], 1)
                # Rows changed by another writer meanwhile: again, locked.
                rest = self.filter(pk__in=skipped) if skipped else None
            # Update exactly the rows locked: a row inserted meanwhile that matches the
            # filter is left out, as if this UPDATE had run first.
            for chunk in rest._locked(direct) if rest is not None else ():
                pks = [r[0] for r in chunk]
                if not below and not unknown:  # every new value is the one given
                    rows += self._update_rows(pks, kwargs)
                    for i, c in enumerate(direct):
                        tally(deltas, c, (r[i + 1] for r in chunk), -1)
                        tally(deltas, c, [given[c]] * len(chunk), 1)
                    continue
                before = locked_rows(self.model, self.db, pks, below)
                rows += int(models.QuerySet.update(base.filter(pk__in=pks), **kwargs))
                stored = locked_rows(self.model, self.db, pks, unknown)
                for pk, *values in chunk:
                    old = [*values, *before.get(pk, [None] * len(below))]
                    new = [
                        stored[pk][unknown.index(c)] if c in unknown else given[c]
                        for c in [*direct, *below]
                    ]
                    merge(deltas, between([*direct, *below], old, new))
            record(self.db, deltas, txid)
        return rows

    def _one_table(self) -> bool:
        """Whether an UPDATE of these rows is one statement on one table that can return
        what it changed: PostgreSQL, and a model with no multi-table parent."""
        return connections[self.db].vendor == "postgresql" and not self._model._meta.parents

    def _update_rows(self, pks: list[Any], kwargs: dict[str, Any]) -> int:
        """``UPDATE ... WHERE pk IN pks``, with the pks as one array where it can."""
        base = self.model._base_manager.using(self.db)
        if self._one_table():
            return update_pks(base, kwargs, pks)
        return int(models.QuerySet.update(base.filter(pk__in=pks), **kwargs))

    def delete(self) -> tuple[int, dict[str, int]]:
        # The collector deletes the rows of this model and of each multi-table parent, each
        # with its own signal: read all their old values here, locked, in one query.
        owners = [m for m in lineage(self._model) if counters_of(m)]
        counters = [c for m in owners for c in counters_of(m)]
        if not counters or self.query.is_sliced or getattr(self, "_fields", None) is not None:
            return super().delete()  # Django refuses these itself
        ensure_available(self.model)
        if self._deletes_in_one_statement(owners):
            # What Django's own delete() hands its collector.
            query: Any = self._chain()  # type: ignore[attr-defined]
            query.query.select_for_update = False
            query.query.select_related = False
            query.query.clear_ordering(force=True)
            deleted, deltas, txid = delete_returning(query, counters)
            record(self.db, deltas, txid)
            self._result_cache = None
            return deleted, ({self.model._meta.label: deleted} if deleted else {})
        with transaction.atomic(using=self.db, savepoint=False):
            prefetched = dict(prefetched_deletes.get() or {})
            for chunk in self._locked(counters):
                for pk, *values in chunk:
                    at = 0
                    for owner in owners:
                        size = len(counters_of(owner))
                        prefetched[(owner, pk)] = tuple(values[at : at + size])
                        at += size
            token = prefetched_deletes.set(prefetched)
            try:
                return super().delete()
            finally:
                prefetched_deletes.reset(token)

    def _deletes_in_one_statement(self, owners: list[type[models.Model]]) -> bool:
        """Whether Django's collector would delete these rows in one DELETE, sending no
        signal, were it not for this app's own handlers (``Collector.can_fast_delete``: no
        other receiver, nothing to cascade or rewrite, one table), on PostgreSQL, where
        the DELETE can return what it deleted."""
        if connections[self.db].vendor != "postgresql" or owners != [self.model]:
            return False
        if self.query.distinct_fields or self.query.combinator:
            return False  # Django refuses these: let it say so
        return _Unheard(using=self.db).can_fast_delete(self)


#: This app's delete receivers, which a one-statement delete replaces.
_OURS = {
    handlers.handle_pre_delete,
    handlers.handle_post_delete,
    collector.handle_pre_delete,
    collector.handle_post_delete,
}


class _Unheard(Collector):
    """A collector that hears only other apps' delete receivers."""

    def _has_signal_listeners(self, model: type[models.Model]) -> bool:
        for signal in (pre_delete, post_delete):
            found: Any = signal._live_receivers(model)
            if isinstance(found, tuple):  # Django 5: (sync receivers, async receivers)
                found = [*found[0], *found[1]]
            if any(receiver not in _OURS for receiver in found):
                return True
        return False


def _values(
    obj: models.Model,
    counters: Sequence[Counter],
    unknown: Sequence[Counter],
    stored: dict[Any, tuple[Any, ...]],
) -> tuple[Any, ...]:
    """The values of ``counters`` in ``obj``'s row: those ``unknown`` from ``stored`` (read
    back from the database), the others from ``obj``."""
    pk = canonical_pk(type(obj), obj.pk)
    return tuple(
        stored[pk][unknown.index(c)] if c in unknown else getattr(obj, c.attname) for c in counters
    )


class CountedManager(models.Manager.from_queryset(CountedQuerySet)):  # type: ignore[misc]
    """The default manager of counted models."""
