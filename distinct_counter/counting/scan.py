"""``SELECT field, COUNT(*) ... GROUP BY field``, streamed from the database: what rebuilds
and drift checks compare Redis with."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db import connections, models
from django.db.models import Count
from django.db.models.sql.constants import MULTI

from distinct_counter.counting.registry import Counter
from distinct_counter.counting.values import text_as_is


def grouped_chunks(
    counter: Counter,
    using: str | models.QuerySet[Any],
    chunk_size: int = 5000,
    values: list[str] | None = None,
) -> Iterator[dict[str, int]]:
    """``SELECT field, COUNT(*) ... GROUP BY field`` streamed (server-side cursor), normalized,
    in chunks of up to ``chunk_size`` values: ``{normalized value: rows}``.

    ``using`` is a database alias (all rows) or a queryset of the rows to count; ``values``
    restricts the count to those normalized values. Values that normalize alike (rare, e.g.
    datetimes with different offsets) are added up within a chunk. A text column whose
    values need no conversion (the common case) is taken as the database sent it, without
    a Python call per value: a rebuild of millions of values costs little more than its query.
    """
    if isinstance(using, str):
        qs = counter.model._base_manager.using(using).order_by()
    else:
        qs = using.order_by()
    if values is not None:
        qs = qs.filter(**{f"{counter.attname}__in": [counter.denormalize(v) for v in values]})
    else:
        qs = qs.filter(**{f"{counter.attname}__isnull": False})
    query = qs.values_list(counter.column).annotate(n=Count("*")).query
    compiler = query.get_compiler(using=qs.db)
    chunks = compiler.execute_sql(
        MULTI,
        chunked_fetch=not connections[qs.db].settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"),
        chunk_size=chunk_size,
    )
    converters = None
    for chunk in chunks:
        if converters is None:  # Known once the query ran.
            converters = compiler.get_converters([compiler.select[0][0]])
            as_is = not converters and text_as_is(counter.field)
        if as_is:
            yield dict(chunk)  # GROUP BY: every value once, never NULL
            continue
        merged: dict[str, int] = {}
        for row in compiler.apply_converters(chunk, converters) if converters else chunk:
            text = counter.normalize(row[0])
            if text is not None:
                merged[text] = merged.get(text, 0) + int(row[1])
        yield merged


def grouped_counts(
    counter: Counter,
    using: str | models.QuerySet[Any],
    chunk_size: int = 5000,
    values: list[str] | None = None,
) -> Iterator[tuple[str, int]]:
    """:func:`grouped_chunks`, one ``(value, rows)`` at a time."""
    for chunk in grouped_chunks(counter, using, chunk_size, values):
        yield from chunk.items()
