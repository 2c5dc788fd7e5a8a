"""Values the database computes: a generated column and a database default."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Lower

from distinct_counter.models import CountedModel


class Reading(CountedModel):
    raw = models.CharField(max_length=50, db_index=True)
    lower = models.GeneratedField(
        expression=Lower("raw"),
        output_field=models.CharField(max_length=50),
        db_persist=True,
        db_index=True,
    )
    source = models.CharField(max_length=20, db_default="sensor", db_index=True)

    counted_fields = ("raw", "lower", "source")
