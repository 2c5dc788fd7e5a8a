"""The ``CountedModel`` mixin, its queryset, and the app's own ``CounterState`` table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import itertools

from django.db import connections, models, router, transaction
from django.utils import timezone

from distinct_counter.counting import Deltas, ensure_available
from distinct_counter.handlers import (
    canonical_pk,
    deltas_between,
    lock_absent,
    locked_rows,
    on_commit_stale,
    prefetched_deletes,
    record,
)
from distinct_counter.registry import Counter, counters_of


def _merge(into: Deltas, deltas: Deltas) -> None:
    for counter, values in deltas.items():
        mine = into.setdefault(counter, {})
        for value, delta in values.items():
            mine[value] = mine.get(value, 0) + delta


def _touched(model: type[models.Model], names: Iterable[str]) -> tuple[Counter, ...]:
    names = set(names)
    return tuple(c for c in counters_of(model) if c.field.name in names or c.attname in names)


class CountedQuerySet(models.QuerySet):  # type: ignore[type-arg]
    """A queryset whose bulk operations keep the counters exact.

    ``bulk_create``, ``bulk_update``, ``update`` and ``delete`` send the same deltas as the
    equivalent row-by-row saves would, with a constant number of extra queries per call (per
    batch, for ``bulk_update``). ``update()`` of fields that are not counted costs nothing
    extra.
    """

    _bypass = False

    def _clone(self) -> CountedQuerySet:
        clone = super()._clone()  # type: ignore[misc]
        clone._bypass = self._bypass
        return clone  # type: ignore[no-any-return]

    def bulk_create(self, objs: Iterable[models.Model], *args: Any,
                    **kwargs: Any) -> list[models.Model]:
        counters = counters_of(self.model)
        if not counters:
            return super().bulk_create(objs, *args, **kwargs)  # type: ignore[no-any-return]
        ensure_available(self.model)
        objs = list(objs)
        conflicts = kwargs.get("ignore_conflicts") or kwargs.get("update_conflicts")
        # Explicit pks take the locks that deletes and updates of missing rows wait on. Not
        # pks of a default (fresh: nobody else can be writing them), nor with conflicts
        # handled (the counters are marked stale anyway).
        pk_field: Any = self.model._meta.pk
        explicit = [] if conflicts or pk_field.has_default() else [
            o.pk for o in objs if o.pk is not None]
        with transaction.atomic(using=self.db, savepoint=False):
            lock_absent(self.model, self.db, explicit)
            created = super().bulk_create(objs, *args, **kwargs)
        if conflicts:
            # Which rows were inserted, and which replaced, is not known here.
            on_commit_stale(self.db, list(counters), "bulk_create() with conflicts handling")
            return created
        deltas: Deltas = {}
        for obj in created:
            _merge(deltas, deltas_between(
                counters, None, tuple(getattr(obj, c.attname) for c in counters)))
        record(self.db, deltas)
        return created

    def bulk_update(self, objs: Iterable[models.Model], fields: Sequence[str],
                    batch_size: int | None = None) -> int:
        counters = _touched(self.model, fields)
        if not counters:
            return int(super().bulk_update(objs, fields, batch_size=batch_size))
        ensure_available(self.model)
        objs = list(objs)
        attnames = [c.attname for c in counters]
        deltas: Deltas = {}
        with transaction.atomic(using=self.db, savepoint=False):
            old = locked_rows(self.model, self.db, [obj.pk for obj in objs], counters)
            bypass = self._chain()
            bypass._bypass = True  # its internal update() must not count a second time
            updated = int(models.QuerySet.bulk_update(bypass, objs, fields, batch_size=batch_size))
            seen = set()
            for obj in objs:
                pk = canonical_pk(self.model, obj.pk)
                if pk not in old or pk in seen:
                    continue
                seen.add(pk)
                new = tuple(getattr(obj, name) for name in attnames)
                _merge(deltas, deltas_between(counters, old[pk], new))
            record(self.db, deltas)
        return updated

    def update(self, **kwargs: Any) -> int:
        counters = _touched(self.model, kwargs)
        if not counters or self._bypass:
            return int(super().update(**kwargs))
        ensure_available(self.model)
        new = {c: kwargs[c.field.name] if c.field.name in kwargs else kwargs[c.attname]
               for c in counters}
        with transaction.atomic(using=self.db, savepoint=False):
            if any(hasattr(v, "resolve_expression") for v in new.values()):
                rows = int(super().update(**kwargs))
                if rows:
                    on_commit_stale(self.db, list(counters), "QuerySet.update() with an expression")
                return rows
            # Lock the rows and read their old values in one query, then update exactly
            # those rows: a row inserted meanwhile that matches the filter is left out, as if
            # this UPDATE had run first. Streamed, so memory stays flat on huge updates.
            attnames = [c.attname for c in counters]
            locked = self.order_by("pk").select_for_update().values_list("pk", *attnames)
            conn = connections[self.db]
            stream = (locked.iterator(chunk_size=2000) if conn.vendor == "postgresql"
                      else iter(list(locked)))
            base = self.model._base_manager.using(self.db)
            deltas: Deltas = {}
            rows = 0
            new_values = tuple(new[c] for c in counters)
            while chunk := list(itertools.islice(stream, 2000)):
                rows += int(models.QuerySet.update(base.filter(pk__in=[r[0] for r in chunk]),
                                                   **kwargs))
                for row in chunk:
                    _merge(deltas, deltas_between(counters, row[1:], new_values))
            record(self.db, deltas)
        return rows

    def delete(self) -> tuple[int, dict[str, int]]:
        counters = counters_of(self.model)
        if not counters:
            return super().delete()  # type: ignore[no-any-return]
        ensure_available(self.model)
        with transaction.atomic(using=self.db, savepoint=False):
            rows = (self.model._base_manager.using(self.db)
                    .filter(pk__in=self.order_by().values("pk")).select_for_update()
                    .order_by("pk").values_list("pk", *(c.attname for c in counters)))
            prefetched = {(self.model, row[0]): row[1:] for row in rows}
            token = prefetched_deletes.set({**prefetched_deletes.get(), **prefetched})
            try:
                return super().delete()  # type: ignore[no-any-return]
            finally:
                prefetched_deletes.reset(token)


class CountedManager(models.Manager.from_queryset(CountedQuerySet)):  # type: ignore[misc]
    """The default manager of counted models."""


class CountedModel(models.Model):
    """Abstract base of models whose fields' distinct values are counted in Redis.

    Subclasses name the fields in ``counted_fields``; saves, deletes and the bulk operations
    of the default manager (``objects``, a :class:`CountedManager`) keep the counters exact.
    A subclass that declares another default manager must base it on
    :class:`CountedQuerySet` (system check ``distinct_counter.W002``).
    """

    counted_fields: ClassVar[Sequence[str]] = ()

    objects = CountedManager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save, locking the row first when an update may change a counted value (or its
        absence, for an insert of an explicit pk)."""
        update_fields = kwargs.get("update_fields", args[3] if len(args) > 3 else None)
        fresh = self._state.adding and self._meta.pk.has_default()  # type: ignore[union-attr]
        if self.pk is None or fresh or (
            update_fields is not None and not _touched(type(self), update_fields)
        ):
            return super().save(*args, **kwargs)
        using = kwargs.get("using", args[2] if len(args) > 2 else None)
        using = using or router.db_for_write(type(self), instance=self)
        # The old value is read with SELECT ... FOR UPDATE in the pre_save handler (or the
        # absence of the row locked, for an insert of an explicit pk): the lock must last
        # until the UPDATE or INSERT, so both run in one transaction.
        with transaction.atomic(using=using, savepoint=False):
            return super().save(*args, **kwargs)


class CounterState(models.Model):
    """What the database knows of each counter: when it was last rebuilt, and whether it
    missed writes since (``stale_since``), a mark that survives Redis and process restarts."""

    label = models.CharField(max_length=255, unique=True)
    stale_since = models.DateTimeField(null=True, blank=True)
    stale_reason = models.TextField(blank=True, default="")
    rebuilt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "counter state"

    def __str__(self) -> str:
        return self.label

    @classmethod
    def _db(cls) -> str:
        return str(router.db_for_write(cls))

    @classmethod
    def mark_stale(cls, labels: Iterable[str], reason: str) -> None:
        db = cls._db()
        now = timezone.now()
        for label in labels:
            state, _ = cls.objects.using(db).get_or_create(label=label)
            if state.stale_since is None:
                cls.objects.using(db).filter(pk=state.pk, stale_since__isnull=True).update(
                    stale_since=now, stale_reason=reason[:1000])

    @classmethod
    def mark_rebuilt(cls, label: str) -> None:
        cls.objects.using(cls._db()).update_or_create(
            label=label,
            defaults={"stale_since": None, "stale_reason": "", "rebuilt_at": timezone.now()},
        )

    @classmethod
    def stale_marks(cls) -> dict[str, float]:
        """label -> time (epoch seconds) of the first missed write, of every stale counter."""
        db = cls._db()
        # In a savepoint: a failure here must not break the caller's transaction.
        with transaction.atomic(using=db):
            rows = list(cls.objects.using(db).filter(stale_since__isnull=False))
        return {s.label: s.stale_since.timestamp() for s in rows if s.stale_since}
