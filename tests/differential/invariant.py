"""The differential test's start (empty tables, rebuilt counters) and its invariant: each
value's frequency in Redis, read through the public API, equals the database's ``GROUP BY``."""

from __future__ import annotations

import collections

from django.conf import settings
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import connection
from django.db.models import Count
from django.test import override_settings

from distinct_counter import DistinctCount
from distinct_counter import connection as redis_connection
from distinct_counter.api import Counter, counters
from distinct_counter.counting import stale
from tests.conftest import master
from tests.differential.vocabulary import APPS, TABLES


def fresh_start() -> None:
    """Empty tables (sequences restarted), empty Redis, counters rebuilt."""
    tables = sorted({m._meta.db_table for m in TABLES})
    sql = connection.ops.sql_flush(no_style(), tables, reset_sequences=True, allow_cascade=True)
    connection.ops.execute_sql_flush(sql)
    master().flushall()
    redis_connection.reset()
    stale.clear()
    # No writer runs during this rebuild of empty tables: it need not wait for late writes.
    with override_settings(DISTINCT_COUNTER={**settings.DISTINCT_COUNTER, "REBUILD_GRACE": 0}):
        call_command("rebuild_counts", *APPS, verbosity=0)


def in_database(counter: Counter) -> collections.Counter[str]:
    """How many rows hold each value, as the database groups them."""
    rows = (
        counter.model._base_manager.values(counter.attname)
        .annotate(n=Count("pk"))
        .order_by()
        .values_list(counter.attname, "n")
    )
    result: collections.Counter[str] = collections.Counter()
    for value, n in rows:
        text = counter.normalize(value)
        if text is not None:
            result[text] += n
    return result


def differences(counter: Counter) -> list[str]:
    """How Redis differs from the database for one counter (nothing: they agree)."""
    name, model = counter.field.name, counter.model
    read = DistinctCount.read(name, model)
    if (read.source, read.state) != ("redis", "ok"):
        return [f"{counter.label}: read from {read.source}, state {read.state!r}"]
    db = in_database(counter)
    found = []
    for text in sorted(set(db) | set(DistinctCount.members(name, model))):
        try:
            redis = DistinctCount.frequency(name, counter.denormalize(text), model)
        except Exception as exc:  # a member that is no value of the field at all
            found.append(f"{counter.label}: member {text!r} in Redis is no value ({exc!r})")
            continue
        if redis != db[text]:
            found.append(f"{counter.label}[{text!r}]: redis {redis}, database {db[text]}")
    if read.count != len(db):
        found.append(f"{counter.label}: count redis {read.count}, database {len(db)}")
    return found


def all_differences() -> list[str]:
    return [d for counter in counters(*APPS) for d in differences(counter)]
