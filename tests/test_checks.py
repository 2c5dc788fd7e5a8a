"""Each system check id, and one full ``manage.py check``."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import models
from django.test.utils import isolate_apps

from distinct_counter.checks import check_settings
from distinct_counter.counting.checks import check_model
from distinct_counter.models import CountedModel


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def test_project_passes_check() -> None:
    out = StringIO()
    call_command("check", stdout=out)
    assert "no issues" in out.getvalue()


def test_e001_cache_alias_missing(settings: Any) -> None:
    settings.DISTINCT_COUNTER = {"CACHE": "nope"}
    [error] = check_settings()
    assert error.id == "distinct_counter.E001"
    assert "'nope', which is not in CACHES" in error.msg
    assert "default" in error.hint


def test_e001_write_cache_alias_missing(settings: Any) -> None:
    settings.DISTINCT_COUNTER = {"WRITE_CACHE": "gone"}
    assert ids(check_settings()) == ["distinct_counter.E001"]


def test_e002_not_a_redis_cache(settings: Any) -> None:
    settings.DISTINCT_COUNTER = {"CACHE": "locmem"}
    [error] = check_settings()
    assert error.id == "distinct_counter.E002"
    assert "django_redis.cache.RedisCache" in error.hint


def test_e006_database_alias_missing(settings: Any) -> None:
    settings.DISTINCT_COUNTER = {"DATABASE": "reporting"}
    [error] = check_settings()
    assert error.id == "distinct_counter.E006"
    assert "'reporting'" in error.msg and "default, replica" in error.hint


@pytest.mark.parametrize(
    "key,value", [("FALLBACK", "zero"), ("ON_ERROR", "ignore"), ("SEND", "later")]
)
def test_e007_value_outside_choices(settings: Any, key: str, value: str) -> None:
    settings.DISTINCT_COUNTER = {key: value}
    [error] = check_settings()
    assert error.id == "distinct_counter.E007"
    assert repr(value) in error.msg


def test_e034_background_sending_cannot_raise(settings: Any) -> None:
    settings.DISTINCT_COUNTER = {"SEND": "background", "ON_ERROR": "raise"}
    [error] = check_settings()
    assert error.id == "distinct_counter.E034"
    assert "'background'" in error.msg and "ON_ERROR 'log'" in error.hint
    settings.DISTINCT_COUNTER = {"SEND": "background"}
    assert check_settings() == []


@isolate_apps("tests.testapp")
def test_e003_counted_fields_not_a_sequence_of_names() -> None:
    class Bad(CountedModel):
        __module__ = "tests.testapp.models"
        city = models.CharField(max_length=10, db_index=True)
        counted_fields = "city"  # type: ignore[assignment]

    [error] = check_model(Bad)
    assert error.id == "distinct_counter.E003"
    assert "'city'" in error.msg


@isolate_apps("tests.testapp")
def test_e004_field_does_not_exist() -> None:
    class Bad(CountedModel):
        __module__ = "tests.testapp.models"
        city = models.CharField(max_length=10, db_index=True)
        counted_fields = ("town",)

    [error] = check_model(Bad)
    assert error.id == "distinct_counter.E004"
    assert "'town'" in error.msg and "city" in error.hint


@isolate_apps("tests.testapp")
def test_e005_many_to_many_or_not_concrete() -> None:
    class Tag(models.Model):
        __module__ = "tests.testapp.models"
        pass

    class Bad(CountedModel):
        __module__ = "tests.testapp.models"
        tags = models.ManyToManyField(Tag)
        counted_fields = ("tags",)

    class Bad2(CountedModel):
        __module__ = "tests.testapp.models"
        counted_fields = ("bad",)  # the reverse relation from Bad3

    class Bad3(models.Model):
        __module__ = "tests.testapp.models"
        other = models.ForeignKey(Bad2, on_delete=models.CASCADE, related_name="bad")

    assert ids(check_model(Bad)) == ["distinct_counter.E005"]
    assert ids(check_model(Bad2)) == ["distinct_counter.E005"]


@isolate_apps("tests.testapp")
def test_w001_counted_field_without_index() -> None:
    class NoIndex(CountedModel):
        city = models.CharField(max_length=10)
        town = models.CharField(max_length=10)
        code = models.CharField(max_length=10, unique=True)
        counted_fields = ("city", "town", "code")

        class Meta:
            app_label = "testapp"
            indexes = [models.Index(fields=["town", "city"], name="town_city")]

    [warning] = check_model(NoIndex)
    assert warning.id == "distinct_counter.W001"
    assert "NoIndex.city" in warning.msg
    assert "counted_indexes testapp" in warning.hint


@isolate_apps("tests.testapp")
def test_w002_default_manager_does_not_count_bulk_operations() -> None:
    class Plain(CountedModel):
        __module__ = "tests.testapp.models"
        city = models.CharField(max_length=10, db_index=True)
        objects = models.Manager()
        counted_fields = ("city",)

    [warning] = check_model(Plain)
    assert warning.id == "distinct_counter.W002"
    assert "CountedQuerySet" in warning.hint


def DB_CASCADE(collector: Any, field: Any, sub_objs: Any, using: Any) -> None:  # noqa: N802
    """A stand-in for Django 6.1's database-level on_delete, known by its name."""


def DB_SET_NULL(collector: Any, field: Any, sub_objs: Any, using: Any) -> None:  # noqa: N802
    """Another stand-in (Django 6.1's ``models.DB_SET_NULL``)."""


@isolate_apps("tests.testapp")
def test_e030_a_type_the_database_compares_otherwise() -> None:
    class Thing(models.CharField):  # type: ignore[type-arg]
        def get_internal_type(self) -> str:
            return "ThingField"

    class Bad(CountedModel):
        __module__ = "tests.testapp.models"
        data = models.JSONField(null=True, db_index=True)
        thing = Thing(max_length=5, db_index=True)
        fine = models.CharField(max_length=5, db_index=True)
        counted_fields = ("data", "thing", "fine")

    errors = check_model(Bad)
    assert ids(errors) == ["distinct_counter.E030", "distinct_counter.E030"]
    assert "Bad.data" in errors[0].msg and "JSONField" in errors[0].msg
    assert "ThingField" in errors[1].msg
    assert "GeneratedField" in errors[0].hint


@isolate_apps("tests.testapp")
def test_e031_a_collation_that_may_compare_texts_apart_as_equal() -> None:
    class Coded(models.Model):
        __module__ = "tests.testapp.models"
        code = models.CharField(max_length=5, primary_key=True, db_collation="und-x-icu")

    class Bad(CountedModel):
        __module__ = "tests.testapp.models"
        name = models.CharField(max_length=5, db_index=True, db_collation="case_insensitive")
        bytewise = models.CharField(max_length=5, db_index=True, db_collation="C")
        coded = models.ForeignKey(Coded, on_delete=models.CASCADE)
        counted_fields = ("name", "bytewise", "coded")

    errors = check_model(Bad)
    assert ids(errors) == ["distinct_counter.E031", "distinct_counter.E031"]
    assert "'case_insensitive'" in errors[0].msg and "'und-x-icu'" in errors[1].msg
    assert "without db_collation" in errors[0].hint


@pytest.mark.skipif(not hasattr(models, "CompositePrimaryKey"), reason="Django < 5.2")
@isolate_apps("tests.testapp")
def test_e032_a_composite_primary_key() -> None:
    class Bad(CountedModel):
        __module__ = "tests.testapp.models"
        pk = models.CompositePrimaryKey("shop", "code")  # type: ignore[attr-defined]
        shop = models.IntegerField()
        code = models.CharField(max_length=5, db_index=True)
        counted_fields = ("code",)

    [error] = check_model(Bad)
    assert error.id == "distinct_counter.E032"
    assert "UniqueConstraint" in error.hint


@isolate_apps("tests.testapp")
def test_e033_a_database_level_on_delete() -> None:
    class Owner(models.Model):
        __module__ = "tests.testapp.models"

    class Cascaded(CountedModel):
        __module__ = "tests.testapp.models"
        owner = models.ForeignKey(Owner, on_delete=DB_CASCADE)  # not counted: still deletes
        name = models.CharField(max_length=5, db_index=True)
        counted_fields = ("name",)

    class Nulled(CountedModel):
        __module__ = "tests.testapp.models"
        owner = models.ForeignKey(Owner, null=True, on_delete=DB_SET_NULL, db_index=True)
        other = models.ForeignKey(Owner, null=True, on_delete=DB_SET_NULL, related_name="+")
        counted_fields = ("owner",)  # other is not counted: its rewrite changes no count

    [cascade] = check_model(Cascaded)
    assert cascade.id == "distinct_counter.E033"
    assert "on_delete=DB_CASCADE" in cascade.msg and "deletes rows" in cascade.msg
    assert "on_delete=CASCADE" in cascade.hint
    [nulled] = check_model(Nulled)
    assert nulled.id == "distinct_counter.E033"
    assert "Nulled.owner" in nulled.msg and "rewrites owner" in nulled.msg
    assert "on_delete=SET_NULL" in nulled.hint


@isolate_apps("tests.testapp")
def test_every_exact_type_passes() -> None:
    from tests.typesapp.models import Typed

    assert check_model(Typed) == []
