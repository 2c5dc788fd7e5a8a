"""Exact distinct counts of Django model fields, kept in Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["DistinctCount"]

if TYPE_CHECKING:
    from distinct_counter.counting import DistinctCount


def __getattr__(name: str) -> Any:
    # Imported lazily: the package is imported while Django loads its apps, before models.
    if name == "DistinctCount":
        from distinct_counter.counting import DistinctCount

        return DistinctCount
    raise AttributeError(name)
