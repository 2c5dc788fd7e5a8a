"""The counters' system checks: settings (E001, E002, E006-E008, E034) and counted models
(E003-E005, E030-E033, W001, W002)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import FieldDoesNotExist
from django.db import models

from distinct_counter.conf import database_errors, is_subclass_path
from distinct_counter.counting.conf import conf
from distinct_counter.counting.queryset import CountedQuerySet
from distinct_counter.counting.registry import counted_models
from distinct_counter.counting.values import BYTEWISE_COLLATIONS, EXACT_TYPES, storage
from distinct_counter.indexes.planner import has_index

#: Caches the counters can use: django-redis's, and anything built on it.
REDIS_BACKENDS = ("django_redis.cache.RedisCache",)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every counting key of ``DISTINCT_COUNTER`` valid, and the aliases it names exist."""
    errors = conf.errors()
    invalid = {e.id for e in errors}
    if "distinct_counter.E001" not in invalid:
        aliases = {"CACHE": conf.CACHE, "WRITE_CACHE": conf.WRITE_CACHE}
        errors += [e for key, alias in aliases.items() if (e := _cache_error(key, alias))]
    if "distinct_counter.E006" not in invalid:
        errors += database_errors({"DATABASE": conf.DATABASE})
    if "distinct_counter.E007" not in invalid and (conf.SEND, conf.ON_ERROR) == (
        "background",
        "raise",
    ):
        errors.append(
            checks.Error(
                "DISTINCT_COUNTER['SEND'] is 'background' and ['ON_ERROR'] is 'raise': a write "
                "sent in the background has returned before Redis can fail it.",
                hint="Use SEND 'wait' to refuse writes Redis cannot take, or ON_ERROR 'log'.",
                id="distinct_counter.E034",
            )
        )
    return errors


def _cache_error(key: str, alias: str | None) -> checks.CheckMessage | None:
    """E001 for a cache alias missing from ``CACHES``, E002 for one that is not Redis."""
    if alias is None:
        return None
    if alias not in settings.CACHES:
        return checks.Error(
            f"DISTINCT_COUNTER[{key!r}] names the cache {alias!r}, which is not in CACHES.",
            hint=f"Use one of: {', '.join(settings.CACHES)}; or add {alias!r} to CACHES.",
            id="distinct_counter.E001",
        )
    if not is_subclass_path(settings.CACHES[alias].get("BACKEND", ""), *REDIS_BACKENDS):
        return checks.Error(
            f"CACHES[{alias!r}] (DISTINCT_COUNTER[{key!r}]) is not a Redis cache.",
            hint="Use BACKEND 'django_redis.cache.RedisCache' with a redis:// LOCATION.",
            id="distinct_counter.E002",
        )
    return None


def check_models(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    app_labels = {a.label for a in app_configs} if app_configs else None
    for model in counted_models():
        if app_labels is None or model._meta.app_label in app_labels:
            errors += check_model(model)
    return errors


def check_model(model: type[models.Model]) -> list[checks.CheckMessage]:
    """The checks of one counted model."""
    fields = getattr(model, "counted_fields", ())
    if not isinstance(fields, (tuple, list)) or not all(isinstance(f, str) for f in fields):
        return [
            checks.Error(
                f"{model._meta.label}.counted_fields must be a tuple or list of field names, "
                f"not {fields!r}.",
                hint='For example: counted_fields = ("city", "username")',
                obj=model,
                id="distinct_counter.E003",
            )
        ]
    errors: list[checks.CheckMessage] = []
    for name in fields:
        errors += _field_errors(model, name)
    errors += _write_errors(model, fields)
    manager = model._default_manager
    if not isinstance(manager.get_queryset(), CountedQuerySet):
        errors.append(
            checks.Warning(
                f"{model._meta.label}'s default manager {manager.name!r} does not return a "
                "CountedQuerySet: its bulk_create/update/delete would not be counted.",
                hint="Base the manager on distinct_counter.api.CountedQuerySet, e.g. "
                "CountedManager or MyQuerySet(CountedQuerySet).as_manager().",
                obj=model,
                id="distinct_counter.W002",
            )
        )
    return errors


def _field_errors(model: type[models.Model], name: str) -> list[checks.CheckMessage]:
    """E004, E005, E030, E031 and W001 for one counted field."""
    label = model._meta.label
    try:
        field: Any = model._meta.get_field(name)
    except FieldDoesNotExist:
        return [
            checks.Error(
                f"{label}.counted_fields names {name!r}, which is not a field.",
                hint="Fields: " + ", ".join(f.name for f in model._meta.concrete_fields),
                obj=model,
                id="distinct_counter.E004",
            )
        ]
    if field.many_to_many or not getattr(field, "concrete", False):
        return [
            checks.Error(
                f"{label}.{name} cannot be counted: it is not a column of the model's table "
                "(many-to-many, reverse relation or generic).",
                hint="Count a concrete field; for a many-to-many, count a field of the "
                "through model.",
                obj=model,
                id="distinct_counter.E005",
            )
        ]
    column = storage(field)
    kind = column.get_internal_type()
    if kind not in EXACT_TYPES:
        return [
            checks.Error(
                f"{label}.{name} cannot be counted exactly: the database compares its "
                f"values ({kind}) otherwise than by one text per value.",
                hint="Count a column of a plain type that holds what makes two values the "
                "same (e.g. a GeneratedField or a field filled in save()).",
                obj=model,
                id="distinct_counter.E030",
            )
        ]
    collation = getattr(column, "db_collation", None)
    if collation and collation not in BYTEWISE_COLLATIONS:
        return [
            checks.Error(
                f"{label}.{name} cannot be counted exactly: its db_collation {collation!r} "
                "may compare texts that differ as equal (a nondeterministic collation makes "
                "'A' = 'a' in COUNT(DISTINCT)).",
                hint="Count a column without db_collation (or with "
                f"{', '.join(sorted(BYTEWISE_COLLATIONS))}), e.g. a GeneratedField "
                "holding the value folded the way the collation compares it.",
                obj=model,
                id="distinct_counter.E031",
            )
        ]
    if not has_index(model, field):
        return [
            checks.Warning(
                f"{label}.{name} is counted but has no database index; "
                "rebuilds and database fallbacks will scan the whole table.",
                hint="Add an index without locking writes: manage.py counted_indexes "
                f"{model._meta.app_label} writes a CreateIndexConcurrently migration.",
                obj=model,
                id="distinct_counter.W001",
            )
        ]
    return []


def _on_delete_name(field: Any) -> str:
    """The name of a foreign key's ``on_delete`` (``"DB_CASCADE"`` for Django 6.1's
    database-level actions, which are known here by name: older Djangos lack them)."""
    action = getattr(field.remote_field, "on_delete", None)
    return str(getattr(action, "__name__", "") or getattr(action, "name", "") or "")


def _write_errors(model: type[models.Model], counted: Any) -> list[checks.CheckMessage]:
    """E032 (a composite primary key) and E033 (a database-level ``on_delete``): writes
    that the counters cannot follow."""
    label = model._meta.label
    errors: list[checks.CheckMessage] = []
    composite = getattr(models, "CompositePrimaryKey", None)
    if composite is not None and isinstance(model._meta.pk, composite):
        errors.append(
            checks.Error(
                f"{label} has a composite primary key, which the counters cannot follow: "
                "they lock and read rows by a single-column primary key.",
                hint="Give the model a single-column primary key (e.g. the default id) and "
                "keep the composite key as a UniqueConstraint.",
                obj=model,
                id="distinct_counter.E032",
            )
        )
    for field in model._meta.concrete_fields:
        action = _on_delete_name(field) if field.is_relation else ""
        if action == "DB_CASCADE" or (
            action.startswith("DB_") and {field.name, field.attname} & set(counted)
        ):
            what = (
                "deletes rows of this model" if action == "DB_CASCADE" else f"rewrites {field.name}"
            )
            errors.append(
                checks.Error(
                    f"{label}.{field.name} has on_delete={action}: the database {what} "
                    "without a signal, so the counters would not see it.",
                    hint=f"Use on_delete={action.removeprefix('DB_')} (Django's collector "
                    "sends the signals the counters follow).",
                    obj=model,
                    id="distinct_counter.E033",
                )
            )
    return errors
