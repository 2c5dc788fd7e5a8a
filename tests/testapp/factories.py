from __future__ import annotations

import factory

from tests.testapp.models import Author, Item, Message, Venue


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    username = factory.Sequence(lambda n: f"user{n % 50}")
    city = factory.Iterator(["Paris", "Lyon", "Oslo", None, ""])
    body = "hello"


class AuthorFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Author

    name = factory.Sequence(lambda n: f"author{n}")


class ItemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Item

    qty = factory.Sequence(lambda n: n % 7)


class VenueFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Venue

    city = "Paris"
