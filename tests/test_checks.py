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


@pytest.mark.parametrize("key,value", [("FALLBACK", "zero"), ("ON_ERROR", "ignore")])
def test_e007_value_outside_choices(settings: Any, key: str, value: str) -> None:
    settings.DISTINCT_COUNTER = {key: value}
    [error] = check_settings()
    assert error.id == "distinct_counter.E007"
    assert repr(value) in error.msg


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
