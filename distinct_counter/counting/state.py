"""``CounterState``: what the database knows of each counter, a mark that survives Redis and
process restarts. Its model class lives here, below the write path that records into it;
``distinct_counter.models`` exposes it to Django."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import models, router, transaction
from django.utils import timezone


class CounterState(models.Model):
    """When a counter was last rebuilt, and whether it missed writes since
    (``stale_since``)."""

    label = models.CharField(max_length=255, unique=True)
    stale_since = models.DateTimeField(null=True, blank=True)
    stale_reason = models.TextField(blank=True, default="")
    rebuilt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "distinct_counter"
        verbose_name = "counter state"

    def __str__(self) -> str:
        return self.label

    @classmethod
    def _db(cls) -> str:
        return str(router.db_for_write(cls))

    @classmethod
    def record_stale(cls, labels: Iterable[str], reason: str) -> None:
        db = cls._db()
        now = timezone.now()
        for label in labels:
            state, _ = cls.objects.using(db).get_or_create(label=label)
            if state.stale_since is None:
                cls.objects.using(db).filter(pk=state.pk, stale_since__isnull=True).update(
                    stale_since=now, stale_reason=reason[:1000]
                )

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
