"""Exact distinct counts of Django model fields, kept in Redis.

The public API (:mod:`distinct_counter.api`) is importable from here:
``from distinct_counter import DistinctCount, rebuild``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from distinct_counter.api import *  # noqa: F403

# The names of ``api.__all__`` (tests/test_layout.py keeps them equal), spelled out: looking
# ``api`` up to know them would import it on every attribute probe, and
# ``from distinct_counter import checks`` probes this module for ``checks`` first.
_API = frozenset(
    {
        "CountResult",
        "CountedManager",
        "CountedModel",
        "CountedQuerySet",
        "Counter",
        "CounterUnavailable",
        "DistinctCount",
        "DistinctCounterError",
        "Drift",
        "NotCounted",
        "RebuildInProgress",
        "RebuildResult",
        "check",
        "counters",
        "rebuild",
    }
)


def __getattr__(name: str) -> Any:
    # Imported lazily: the package is imported while Django loads its apps, before models.
    if name in _API:
        from distinct_counter import api

        return getattr(api, name)
    raise AttributeError(f"module 'distinct_counter' has no attribute {name!r}")
