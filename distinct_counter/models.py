"""The ``CountedModel`` mixin, and the app's own ``CounterState`` table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from django.db import models, router, transaction

from distinct_counter.counting.handlers import computed, inserts_fresh
from distinct_counter.counting.queryset import CountedManager
from distinct_counter.counting.registry import touched
from distinct_counter.counting.state import CounterState

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
        value (the old one is read, locked, before it), or the database computes one (it is
        read back after)."""
        update_fields = kwargs.get("update_fields", args[3] if len(args) > 3 else None)
        counters = touched(type(self), update_fields)
        updates = self.pk is not None and not inserts_fresh(self)
        if not counters or not (updates or any(computed(self, c) for c in counters)):
            return super().save(*args, **kwargs)
        using = kwargs.get("using", args[2] if len(args) > 2 else None)
        using = using or router.db_for_write(type(self), instance=self)
        # The lock taken by the pre_save handler must last until the UPDATE or INSERT.
        with transaction.atomic(using=using, savepoint=False):
            return super().save(*args, **kwargs)
