"""Deltas held until their transaction commits, all of one transaction sent in one Redis
round trip (:class:`_Batch`); a rolled-back transaction or savepoint sends nothing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.db import connections, transaction

from distinct_counter.counting import deltas as _deltas
from distinct_counter.counting import stale
from distinct_counter.counting.deltas import Deltas
from distinct_counter.counting.registry import Counter

logger = logging.getLogger("distinct_counter")

#: counter -> why it must be marked stale.
Marks = dict[Counter, str]


class _Batch:
    """The deltas (and stale marks) of one transaction on one connection, sent once after it
    commits.

    The writes under one set of savepoints share a :class:`_Part`, registered with
    ``transaction.on_commit``, so Django itself drops the parts of a rolled-back savepoint
    (a part per write made a transaction of many writes quadratic: each new part was moved
    before the batch in Django's list of hooks). The batch is a commit hook with no savepoint
    of its own (it is never dropped), kept right after the parts: when it runs, every
    surviving part has already added its deltas to it.

    Our hooks run before any other app's: Django stops running a transaction's hooks at the
    first one that raises, and another app's failing hook must not lose a committed write.
    """

    def __init__(self) -> None:
        self.deltas: Deltas = {}
        self.marks: Marks = {}
        #: The transaction's id, once a write with deltas asked for it (:func:`record`).
        self.txid: str | None = None

    def __call__(self) -> None:
        deltas, self.deltas = self.deltas, {}
        marks, self.marks = self.marks, {}
        _send(deltas, marks, self.txid)


class _Part:
    def __init__(self, deltas: Deltas, marks: Marks) -> None:
        self.deltas = deltas
        self.marks = marks
        self.batch: _Batch | None = None

    def __call__(self) -> None:
        if self.batch is not None:
            _deltas.merge(self.batch.deltas, self.deltas)
            self.batch.marks.update(self.marks)


def _send(deltas: Deltas, marks: Marks, txid: str | None) -> None:
    for reason in dict.fromkeys(marks.values()):
        counters = [c for c, why in marks.items() if why == reason]
        logger.warning(
            "counters %s marked stale: %s; run manage.py rebuild_counts",
            ", ".join(c.label for c in counters),
            reason,
        )
        stale.mark(counters, reason)
    _deltas.send(deltas, txid)


def _on_commit(using: str, deltas: Deltas, marks: Marks, txid: str | None = None) -> None:
    conn = connections[using]
    if not conn.in_atomic_block:
        _send(deltas, marks, txid)
        return
    hooks: list[Any] = conn.run_on_commit  # Django's (savepoint ids, func, robust) entries
    at = _batch_at(hooks)
    if at is None:
        at = 0
        hooks.insert(0, (set(), _Batch(), False))
    batch: _Batch = hooks[at][1]
    if batch.txid is None and any(deltas.values()):
        batch.txid = txid or current_txid(conn)
    if at and isinstance(hooks[at - 1][1], _Part) and hooks[at - 1][0] == set(conn.savepoint_ids):
        # The previous write's part, under the same savepoints (so dropped with exactly the
        # same rollbacks): one part per savepoint, not per write, however many writes.
        last: _Part = hooks[at - 1][1]
        _deltas.merge(last.deltas, deltas)
        last.marks.update(marks)
        return
    part = _Part(deltas, marks)
    transaction.on_commit(part, using=using)  # tagged with the open savepoints
    hooks.insert(at, hooks.pop())
    part.batch = hooks[at + 1][1]


def txid_known(conn: Any) -> bool:
    """Whether the transaction open on ``conn`` already knows its id (an earlier write of it
    read it): a write need not ask for it again."""
    if not conn.in_atomic_block:
        return False
    at = _batch_at(conn.run_on_commit)
    return at is not None and conn.run_on_commit[at][1].txid is not None


def _batch_at(hooks: list[Any]) -> int | None:
    """Where the open transaction's :class:`_Batch` is in its commit hooks, if it has one."""
    return next((i for i, hook in enumerate(hooks) if isinstance(hook[1], _Batch)), None)


def current_txid(conn: Any) -> str | None:
    """The id of the transaction open on ``conn`` (PostgreSQL; None elsewhere): one query,
    for the writes whose own statement could not return it."""
    if conn.vendor != "postgresql":
        return None
    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_xact_id()::text")
        return str(cur.fetchone()[0])


def record(using: str, deltas: Deltas, txid: str | None = None) -> None:
    """Send ``deltas`` to Redis when the current transaction on ``using`` commits (at once
    outside a transaction), with the transaction's id: ``txid`` when the write's statement
    returned it (:mod:`~distinct_counter.counting.statements`), else read here, once per
    transaction (PostgreSQL)."""
    _on_commit(using, deltas, {}, txid)


def stale_on_commit(using: str, counters: Sequence[Counter], reason: str) -> None:
    """Mark counters stale once the current transaction commits (not if it rolls back), for
    a write whose effect on them cannot be known."""
    _on_commit(using, {}, dict.fromkeys(counters, reason))
