"""Every model shape a counted model takes: plain, proxy, multi-table parent and children, a
UUID primary key, and foreign keys with each ``on_delete``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import ClassVar

from django.db import models

from distinct_counter.models import CountedModel


class Owner(models.Model):
    """Not counted: the target of counted foreign keys."""

    name = models.CharField(max_length=50, default="")


def fallback_owner() -> int:
    """``SET(callable)``: the owner that deleted owners' pets move to."""
    owner, _ = Owner.objects.get_or_create(name="fallback")
    return int(owner.pk)


class Place(CountedModel):
    city = models.CharField(max_length=50, null=True, db_index=True)
    name = models.CharField(max_length=50, default="", db_index=True)
    visits = models.IntegerField(default=0, db_index=True)

    counted_fields: ClassVar[Sequence[str]] = ("city", "name", "visits")


class PlaceProxy(Place):
    class Meta:
        proxy = True


class Branch(Place):
    """A multi-table child with counters of its own, one of them on a parent's field."""

    code = models.CharField(max_length=20, default="", db_index=True)

    counted_fields = ("code", "city")


class Kiosk(Place):
    """A multi-table child that adds no counter: its rows count in ``Place``'s."""

    stall = models.IntegerField(default=0)


class Tag(CountedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    label = models.CharField(max_length=50, db_index=True)
    slug = models.SlugField(max_length=50, unique=True, null=True)

    counted_fields = ("label", "slug")


class Pet(CountedModel):
    """Counted foreign keys with each ``on_delete`` the delete collector handles."""

    name = models.CharField(max_length=50, default="", db_index=True)
    owner = models.ForeignKey(Owner, models.CASCADE, null=True, related_name="pets")
    carer = models.ForeignKey(Owner, models.SET_NULL, null=True, related_name="cared")
    vet = models.ForeignKey(
        Owner, models.SET_DEFAULT, null=True, default=None, related_name="treated"
    )
    sitter = models.ForeignKey(Owner, models.SET(fallback_owner), null=True, related_name="sat")
    walker = models.ForeignKey(Owner, models.PROTECT, null=True, related_name="walked")
    groomer = models.ForeignKey(
        Owner, models.DO_NOTHING, null=True, db_constraint=False, related_name="groomed"
    )

    counted_fields = ("name", "owner", "carer", "vet", "sitter", "walker", "groomer")
