"""The write operations of the differential test: each one of Django's documented write APIs,
with the strategies its arguments are drawn from. ``OPS`` lists them; the state machine makes
a rule of each, and the transaction rules run several of them in a block."""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import django
from asgiref.sync import async_to_sync
from django.core.exceptions import MultipleObjectsReturned
from django.core.management import call_command
from django.db import models
from django.db.models import ProtectedError
from hypothesis import strategies as st

from tests.differential.vocabulary import (
    BULK_CREATABLE,
    COUNTED,
    FIELDS,
    OWNER_NAMES,
    TAG_IDS,
    assign,
    changes,
    concrete,
    field_names,
    filters,
    lookups,
    model_and,
    picks,
    row,
    values,
)
from tests.shapes.models import Owner, Pet, Place, Tag


@dataclass(frozen=True)
class Op:
    run: Callable[..., None]
    args: dict[str, st.SearchStrategy[Any]]
    nested: bool  # whether it may run inside the transaction rules' blocks


OPS: list[Op] = []


def op(nested: bool = True, **args: st.SearchStrategy[Any]) -> Callable[..., Any]:
    def register(fn: Callable[..., None]) -> Callable[..., None]:
        OPS.append(Op(fn, args, nested))
        return fn

    return register


models_ = st.sampled_from(COUNTED)


# Model.save() and Model.delete() ------------------------------------------------------------


@op(spec=model_and(COUNTED, values), force_insert=st.booleans())
def save_new(spec: Any, force_insert: bool) -> None:
    model, fields = spec
    obj = model()
    assign(obj, fields)
    obj.save(force_insert=force_insert)


@op(spec=model_and(COUNTED, changes, field_names), pick=picks, force_update=st.booleans())
def save(spec: Any, pick: int, force_update: bool) -> None:
    """A fetched row saved with plain values or an expression (``F("visits") + 1``,
    ``Upper("city")``, ``Case``...), with or without ``update_fields``."""
    model, fields, update_fields = spec
    obj = row(model, pick)
    if obj is None:
        return
    assign(obj, fields)
    if update_fields == "changed":
        update_fields = list(concrete(fields))
    obj.save(update_fields=update_fields, force_update=force_update)


@op(model=models_, pick=picks)
def delete(model: type[models.Model], pick: int) -> None:
    obj = row(model, pick)
    if obj is not None:
        obj.delete()


# The manager's shortcuts --------------------------------------------------------------------


@op(spec=model_and(COUNTED, values))
def create(spec: Any) -> None:
    model, fields = spec
    model.objects.create(**concrete(fields))


@op(spec=model_and(COUNTED, lookups, values))
def get_or_create(spec: Any) -> None:
    model, lookup, defaults = spec
    with suppress(MultipleObjectsReturned):
        model.objects.get_or_create(**concrete(lookup), defaults=concrete(defaults))


@op(spec=model_and(COUNTED, lookups, changes, values))
def update_or_create(spec: Any) -> None:
    """``defaults`` may hold an expression, which a create cannot insert: creates take
    ``create_defaults`` (Django 5.0; before, no expression is used)."""
    model, lookup, defaults, create_defaults = spec
    options = {"defaults": concrete(defaults)}
    if django.VERSION >= (5, 0):
        options["create_defaults"] = concrete(create_defaults)
    elif any(hasattr(v, "resolve_expression") for v in defaults.values()):
        options["defaults"] = concrete(create_defaults)
    with suppress(MultipleObjectsReturned):
        model.objects.update_or_create(**concrete(lookup), **options)


# QuerySet.update() and QuerySet.delete() ----------------------------------------------------


@op(spec=model_and(COUNTED, filters, changes), distinct=st.booleans())
def update(spec: Any, distinct: bool) -> None:
    """``filter(...).update()`` with values or an expression (F, Func, Case, Value, Coalesce),
    on a ``distinct()`` queryset too."""
    model, where, fields = spec
    queryset = model.objects.filter(**where)
    if distinct:
        queryset = queryset.distinct()
    if fields:
        queryset.update(**concrete(fields))


#: Filters across nullable relations (``carer__name__isnull`` takes a LEFT OUTER JOIN).
PET_RELATIONS = [
    {"carer__isnull": True},
    {"carer__name__isnull": True},
    {"carer__name": "o1"},
    {"owner__name__in": ["o2", "o3"]},
    {"walker__isnull": False},
    {"sitter__name": "fallback"},
]


@op(where=st.sampled_from(PET_RELATIONS), fields=changes(Pet), distinct=st.booleans())
def update_pets_across_relations(where: dict[str, Any], fields: Any, distinct: bool) -> None:
    queryset = Pet.objects.filter(**where)
    if distinct:
        queryset = queryset.distinct()
    if fields:
        queryset.update(**concrete(fields))


@op(spec=model_and(COUNTED, filters))
def delete_where(spec: Any) -> None:
    model, where = spec
    model.objects.filter(**where).delete()


@op(where=st.sampled_from(PET_RELATIONS))
def delete_pets_across_relations(where: dict[str, Any]) -> None:
    Pet.objects.filter(**where).delete()


# Bulk methods -------------------------------------------------------------------------------


def _conflicting(model: type[models.Model], objs: list[Any], onto: list[int | None]) -> None:
    """Give objects the pk of an existing row (a fixed id for tags), the last one winning."""
    for obj, pick in zip(objs, onto, strict=True):
        if pick is None:
            continue
        existing = row(model, pick)
        if model is Tag and pick % 2:
            obj.pk = TAG_IDS[pick % len(TAG_IDS)]
        elif existing is not None:
            obj.pk = existing.pk


@op(
    spec=model_and(BULK_CREATABLE, lambda m: st.lists(values(m), max_size=4)),
    onto=st.lists(st.one_of(st.none(), picks), min_size=4, max_size=4),
    conflicts=st.sampled_from([None, "ignore", "update"]),
    batch_size=st.sampled_from([None, 1, 2]),
)
def bulk_create(spec: Any, onto: list[int | None], conflicts: str | None, batch_size: Any) -> None:
    """``bulk_create``, with ``ignore_conflicts`` or ``update_conflicts`` on the pk (the only
    unique field the shared models have) of existing rows."""
    model, rows = spec
    objs = [model(**concrete(fields)) for fields in rows]
    options: dict[str, Any] = {"batch_size": batch_size}
    if conflicts:
        _conflicting(model, objs, onto[: len(objs)])
        # One statement may not update a row twice: keep the last object of each pk.
        objs = list({obj.pk if obj.pk is not None else id(obj): obj for obj in objs}.values())
        options["ignore_conflicts" if conflicts == "ignore" else "update_conflicts"] = True
    if conflicts == "update":
        options["unique_fields"] = [model._meta.pk.name]
        options["update_fields"] = sorted(FIELDS[model])
    model.objects.bulk_create(objs, **options)


def _as(kind: str, fields: list[str]) -> Iterable[str]:
    return {"list": fields, "tuple": tuple(fields), "set": set(fields)}.get(
        kind, (f for f in fields)
    )


@op(
    spec=model_and(
        COUNTED,
        lambda m: st.lists(st.tuples(picks, changes(m)), min_size=1, max_size=4),
        field_names,
    ),
    kind=st.sampled_from(["list", "tuple", "set", "generator"]),
    batch_size=st.sampled_from([None, 1, 2]),
)
def bulk_update(spec: Any, kind: str, batch_size: int | None) -> None:
    """``bulk_update`` of fetched rows (the same pk in several objects and batches), with
    values or expressions, its field names given as any iterable."""
    model, edits, fields = spec
    objs = []
    for pick, change in edits:
        obj = row(model, pick)
        if obj is None:
            return
        assign(obj, change)
        objs.append(obj)
    if fields == "changed" or fields is None:
        fields = sorted({name for _, change in edits for name in concrete(change)})
    if fields:
        model.objects.bulk_update(objs, _as(kind, fields), batch_size=batch_size)


@op(model=models_, chosen=st.lists(picks, max_size=3), one_by_one=st.booleans())
def in_bulk_delete(model: type[models.Model], chosen: list[int], one_by_one: bool) -> None:
    pks = [obj.pk for obj in (row(model, p) for p in chosen) if obj is not None]
    found = model.objects.in_bulk(pks)
    if one_by_one:
        for obj in found.values():
            obj.delete()
    else:
        model.objects.filter(pk__in=list(found)).delete()


# Owners: the delete collector's on_delete ---------------------------------------------------


@op(name=st.sampled_from(OWNER_NAMES))
def create_owner(name: str) -> None:
    Owner.objects.create(name=name)


def _pets() -> list[tuple[Any, ...]]:
    return list(Pet.objects.order_by("pk").values_list())


@op(pick=picks, by_name=st.booleans())
def delete_owner(pick: int, by_name: bool) -> None:
    """CASCADE, SET_NULL, SET_DEFAULT, SET(callable), DO_NOTHING; PROTECT raises and changes
    nothing."""
    owners = list(Owner.objects.exclude(name="fallback").order_by("pk"))
    if not owners:
        return
    owner = owners[pick % len(owners)]
    before = _pets()
    try:
        if by_name:
            Owner.objects.filter(name=owner.name).delete()
        else:
            owner.delete()
    except ProtectedError:
        assert _pets() == before


# Fixtures -----------------------------------------------------------------------------------


@op(
    tags=st.lists(st.tuples(st.one_of(st.sampled_from(TAG_IDS), picks), values(Tag)), max_size=3),
    places=st.lists(st.tuples(st.one_of(st.none(), picks), values(Place)), max_size=3),
)
def loaddata(tags: list[tuple[Any, Any]], places: list[tuple[Any, Any]]) -> None:
    """``loaddata`` of a JSON fixture over existing (and new) rows of Tag and Place."""
    fixture = []
    for ref, fields in tags:
        existing = row(Tag, ref) if isinstance(ref, int) else None
        pk = existing.pk if existing is not None else (ref if isinstance(ref, uuid.UUID) else None)
        fixture.append({"model": "shapes.tag", "pk": str(pk or TAG_IDS[0]), "fields": fields})
    for pick, fields in places:
        existing = row(Place, pick) if pick is not None else None
        entry = {"model": "shapes.place", "fields": fields}
        if existing is not None:
            entry["pk"] = existing.pk
        fixture.append(entry)
    if not fixture:
        return  # loaddata warns of an empty fixture
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fixture.json"
        path.write_text(json.dumps(fixture))
        call_command("loaddata", str(path), verbosity=0)


# Async variants -----------------------------------------------------------------------------


def wait(call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> None:
    """Await ``call`` from this thread's event loop (the ORM's sync parts run on this thread,
    on its connection). A manager's async methods are plain functions that return a
    coroutine, which ``async_to_sync`` does not take directly."""

    async def main() -> None:
        await call(*args, **kwargs)

    async_to_sync(main)()


@op(nested=False, spec=model_and(COUNTED, values))
def acreate(spec: Any) -> None:
    model, fields = spec
    wait(model.objects.acreate, **concrete(fields))


@op(nested=False, spec=model_and(COUNTED, changes), pick=picks)
def asave(spec: Any, pick: int) -> None:
    model, fields = spec
    obj = row(model, pick)
    if obj is not None:
        assign(obj, fields)
        wait(obj.asave)


@op(nested=False, model=models_, pick=picks)
def adelete(model: type[models.Model], pick: int) -> None:
    obj = row(model, pick)
    if obj is not None:
        wait(obj.adelete)


@op(nested=False, spec=model_and(COUNTED, filters, changes))
def aupdate(spec: Any) -> None:
    model, where, fields = spec
    if fields:
        wait(model.objects.filter(**where).aupdate, **concrete(fields))


@op(nested=False, spec=model_and(BULK_CREATABLE, lambda m: st.lists(values(m), max_size=3)))
def abulk_create(spec: Any) -> None:
    model, rows = spec
    wait(model.objects.abulk_create, [model(**concrete(fields)) for fields in rows])


@op(nested=False, spec=model_and(COUNTED, lookups, values))
def aget_or_create(spec: Any) -> None:
    model, lookup, defaults = spec
    with suppress(MultipleObjectsReturned):
        wait(model.objects.aget_or_create, **concrete(lookup), defaults=concrete(defaults))
