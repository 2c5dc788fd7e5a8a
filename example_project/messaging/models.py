"""Messages arrive with a username and a city; operators want the number of distinct ones."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from distinct_counter.models import CountedModel


class Message(CountedModel):
    username = models.CharField(max_length=150)
    city = models.CharField(max_length=100, null=True, blank=True)
    text = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    counted_fields = ("username", "city")

    class Meta:
        # Built by migration 0002 with CreateIndexConcurrently (no write lock on PostgreSQL);
        # rebuild_counts and rebuild_counts --check GROUP BY these columns.
        indexes = [
            models.Index(fields=["username"], name="messaging_m_usernam_217736_idx"),
            models.Index(fields=["city"], name="messaging_m_city_7a6f83_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.username} ({self.city or '-'})"


class PlainMessage(models.Model):
    """The same table, not counted: the baseline of the benchmarks."""

    username = models.CharField(max_length=150)
    city = models.CharField(max_length=100, null=True, blank=True)
    text = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        # The same indexes as Message, so benchmarks compare like with like.
        indexes = [
            models.Index(fields=["username"], name="messaging_p_usernam_31cbee_idx"),
            models.Index(fields=["city"], name="messaging_p_city_f9afeb_idx"),
        ]
