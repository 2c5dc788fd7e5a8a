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

    def __str__(self) -> str:
        return f"{self.username} ({self.city or '-'})"


class PlainMessage(models.Model):
    """The same table, not counted: the baseline of the benchmarks."""

    username = models.CharField(max_length=150)
    city = models.CharField(max_length=100, null=True, blank=True)
    text = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
