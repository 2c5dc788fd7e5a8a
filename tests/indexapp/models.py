from __future__ import annotations

from django.db import models

from distinct_counter.models import CountedModel


class Visit(CountedModel):
    """Counted fields in the three states ``counted_indexes`` tells apart: ``city`` indexed by a
    migration (``CreateIndexConcurrently``), ``referrer`` without any index, ``country``
    indexed from the start."""

    city = models.CharField(max_length=100)
    referrer = models.CharField(max_length=200, blank=True, default="")
    country = models.CharField(max_length=2, db_index=True)

    counted_fields = ("city", "referrer", "country")

    class Meta:
        indexes = [models.Index(fields=["city"], name="indexapp_visit_city_idx")]
