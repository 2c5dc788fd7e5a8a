"""A writer process for the concurrency tests: random writes to counted rows.

Run as ``python -m tests.workers SEED OPS [STOP_FILE]`` with the test session's environment
(which names its servers). Performs OPS random operations (or runs until STOP_FILE exists when
OPS is 0): creates, value changes, deletes, bulk and queryset operations, and transactions
that roll back, all over a small pool of shared values so processes contend for them.
Prints ``done <ops> <failed>``: a failed operation is a database error such as a deadlock,
whose transaction rolled back.
"""

from __future__ import annotations

import os
import random
import sys

CITIES = [f"city{i}" for i in range(int(os.environ.get("WORKERS_CITIES", 25)))] + [None, ""]
USERS = [f"user{i}" for i in range(60)]


def main(seed: int, ops: int, stop_file: str | None) -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from django.db import DatabaseError, transaction

    from tests.testapp.models import Message

    rnd = random.Random(seed)

    def some_row() -> Message | None:
        last = Message.objects.order_by("-pk").values_list("pk", flat=True).first()
        if last is None:
            return None
        return Message.objects.filter(pk__gte=rnd.randint(1, last)).order_by("pk").first()

    def one() -> None:
        kind = rnd.random()
        if kind < 0.35:
            Message.objects.create(username=rnd.choice(USERS), city=rnd.choice(CITIES))
        elif kind < 0.6:
            row = some_row()
            if row is not None:
                row.city = rnd.choice(CITIES)
                if rnd.random() < 0.5:
                    row.username = rnd.choice(USERS)
                row.save()
        elif kind < 0.75:
            row = some_row()
            if row is not None:
                row.delete()
        elif kind < 0.82:
            Message.objects.bulk_create(
                [Message(username=rnd.choice(USERS), city=rnd.choice(CITIES)) for _ in range(5)]
            )
        elif kind < 0.88:
            row = some_row()
            if row is not None:
                Message.objects.filter(pk__in=[row.pk, row.pk + 1]).update(city=rnd.choice(CITIES))
        elif kind < 0.92:
            row = some_row()
            if row is not None:
                Message.objects.filter(pk__in=[row.pk, row.pk + 2]).delete()
        else:
            try:
                with transaction.atomic():
                    for _ in range(rnd.randint(1, 4)):
                        Message.objects.create(username=rnd.choice(USERS), city=rnd.choice(CITIES))
                        row = some_row()
                        if row is not None:
                            row.city = rnd.choice(CITIES)
                            row.save()
                    if rnd.random() < 0.5:
                        raise _Rollback
            except _Rollback:
                pass

    done = failed = 0
    while (ops and done < ops) or (not ops and not (stop_file and os.path.exists(stop_file))):
        try:
            one()
        except DatabaseError:
            failed += 1
        done += 1
    print(f"done {done} {failed}", flush=True)


class _Rollback(Exception):
    pass


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
