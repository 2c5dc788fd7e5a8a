"""A counted field of every type the system checks accept, for tests/test_values.py."""

from __future__ import annotations

import uuid

from django.db import models

from distinct_counter.models import CountedModel


class Target(models.Model):
    """The target of counted foreign keys by its integer pk or by ``code``."""

    code = models.CharField(max_length=20, unique=True)


class UuidTarget(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)


class Typed(CountedModel):
    """One nullable, indexed, counted field per type; a test writes one field at a time."""

    char = models.CharField(max_length=50, null=True, db_index=True)
    text = models.TextField(null=True, db_index=True)
    slug = models.SlugField(null=True)
    email = models.EmailField(null=True, db_index=True)
    url = models.URLField(null=True, db_index=True)
    file = models.FileField(null=True, db_index=True)
    integer = models.IntegerField(null=True, db_index=True)
    big = models.BigIntegerField(null=True, db_index=True)
    small = models.SmallIntegerField(null=True, db_index=True)
    positive = models.PositiveIntegerField(null=True, db_index=True)
    positive_big = models.PositiveBigIntegerField(null=True, db_index=True)
    positive_small = models.PositiveSmallIntegerField(null=True, db_index=True)
    boolean = models.BooleanField(null=True, db_index=True)
    decimal = models.DecimalField(max_digits=8, decimal_places=2, null=True, db_index=True)
    wide_decimal = models.DecimalField(max_digits=30, decimal_places=10, null=True, db_index=True)
    real = models.FloatField(null=True, db_index=True)
    day = models.DateField(null=True, db_index=True)
    moment = models.DateTimeField(null=True, db_index=True)
    time = models.TimeField(null=True, db_index=True)
    duration = models.DurationField(null=True, db_index=True)
    uuid = models.UUIDField(null=True, db_index=True)
    address = models.GenericIPAddressField(null=True, db_index=True)
    ipv4 = models.GenericIPAddressField(protocol="both", unpack_ipv4=True, null=True, db_index=True)
    blob = models.BinaryField(null=True, db_index=True)
    target = models.ForeignKey(Target, null=True, on_delete=models.CASCADE)
    uuid_target = models.ForeignKey(UuidTarget, null=True, on_delete=models.CASCADE)
    code = models.ForeignKey(
        Target, null=True, on_delete=models.CASCADE, to_field="code", related_name="+"
    )

    counted_fields = (
        "char",
        "text",
        "slug",
        "email",
        "url",
        "file",
        "integer",
        "big",
        "small",
        "positive",
        "positive_big",
        "positive_small",
        "boolean",
        "decimal",
        "wide_decimal",
        "real",
        "day",
        "moment",
        "time",
        "duration",
        "uuid",
        "address",
        "ipv4",
        "blob",
        "target",
        "uuid_target",
        "code",
    )
