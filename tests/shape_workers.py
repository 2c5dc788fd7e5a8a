"""A writer process for the concurrency tests of every model shape (``tests.shapes``).

Run as ``python -m tests.shape_workers SEED OPS`` with the test session's environment (which
names its servers). Performs OPS random operations over a small pool of shared values and
rows, so processes contend for them: creates, saves and deletes through ``Place``, its proxy
and its multi-table children (a ``Place`` that is a ``Branch`` deleted as a ``Place`` too);
``update()`` with ``F()`` and ``Upper``; ``bulk_update`` with a pk given twice;
``Tag.objects.bulk_create`` ignoring or updating conflicts on a few slugs; ``Pet`` rows
pointing at a few ``Owner`` rows that are deleted (their pets rewritten by the delete
collector) and created again while pets are re-pointed; and transactions that roll back.

Prints ``done <ops> <failed>`` then one ``<error class> <count>`` line per kind of failure:
a failed operation is a database error (a deadlock, a foreign key violated by a concurrent
delete, ``ProtectedError``, a unique slug taken), whose transaction rolled back.
"""

from __future__ import annotations

import collections
import os
import random
import sys
from typing import Any

CITIES = ["paris", "oslo", "rome", "PARIS", "lyon", None, ""]
NAMES = ["a", "b", "c", "A"]
CODES = ["b1", "b2", "B1", "b3"]
SLUGS = [f"s{i}" for i in range(6)]
LABELS = ["red", "green", "blue", "RED"]
OWNERS = [f"o{i}" for i in range(5)]
#: The owner that ``SET(fallback_owner)`` moves pets to: created by the test, never deleted
#: here (``get_or_create`` by concurrent processes would make two).
FALLBACK = "fallback"


def main(seed: int, ops: int) -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from django.db import DatabaseError, models, transaction
    from django.db.models import F, Value
    from django.db.models.functions import Concat, Upper

    from tests.shapes.models import Branch, Kiosk, Owner, Pet, Place, PlaceProxy, Tag

    rnd = random.Random(seed)
    places: list[type[models.Model]] = [Place, PlaceProxy, Branch, Kiosk]

    def pick(model: type[models.Model], n: int = 1) -> list[Any]:
        """Up to ``n`` random rows of ``model`` (most recent ones more often): through
        ``Place`` and its proxy, a ``Branch``'s or a ``Kiosk``'s row at times."""
        rows = model._base_manager.all()
        pks = list(rows.order_by("-pk").values_list("pk", flat=True)[:40])
        if not pks:
            return []
        chosen = rnd.sample(pks, min(n, len(pks)))
        return list(model._base_manager.filter(pk__in=chosen))

    def owner() -> Any:
        """An owner of the pool (None at times), a fallback one now and then."""
        if rnd.random() < 0.15:
            return None
        name = FALLBACK if rnd.random() < 0.1 else rnd.choice(OWNERS)
        return Owner.objects.filter(name=name).order_by("?").first()

    def place_values(model: type[models.Model]) -> dict[str, Any]:
        values: dict[str, Any] = {"city": rnd.choice(CITIES), "name": rnd.choice(NAMES)}
        values["visits"] = rnd.randint(0, 3)
        if model is Branch:
            values["code"] = rnd.choice(CODES)
        if model is Kiosk:
            values["stall"] = rnd.randint(0, 2)
        return values

    repointed = ("owner", "carer", "walker", "groomer", "vet", "sitter")

    def pet_values(fks: tuple[str, ...] = repointed) -> dict[str, Any]:
        return {"name": rnd.choice(NAMES), **{f: owner() for f in fks if rnd.random() < 0.7}}

    # -- places ----------------------------------------------------------------------------

    def create_place() -> None:
        model = rnd.choice(places)
        if rnd.random() < 0.2 and model in (Place, PlaceProxy):  # not multi-table children
            model._default_manager.bulk_create(  # type: ignore[attr-defined]
                [model(**place_values(model)) for _ in range(3)]
            )
        else:
            model._default_manager.create(**place_values(model))  # type: ignore[attr-defined]

    def save_place() -> None:
        model = rnd.choice(places)
        for row in pick(model):
            for name, value in place_values(model).items():
                if rnd.random() < 0.6:
                    setattr(row, name, value)
            if rnd.random() < 0.2:
                row.visits = F("visits") + 1
            if rnd.random() < 0.2:
                row.save(update_fields=["city", "visits"])
            else:
                row.save()  # a row deleted meanwhile is inserted again

    def delete_place() -> None:
        model = rnd.choice(places)
        rows = pick(model, rnd.randint(1, 2))
        if rows and rnd.random() < 0.4:
            model._default_manager.filter(pk__in=[r.pk for r in rows]).delete()  # type: ignore[attr-defined]
        else:
            for row in rows:  # a Place may be a Branch or a Kiosk: they go with it
                row.delete()

    def update_places() -> None:
        model = rnd.choice(places)
        pks = [r.pk for r in pick(model, rnd.randint(1, 4))]
        qs = model._default_manager.filter(pk__in=pks)  # type: ignore[attr-defined]
        choice = rnd.random()
        if choice < 0.3:
            qs.update(visits=F("visits") + 1, city=Upper("city"))
        elif choice < 0.5:
            qs.update(name=Concat("name", Value("x")) if rnd.random() < 0.3 else Upper("name"))
        elif choice < 0.7 and model is Branch:
            qs.update(code=Upper("code"), city=rnd.choice(CITIES))
        else:
            qs.update(city=rnd.choice(CITIES), visits=rnd.randint(0, 3))

    def bulk_update_places() -> None:
        model = rnd.choice(places)
        rows = pick(model, rnd.randint(1, 4))
        if not rows:
            return
        twice = model._base_manager.filter(pk=rows[0].pk).first()
        if twice is not None:
            rows.append(twice)  # the same pk given twice: the first one wins
        fields = ["city", "name"] + (["code"] if model is Branch else [])
        for row in rows:
            for name, value in place_values(model).items():
                if name in fields:
                    setattr(row, name, value)
            if rnd.random() < 0.2:
                row.name = Upper("city")
        model._default_manager.bulk_update(  # type: ignore[attr-defined]
            rows, fields, batch_size=rnd.choice([None, 1, 2])
        )

    # -- tags -------------------------------------------------------------------------------

    def tags() -> list[Any]:
        slugs = rnd.sample(SLUGS + [None], rnd.randint(1, 3))
        return [Tag(label=rnd.choice(LABELS), slug=slug) for slug in slugs]

    def bulk_create_tags() -> None:
        if rnd.random() < 0.5:
            Tag.objects.bulk_create(tags(), ignore_conflicts=True)
        else:
            Tag.objects.bulk_create(
                tags(), update_conflicts=True, unique_fields=["slug"], update_fields=["label"]
            )

    def write_tag() -> None:
        choice = rnd.random()
        if choice < 0.25:
            Tag.objects.create(label=rnd.choice(LABELS), slug=rnd.choice(SLUGS + [None]))
        elif choice < 0.5:
            for tag in pick(Tag):
                tag.label = rnd.choice(LABELS)
                if rnd.random() < 0.5:
                    tag.slug = rnd.choice(SLUGS + [None])
                tag.save()
        elif choice < 0.65:
            Tag.objects.filter(slug__in=rnd.sample(SLUGS, 2)).update(label=Upper("label"))
        elif choice < 0.8:
            Tag.objects.filter(slug=rnd.choice(SLUGS)).update(slug=rnd.choice(SLUGS + [None]))
        else:
            for tag in pick(Tag):
                tag.delete()

    # -- pets and owners ---------------------------------------------------------------------

    def create_pet() -> None:
        Pet.objects.create(**pet_values())

    def repoint_pet() -> None:
        if rnd.random() < 0.3:
            pks = [p.pk for p in pick(Pet, 3)]
            field = rnd.choice(repointed)
            Pet.objects.filter(pk__in=pks).update(**{field: owner()})
            return
        for pet in pick(Pet):
            for name, value in pet_values(repointed).items():
                setattr(pet, name, value)
            pet.save()

    def delete_pet() -> None:
        rows = pick(Pet, rnd.randint(1, 2))
        if rows and rnd.random() < 0.4:
            Pet.objects.filter(pk__in=[p.pk for p in rows]).delete()
        else:
            for pet in rows:
                pet.delete()

    def churn_owner() -> None:
        name = rnd.choice(OWNERS)
        if rnd.random() < 0.5 or not Owner.objects.filter(name=name).exists():
            Owner.objects.create(name=name)
        elif rnd.random() < 0.7:
            doomed = Owner.objects.filter(name=name).order_by("?").first()
            if doomed is not None:
                doomed.delete()  # SET_NULL, SET_DEFAULT, SET(...) rewrite pets; CASCADE
        else:
            Owner.objects.filter(name=name).delete()

    def rolled_back() -> None:
        try:
            with transaction.atomic():
                for _ in range(rnd.randint(1, 3)):
                    rnd.choice(writes)()
                if rnd.random() < 0.5:
                    raise _Rollback
        except _Rollback:
            pass

    writes = [
        create_place,
        create_place,
        save_place,
        delete_place,
        update_places,
        bulk_update_places,
        bulk_create_tags,
        bulk_create_tags,
        write_tag,
        create_pet,
        create_pet,
        repoint_pet,
        repoint_pet,
        delete_pet,
        churn_owner,
    ]

    # SHAPE_WORKERS_ONLY=create_place,save_place,...: only those operations, to narrow down
    # a miscount (rolled_back, the transactions that roll back, is one of the names).
    only = os.environ.get("SHAPE_WORKERS_ONLY")
    if only:
        writes = [w for w in writes if w.__name__ in only.split(",")]
    done = 0
    failed: collections.Counter[str] = collections.Counter()
    while done < ops:
        try:
            if rnd.random() < 0.1 and (not only or "rolled_back" in only.split(",")):
                rolled_back()
            else:
                rnd.choice(writes)()
        except DatabaseError as exc:  # ProtectedError and IntegrityError included
            failed[type(exc).__name__] += 1
        except ValueError as exc:  # an F() in the save of a row deleted meanwhile: an insert
            if "can only be used to update" not in str(exc):
                raise
            failed["ExpressionInsert"] += 1
        done += 1
    print(f"done {done} {sum(failed.values())}", flush=True)
    for kind, n in sorted(failed.items()):
        print(f"{kind} {n}", flush=True)


class _Rollback(Exception):
    pass


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
