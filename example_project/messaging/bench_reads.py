"""What counting saves the reads, and what rebuilds cost, for ``manage.py bench``."""

from __future__ import annotations

import io
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.test.utils import override_settings

from distinct_counter.api import Counter, DistinctCount
from distinct_counter.connection import get_client
from distinct_counter.counting.conf import conf
from messaging.bench_figures import Figure, figure, ratio_of_medians
from messaging.bench_sql import DBA_QUERIES, group_by, scalar
from messaging.bench_writes import Op, interleaved, timed
from messaging.models import Message

#: ``get`` calls per sample when interleaved with SQL queries thousands of times longer.
GETS_PER_SAMPLE = 20


def get_vs_hlen(counters: Sequence[Counter], rounds: int) -> list[Figure]:
    """``DistinctCount.get`` against a bare round trip of one command reading a count, on
    the same read client: an ``HGET`` of the number of values the counter's header keeps
    (what an ``HLEN`` was when the values were one hash)."""
    client = get_client(conf.CACHE, write=False)
    figures = []
    for counter in counters:
        field, key = counter.field.name, counter.key("meta")
        ops = {
            "get": timed(lambda: DistinctCount.get(field, Message)),  # noqa: B023
            "hlen": timed(lambda: client.hget(key, "len")),  # noqa: B023
        }
        times = interleaved(ops, rounds, warmup=50)
        figures.append(
            ratio_of_medians(
                f"DistinctCount.get('{field}') / HGET",
                times["get"],
                times["hlen"],
                1.2,
                note=f"{rounds} of each, interleaved; the same key, the same read client",
            )
        )
    return figures


def _sql_op(sql: str) -> Op:
    return timed(lambda: scalar(sql))


def get_vs_sql(counters: Sequence[Counter], rounds: int) -> tuple[list[Figure], bool]:
    """``DistinctCount.get``'s speed-up on each of ``DBA_QUERIES``, timed interleaved (``get``
    by ``GETS_PER_SAMPLE`` calls a sample); and whether every query agreed with ``get``."""
    figures, exact = [], True
    for counter in counters:
        field = counter.field.name
        expected = DistinctCount.get(field, Message)
        ops = {
            "get": timed(
                lambda: [DistinctCount.get(field, Message) for _ in range(GETS_PER_SAMPLE)]  # noqa: B023
            )
        }
        for label, sql_of in DBA_QUERIES.items():
            exact = exact and scalar(sql_of(field)) == expected
            ops[label] = _sql_op(sql_of(field))
        times = interleaved(ops, rounds)
        get_s = statistics.median(times["get"]) / GETS_PER_SAMPLE
        for label in DBA_QUERIES:
            count_distinct = label == "COUNT(DISTINCT)"
            figures.append(
                figure(
                    f"DistinctCount.get('{field}') vs {label}",
                    "s",
                    get_s,
                    statistics.median(times[label]),
                    10_000 if count_distinct else None,
                    higher_is_better=True,
                    note=f"{expected} distinct; speed-up; median of {rounds} interleaved rounds",
                )
            )
    return figures, exact


def rebuild_counts() -> None:
    """What an operator runs: ``manage.py rebuild_counts`` of the example's two counters."""
    call_command("rebuild_counts", "messaging.Message", verbosity=0, stdout=io.StringIO())


def _one_at_a_time() -> float:
    with override_settings(
        DISTINCT_COUNTER={**settings.DISTINCT_COUNTER, "REBUILD_CONCURRENCY": 1}
    ):
        return timed(rebuild_counts)()


def rebuild_ratios(counters: Sequence[Counter], rounds: int) -> list[Figure]:
    """``rebuild_counts`` (at its settings: counters rebuilt ``REBUILD_CONCURRENCY`` at once;
    and one after the other) against the bare ``GROUP BY`` of the same columns, one after
    the other, read as a rebuild reads them."""
    batch = conf.REBUILD_BATCH_SIZE
    fields = [c.field.name for c in counters]
    ops = {
        "rebuild": timed(rebuild_counts),
        "one at a time": _one_at_a_time,
        "group by": timed(lambda: [group_by(field, batch) for field in fields]),
    }
    times = interleaved(ops, rounds)
    names = ", ".join(fields)
    note = f"median of {rounds} interleaved rounds; GROUP BY of each column, cursor of {batch}"
    return [
        ratio_of_medians(
            f"rebuild_counts ({names}) / GROUP BY",
            times["rebuild"],
            times["group by"],
            1.5,
            note=f"REBUILD_CONCURRENCY {conf.REBUILD_CONCURRENCY}, REBUILD_GRACE "
            f"{conf.REBUILD_GRACE}s (waits included); {note}",
        ),
        ratio_of_medians(
            f"rebuild_counts ({names}), REBUILD_CONCURRENCY 1 / GROUP BY",
            times["one at a time"],
            times["group by"],
            None,
            note=f"the same rebuild, one counter after the other; {note}",
        ),
    ]


def peak_memory(fn: Callable[[], Any]) -> int:
    """The peak of Python allocations (``tracemalloc``) while ``fn`` runs, in bytes."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def rebuild_memory(rows: int, scale: int, grow: Callable[[], None]) -> Figure:
    """The peak memory of ``rebuild_counts`` at ``rows`` rows, and again once ``grow`` made
    them ``scale`` times as many."""
    small = peak_memory(rebuild_counts)
    started = time.perf_counter()
    grow()
    return figure(
        f"rebuild peak memory, {rows * scale} vs {rows} rows",
        "B",
        peak_memory(rebuild_counts),
        small,
        1.5,
        note=f"tracemalloc peak of rebuild_counts; grown in {time.perf_counter() - started:.0f}s",
    )
