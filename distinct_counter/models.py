"""The ``CountedModel`` mixin, and the app's own ``CounterState`` table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from django.db import connections, models, router, transaction

from distinct_counter.counting.commit import txid_known
from distinct_counter.counting.handlers import (
    IN_UPDATE,
    held_values,
    inserts_fresh,
    old_values,
    reads_in_update,
    set_old_values,
    set_txid,
)
from distinct_counter.counting.queryset import CountedManager
from distinct_counter.counting.registry import touched
from distinct_counter.counting.rows import lock_absent, locked_row
from distinct_counter.counting.state import CounterState
from distinct_counter.counting.statements import insert_returning_txid, update_returning_old

__all__ = ["CountedModel", "CounterState"]


class CountedModel(models.Model):
    """Abstract base of models whose fields' distinct values are counted in Redis.

    Subclasses name the fields in ``counted_fields``; saves, deletes and the bulk operations
    of the default manager (``objects``, a :class:`CountedManager`) keep the counters exact.
    A subclass that declares another default manager must base it on
    :class:`CountedQuerySet` (system check ``distinct_counter.W002``).
    """

    counted_fields: ClassVar[Sequence[str]] = ()
    #: How the registry knows counted models (``registry.MARKER``) without importing this.
    _distinct_counter_counted: ClassVar[bool] = True

    objects = CountedManager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save in a transaction when the counters need one: an update may change a counted
        value (the old one is read, locked, before it, unless the UPDATE itself returns it),
        or the database computes one (it is read back after)."""
        update_fields = kwargs.get("update_fields", args[3] if len(args) > 3 else None)
        model = type(self)
        counters = touched(model, update_fields)
        updates = self.pk is not None and not inserts_fresh(self)
        if not counters or not (updates or held_values(self, counters) is None):
            return super().save(*args, **kwargs)
        using = kwargs.get("using", args[2] if len(args) > 2 else None)
        using = using or router.db_for_write(model, instance=self)
        if updates and reads_in_update(model, self, using, counters):
            return super().save(*args, **kwargs)  # one statement: no transaction needed
        # The lock taken by the pre_save handler must last until the UPDATE or INSERT.
        with transaction.atomic(using=using, savepoint=False):
            return super().save(*args, **kwargs)

    def _do_update(  # type: ignore[override]
        self,
        base_qs: Any,
        using: str,
        pk_val: Any,
        values: Any,
        update_fields: Any,
        forced_update: Any,
        *rest: Any,
    ) -> Any:
        """Django's UPDATE of a save, made to return the old counted values when the
        pre_save handler left them to it (:data:`IN_UPDATE`). ``rest`` is Django 6's
        ``returning_fields``; then the result is a list of rows, not a bool."""
        stash = old_values(self)
        args = (base_qs, using, pk_val, values, update_fields, forced_update, *rest)
        if stash is None or stash[1] is not IN_UPDATE:
            return super()._do_update(*args)
        counters = stash[0]
        if (
            (rest and rest[0])
            or not values
            or (self._meta.select_on_save and not forced_update)
            or base_qs.query.has_filters()  # a base manager that filters: Django's UPDATE
        ):
            # Not the one-statement form: read the old values first, as any other save.
            with transaction.atomic(using=using, savepoint=False):
                set_old_values(self, counters, locked_row(type(self), using, pk_val, counters))
                return super()._do_update(*args)
        returned = update_returning_old(base_qs, pk_val, values, counters)
        if returned is None:  # no such row: Django inserts one (see _do_insert)
            set_old_values(self, counters, None)
            return [] if rest else False
        set_old_values(self, counters, returned[0])
        set_txid(self, returned[1])
        return [()] if rest else True

    def _do_insert(
        self, manager: Any, using: str, fields: Any, returning_fields: Any, raw: bool
    ) -> Any:
        """Django's INSERT of a save, returning also its transaction's id on PostgreSQL
        (``statements.insert_returning_txid``); after an UPDATE that found no row, with the
        row's absence locked first, as every insert of an explicit pk takes it
        (``rows.lock_absent``)."""
        stash = old_values(self)
        connection = connections[using]
        insert = (
            self._insert_returning_txid
            if stash is not None
            and connection.vendor == "postgresql"
            and not txid_known(connection)  # the id of a transaction is asked for once
            else super()._do_insert  # type: ignore[misc]
        )
        if stash is None or stash[1] is not None or self._state.adding:
            return insert(manager, using, fields, returning_fields, raw)
        with transaction.atomic(using=using, savepoint=False):
            lock_absent(type(self), using, [self.pk])
            return insert(manager, using, fields, returning_fields, raw)

    def _insert_returning_txid(
        self, manager: Any, using: str, fields: Any, returning_fields: Any, raw: bool
    ) -> Any:
        rows, txid = insert_returning_txid(manager, using, fields, returning_fields, raw, self)
        set_txid(self, txid)
        return rows
