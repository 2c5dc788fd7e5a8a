from __future__ import annotations

from django.db import models

from distinct_counter.models import CountedModel


class Message(CountedModel):
    username = models.CharField(max_length=150, db_index=True)
    city = models.CharField(max_length=100, null=True, blank=True, db_index=True)
    body = models.TextField(blank=True, default="")

    counted_fields = ("username", "city")


class PlainMessage(models.Model):
    """The same table shape, not counted: the baseline of benchmarks and cost tests."""

    username = models.CharField(max_length=150, db_index=True)
    city = models.CharField(max_length=100, null=True, blank=True, db_index=True)
    body = models.TextField(blank=True, default="")


class Author(models.Model):
    name = models.CharField(max_length=100)


class Item(CountedModel):
    """Counted fields of many types: values the database treats as equal must count once."""

    price = models.DecimalField(max_digits=8, decimal_places=2, null=True, db_index=True)
    day = models.DateField(null=True, db_index=True)
    qty = models.IntegerField(null=True, db_index=True)
    flag = models.BooleanField(null=True, db_index=True)
    author = models.ForeignKey(Author, null=True, on_delete=models.CASCADE)
    label = models.CharField(max_length=2000, null=True, db_index=True)

    counted_fields = ("price", "day", "qty", "flag", "author", "label")


class Venue(CountedModel):
    """A second model counting a field named ``city``."""

    city = models.CharField(max_length=100, db_index=True)

    counted_fields = ("city",)
