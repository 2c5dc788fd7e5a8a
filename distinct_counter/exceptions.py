"""Exceptions raised by distinct_counter's public API."""

from __future__ import annotations


class DistinctCounterError(Exception):
    """Base class of every distinct_counter error."""


class NotCounted(DistinctCounterError, ValueError):
    """The field named is not counted, or the name is ambiguous between several models."""


class CounterUnavailable(DistinctCounterError):
    """Redis cannot answer for this counter and ``FALLBACK`` is ``"raise"``.

    ``state`` says why: ``"missing"`` (never built: run ``rebuild_counts``), ``"stale"``
    (writes were missed while Redis was unreachable: run ``rebuild_counts``), or
    ``"unreachable"`` (Redis itself failed; ``__cause__`` holds the error).
    """

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


class RebuildInProgress(DistinctCounterError):
    """Another ``rebuild_counts`` holds this counter's rebuild lock."""
