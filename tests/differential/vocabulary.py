"""What the differential test writes: the models, few values per field (so writes keep meeting
each other's values), expressions per field, and how a drawn pick becomes a row or an owner."""

from __future__ import annotations

import uuid
from typing import Any

import django
from django.db import models
from django.db.models import Case, F, Func, Value, When
from django.db.models.functions import Coalesce, Concat, Left, Lower, Upper
from hypothesis import strategies as st

from tests.shapes.models import Branch, Kiosk, Owner, Pet, Place, PlaceProxy, Tag

PLACES: list[type[models.Model]] = [Place, PlaceProxy, Branch, Kiosk]
COUNTED: list[type[models.Model]] = [*PLACES, Tag, Pet]
#: ``bulk_create`` refuses multi-table children.
BULK_CREATABLE: list[type[models.Model]] = [Place, PlaceProxy, Tag, Pet]
if django.VERSION >= (5, 0):
    from tests.shapes5.models import Reading

    COUNTED.append(Reading)
    BULK_CREATABLE.append(Reading)

APPS = ("shapes", "shapes5") if django.VERSION >= (5, 0) else ("shapes",)
TABLES: list[type[models.Model]] = [Owner, *COUNTED]

#: A few fixed UUIDs, so fixtures, ``get_or_create`` and conflicts meet existing tags.
TAG_IDS = [uuid.UUID(int=i) for i in range(1, 5)]
OWNER_NAMES = ["o1", "o2", "o3"]  # never "fallback": SET(fallback_owner) must find one


cities = st.sampled_from(["Paris", "paris", "PARIS", "", "Zürich", "a:b", None])
names = st.sampled_from(["ann", "Ann", "bob", ""])
#: Foreign keys are drawn as an index into the owners there are at run time (None: no owner).
FKS = ("owner", "carer", "vet", "sitter", "walker", "groomer")
owner_picks = st.one_of(st.none(), st.integers(0, 6))
picks = st.integers(min_value=0, max_value=1_000)

_PLACE = {"city": cities, "name": names, "visits": st.sampled_from([-1, 0, 1, 2])}
FIELDS: dict[type[models.Model], dict[str, st.SearchStrategy[Any]]] = {
    Place: _PLACE,
    PlaceProxy: _PLACE,
    Branch: {**_PLACE, "code": st.sampled_from(["A", "a", ""])},
    Kiosk: {**_PLACE, "stall": st.integers(0, 2)},
    Tag: {"label": st.sampled_from(["x", "X", "y", ""])},
    Pet: {
        "name": names,
        **dict.fromkeys(FKS, owner_picks),
    },
}
if django.VERSION >= (5, 0):
    FIELDS[Reading] = {
        "raw": st.sampled_from(["Hi", "hi", "HI", "yo"]),
        "source": st.sampled_from(["sensor", "manual"]),  # left out: the db_default
    }

#: Expressions by field; each refers to its own table only (an UPDATE cannot join).
_PLACE_EXPRESSIONS = {
    "visits": [F("visits") + 1, F("visits") * -1, Value(2), Coalesce("visits", Value(0))],
    "city": [
        Upper("city"),
        Lower("city"),
        Concat(Left("city", 4), Value("!")),
        Value("Rome"),
        Case(When(visits__gt=0, then=Value("pos")), default=Value("neg")),
        Coalesce("city", Value("none")),
        Func(F("name"), function="UPPER"),
    ],
    "name": [Lower("name"), Concat(Left("name", 3), Value("?")), Coalesce("city", "name")],
}
EXPRESSIONS: dict[type[models.Model], dict[str, list[Any]]] = {
    Place: _PLACE_EXPRESSIONS,
    PlaceProxy: _PLACE_EXPRESSIONS,
    Branch: {**_PLACE_EXPRESSIONS, "code": [Upper("code"), Concat(Left("code", 3), Value("c"))]},
    Kiosk: _PLACE_EXPRESSIONS,
    Tag: {"label": [Upper("label"), Concat(Left("label", 3), Value("t"))]},
    Pet: {
        "name": [Upper("name"), Concat(Left("name", 3), Value("!"))],
        "carer_id": [F("owner_id"), Coalesce("carer_id", "sitter_id")],
        "groomer_id": [F("walker_id")],
    },
}
if django.VERSION >= (5, 0):
    EXPRESSIONS[Reading] = {
        "raw": [Upper("raw"), Concat(Left("raw", 3), Value("r"))],
        "source": [Upper("source"), Value("manual")],
    }


def values(model: type[models.Model]) -> st.SearchStrategy[dict[str, Any]]:
    """Some of the model's fields with values (those left out keep their default)."""
    return st.fixed_dictionaries({}, optional=FIELDS[model])


def model_and(models_: list[type[models.Model]], *parts: Any) -> st.SearchStrategy[tuple[Any, ...]]:
    """A model, then for each part (a function of the model giving a strategy) a value."""
    return st.sampled_from(models_).flatmap(
        lambda m: st.tuples(st.just(m), *(part(m) for part in parts))
    )


def expression(model: type[models.Model]) -> st.SearchStrategy[tuple[str, Any]]:
    """A field's attname and an expression to assign it."""
    return st.sampled_from(
        [(attname, e) for attname, exprs in EXPRESSIONS[model].items() for e in exprs]
    )


def filters(model: type[models.Model]) -> st.SearchStrategy[dict[str, Any]]:
    """A filter on one or no field (no field: every row)."""
    plain = {k: v for k, v in FIELDS[model].items() if k not in FKS}
    return st.one_of(
        st.just({}),
        st.sampled_from(sorted(plain)).flatmap(lambda k: plain[k].map(lambda v: {k: v})),
    )


def owner_pk(pick: int | None) -> int | None:
    if pick is None:
        return None
    pks = list(Owner.objects.order_by("pk").values_list("pk", flat=True))
    return pks[pick % len(pks)] if pks else None


def concrete(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with owner picks turned into ``<fk>_id`` values."""
    return {
        (f"{k}_id" if k in FKS else k): (owner_pk(v) if k in FKS else v) for k, v in fields.items()
    }


def row(model: type[models.Model], pick: int) -> Any:
    """The ``pick``-th row of ``model`` (modulo their number), or None without rows."""
    pks = list(model._base_manager.order_by("pk").values_list("pk", flat=True))
    return model._base_manager.get(pk=pks[pick % len(pks)]) if pks else None


def assign(obj: models.Model, fields: dict[str, Any]) -> None:
    for name, value in concrete(fields).items():
        setattr(obj, name, value)


def lookups(model: type[models.Model]) -> st.SearchStrategy[dict[str, Any]]:
    """What ``get_or_create``/``update_or_create`` look rows up by: some fields, or a tag's id
    (alone: with other fields too, a create could repeat an existing id)."""
    by_fields = st.fixed_dictionaries({}, optional=FIELDS[model])
    if model is Tag:
        return st.one_of(by_fields, st.sampled_from(TAG_IDS).map(lambda pk: {"id": pk}))
    return by_fields


def changes(model: type[models.Model]) -> st.SearchStrategy[dict[str, Any]]:
    """Plain values for some fields, or an expression for one."""
    return st.one_of(values(model), expression(model).map(lambda pair: dict([pair])))


def field_names(model: type[models.Model]) -> st.SearchStrategy[list[str] | str | None]:
    """``update_fields``: None, ``"changed"`` (those assigned) or a list of names."""
    return st.one_of(
        st.none(),
        st.just("changed"),
        st.lists(st.sampled_from(sorted(FIELDS[model])), unique=True),
    )
