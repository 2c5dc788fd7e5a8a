"""The ``CountedModel`` mixin, and the app's own ``CounterState`` table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from django.db import connections, models, router, transaction

from distinct_counter.counting.commit import txid_known
from distinct_counter.counting.handlers import (
    IN_UPDATE,
    after_save,
    before_save,
    connection_of,
    forget_save,
    in_transaction,
    old_source,
    old_values,
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

    def save_base(
        self,
        raw: bool = False,
        force_insert: Any = False,
        force_update: bool = False,
        using: str | None = None,
        update_fields: Any = None,
    ) -> None:
        """Django's save of one row (``save()``, and fixtures' raw saves), with the counters'
        part before it: the old counted values read (``handlers.before_save``), in a
        transaction when they are read, locked, before the UPDATE (unless the UPDATE itself
        returns them) or the database computes a new value (read back after the INSERT).

        Done here, not by ``pre_save``/``post_save`` receivers: without a signal's dispatch
        (a counted create costs less), and before any other receiver runs, as one of those
        may save the row again (``after_save`` runs at the end of :meth:`_save_table`)."""
        model = type(self)
        counters = touched(model, update_fields)
        if not counters:
            forget_save(self)
            return super().save_base(raw, force_insert, force_update, using, update_fields)
        using = using or router.db_for_write(model, instance=self)
        conn = connections[using]
        try:
            source = old_source(model, self, conn, counters, raw)
            if in_transaction(self, counters, source):
                with transaction.atomic(using=using, savepoint=False):
                    before_save(model, self, conn, counters, source)
                    return super().save_base(raw, force_insert, force_update, using, update_fields)
            before_save(model, self, conn, counters, source)
            return super().save_base(raw, force_insert, force_update, using, update_fields)
        except BaseException:
            forget_save(self)  # what before_save left is this save's only
            raise

    def _save_table(self, *args: Any, **kwargs: Any) -> Any:
        """Django's INSERT or UPDATE of one table of a save; for the model's own (the last
        one), the new counted values recorded after it (``handlers.after_save``), before
        ``save_base`` sends ``post_save``. Arguments as Django's: (raw, cls, force_insert,
        force_update, using, update_fields), by position or by name.

        A fixture's raw save calls ``Model.save_base`` itself, not :meth:`save_base`: it
        saves this one table (no parent), whose old values are then read here, locked, in
        a transaction (``loaddata`` runs in one)."""
        cls = args[1] if len(args) > 1 else kwargs.get("cls")
        if cls is not self._meta.concrete_model:
            return super()._save_table(*args, **kwargs)  # type: ignore[misc]
        using = args[4] if len(args) > 4 else kwargs["using"]
        if old_values(self) is None:  # save_base was not ours: a fixture's raw save
            update_fields = args[5] if len(args) > 5 else kwargs.get("update_fields")
            counters = touched(type(self), update_fields)
            if counters:
                raw = args[0] if args else kwargs.get("raw", False)
                conn = connections[using]
                source = old_source(type(self), self, conn, counters, raw)
                with transaction.atomic(using=using, savepoint=False):
                    before_save(type(self), self, conn, counters, source)
                    return self._save_counted_table(using, *args, **kwargs)
        return self._save_counted_table(using, *args, **kwargs)

    def _save_counted_table(self, using: str, *args: Any, **kwargs: Any) -> Any:
        updated = super()._save_table(*args, **kwargs)  # type: ignore[misc]
        after_save(type(self), self, using, not updated)
        return updated

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
        """Django's UPDATE of a save, made to return the old counted values when
        ``handlers.before_save`` left them to it (:data:`IN_UPDATE`). ``rest`` is Django 6's
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
        connection = connection_of(self) if stash is not None else None
        insert = (
            self._insert_returning_txid
            if connection is not None
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
