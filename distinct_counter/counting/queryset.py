"""``CountedQuerySet``: bulk operations that keep the counters exact."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from django.db import connections, models, transaction

from distinct_counter.counting.commit import record, stale_on_commit
from distinct_counter.counting.deltas import Deltas, between, ensure_available, merge
from distinct_counter.counting.handlers import prefetched_deletes
from distinct_counter.counting.registry import counters_of, touched
from distinct_counter.counting.rows import canonical_pk, lock_absent, locked_rows


class CountedQuerySet(models.QuerySet[Any]):
    """A queryset whose bulk operations keep the counters exact.

    ``bulk_create``, ``bulk_update``, ``update`` and ``delete`` send the same deltas as the
    equivalent row-by-row saves would, with a constant number of extra queries per call (per
    batch, for ``bulk_update``). ``update()`` of fields that are not counted costs nothing
    extra.
    """

    _bypass = False

    @property
    def _counted_model(self) -> type[models.Model]:
        model: type[models.Model] = self.model
        return model

    def _clone(self) -> CountedQuerySet:
        clone = super()._clone()  # type: ignore[misc]
        clone._bypass = self._bypass
        return clone  # type: ignore[no-any-return]

    def bulk_create(
        self, objs: Iterable[models.Model], *args: Any, **kwargs: Any
    ) -> list[models.Model]:
        counters = counters_of(self._counted_model)
        if not counters:
            return super().bulk_create(objs, *args, **kwargs)
        ensure_available(self.model)
        objs = list(objs)
        conflicts = kwargs.get("ignore_conflicts") or kwargs.get("update_conflicts")
        # Explicit pks take the locks that deletes and updates of missing rows wait on. Not
        # pks of a default (fresh: nobody else can be writing them), nor with conflicts
        # handled (the counters are marked stale anyway).
        pk_field: Any = self.model._meta.pk
        explicit = (
            [] if conflicts or pk_field.has_default() else [o.pk for o in objs if o.pk is not None]
        )
        with transaction.atomic(using=self.db, savepoint=False):
            lock_absent(self.model, self.db, explicit)
            created = super().bulk_create(objs, *args, **kwargs)
        if conflicts:
            # Which rows were inserted, and which replaced, is not known here.
            stale_on_commit(self.db, list(counters), "bulk_create() with conflicts handling")
            return created
        deltas: Deltas = {}
        for obj in created:
            merge(deltas, between(counters, None, tuple(getattr(obj, c.attname) for c in counters)))
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
        attnames = [c.attname for c in counters]
        deltas: Deltas = {}
        with transaction.atomic(using=self.db, savepoint=False):
            old = locked_rows(self.model, self.db, [obj.pk for obj in objs], counters)
            bypass = self._clone()
            bypass._bypass = True  # its internal update() must not count a second time
            updated = int(models.QuerySet.bulk_update(bypass, objs, fields, batch_size=batch_size))
            seen = set()
            for obj in objs:
                pk = canonical_pk(self.model, obj.pk)
                if pk not in old or pk in seen:
                    continue
                seen.add(pk)
                new = tuple(getattr(obj, name) for name in attnames)
                merge(deltas, between(counters, old[pk], new))
            record(self.db, deltas)
        return updated

    def update(self, **kwargs: Any) -> int:
        counters = touched(self.model, kwargs)
        if not counters or self._bypass:
            return int(super().update(**kwargs))
        ensure_available(self.model)
        new = {
            c: kwargs[c.field.name] if c.field.name in kwargs else kwargs[c.attname]
            for c in counters
        }
        with transaction.atomic(using=self.db, savepoint=False):
            if any(hasattr(v, "resolve_expression") for v in new.values()):
                rows = int(super().update(**kwargs))
                if rows:
                    stale_on_commit(self.db, list(counters), "QuerySet.update() with an expression")
                return rows
            # Lock the rows and read their old values in one query, then update exactly
            # those rows: a row inserted meanwhile that matches the filter is left out, as if
            # this UPDATE had run first. Streamed, so memory stays flat on huge updates.
            attnames = [c.attname for c in counters]
            locked = self.order_by("pk").select_for_update().values_list("pk", *attnames)
            conn = connections[self.db]
            stream = (
                locked.iterator(chunk_size=2000)
                if conn.vendor == "postgresql"
                else iter(list(locked))
            )
            base = self.model._base_manager.using(self.db)
            deltas: Deltas = {}
            rows = 0
            new_values = tuple(new[c] for c in counters)
            while chunk := list(itertools.islice(stream, 2000)):
                rows += int(
                    models.QuerySet.update(base.filter(pk__in=[r[0] for r in chunk]), **kwargs)
                )
                for row in chunk:
                    merge(deltas, between(counters, row[1:], new_values))
            record(self.db, deltas)
        return rows

    def delete(self) -> tuple[int, dict[str, int]]:
        counters = counters_of(self._counted_model)
        if not counters:
            return super().delete()
        ensure_available(self.model)
        with transaction.atomic(using=self.db, savepoint=False):
            rows = (
                self.model._base_manager.using(self.db)
                .filter(pk__in=self.order_by().values("pk"))
                .select_for_update()
                .order_by("pk")
                .values_list("pk", *(c.attname for c in counters))
            )
            prefetched = {(self.model, row[0]): row[1:] for row in rows}
            token = prefetched_deletes.set({**(prefetched_deletes.get() or {}), **prefetched})
            try:
                return super().delete()
            finally:
                prefetched_deletes.reset(token)


class CountedManager(models.Manager.from_queryset(CountedQuerySet)):  # type: ignore[misc]
    """The default manager of counted models."""
