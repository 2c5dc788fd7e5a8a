"""Deltas held until their transaction commits, all of one transaction sent in one Redis
round trip (:class:`_Batch`); a rolled-back transaction or savepoint sends nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
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
    def __init__(self) -> None:
        self.deltas: Deltas = {}
        self.marks: Marks = {}
        #: Whole rows written with their values known, tallied into :attr:`deltas` a
        #: thousand at a time and when the part is merged (one append a row till then).
        self.rows: Rows = {}
        self.batch: _Batch | None = None

    def __call__(self) -> None:
        if self.batch is not None:
            _deltas.merge(self.batch.deltas, _tallied(self.deltas, self.rows.values()))
            self.batch.marks.update(self.marks)
        self.deltas, self.rows = {}, {}  # a connection may hold the part a while (_part)


#: Rows of ``counters`` counted with ``sign``: (counters, sign, each row's values).
RowsOf = tuple[tuple[Counter, ...], int, list[Sequence[Any]]]
#: Keyed by (id of the counters, sign): a tuple's hash would call each ``Counter.__hash__``.
Rows = dict[tuple[int, int], RowsOf]

#: How many rows a part holds before it tallies them: its memory stays that of its deltas.
_TALLY_AT = 1000


def _tallied(deltas: Deltas, rows: Iterable[RowsOf]) -> Deltas:
    """``deltas`` with ``rows`` tallied in, a column at a time (``deltas.tally``)."""
    for counters, sign, values in rows:
        for i, counter in enumerate(counters):
            _deltas.tally(deltas, counter, [row[i] for row in values], sign)
    return deltas


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


def _part(conn: Any, has_deltas: bool, txid: str | None) -> _Part:
    """The part of the transaction open on ``conn`` that a write made now joins, made when
    none fits; its batch is given the transaction's id when the write changes a counter.

    The part last joined is kept on ``conn``, with the hook list and savepoints it was
    found under: Django replaces the list when a transaction ends or a savepoint rolls
    back, so while both are the same the part is still in the list, the right one for a
    write under the same savepoints (a transaction of many writes looks it up once). Kept
    until the connection's next counted write, a rolled-back transaction's last part holds
    its deltas (of at most a thousand rows more) till then."""
    hooks: list[Any] = conn.run_on_commit  # Django's (savepoint ids, func, robust) entries
    tail = conn.__dict__.get(_TAIL)
    if tail is not None and tail[0] is hooks and tail[1] == conn.savepoint_ids:
        part: _Part = tail[2]
    else:
        part = _find_part(conn, hooks)
        conn.__dict__[_TAIL] = (hooks, list(conn.savepoint_ids), part)
    batch = part.batch
    if batch is not None and batch.txid is None and has_deltas:
        batch.txid = txid or current_txid(conn)
    return part


#: What Django lists among the savepoints for an ``atomic(savepoint=False)`` block.
_NO_SAVEPOINT = frozenset({None})
#: Where a connection keeps the part its last write joined (:func:`_part`).
_TAIL = "_distinct_counter_tail"


def _find_part(conn: Any, hooks: list[Any]) -> _Part:
    at = _batch_at(hooks)
    if at is None:
        at = 0
        hooks.insert(0, (set(), _Batch(), False))
    if (
        at
        and isinstance(hooks[at - 1][1], _Part)
        and hooks[at - 1][0] - _NO_SAVEPOINT == set(conn.savepoint_ids) - _NO_SAVEPOINT
    ):
        # The previous write's part, under the same savepoints (so dropped with exactly the
        # same rollbacks): one part per savepoint, not per write, however many writes. An
        # atomic block without a savepoint (None) is no rollback of its own.
        part: _Part = hooks[at - 1][1]
        return part
    part = _Part()
    transaction.on_commit(part, using=conn.alias)  # tagged with the open savepoints
    hooks.insert(at, hooks.pop())
    part.batch = hooks[at + 1][1]
    return part


def _on_commit(using: str, deltas: Deltas, marks: Marks, txid: str | None = None) -> None:
    conn = connections[using]
    if not conn.in_atomic_block:
        _send(deltas, marks, txid)
        return
    part = _part(conn, any(deltas.values()), txid)
    _deltas.merge(part.deltas, deltas)
    part.marks.update(marks)


def record_rows(
    conn: Any,
    counters: tuple[Counter, ...],
    rows: list[Sequence[Any]],
    sign: int,
    txid: str | None = None,
) -> None:
    """Count ``rows`` (each the values of ``counters`` of one row) once each, with
    ``sign``, when the current transaction on ``conn`` (the connection they were written
    on, ``connections[alias]``) commits: as :func:`record` of their deltas, tallied in
    batches, so a transaction of many writes pays one append a row (``counters`` should
    be the same tuple for every row of a model)."""
    if not conn.in_atomic_block:
        _send(_tallied({}, [(counters, sign, rows)]), {}, txid)
        return
    part = _part(conn, bool(rows), txid)
    held = part.rows.setdefault((id(counters), sign), (counters, sign, []))
    held[2].extend(rows)
    if len(held[2]) >= _TALLY_AT:
        _tallied(part.deltas, [held])
        held[2].clear()


def txid_known(conn: Any) -> bool:
    """Whether the transaction open on ``conn`` already knows its id (an earlier write of it
    read it): a write need not ask for it again."""
    if not conn.in_atomic_block:
        return False
    tail = conn.__dict__.get(_TAIL)
    if tail is not None and tail[0] is conn.run_on_commit:
        batch = tail[2].batch  # the list is this transaction's: so is the part's batch
    else:
        at = _batch_at(conn.run_on_commit)
        batch = None if at is None else conn.run_on_commit[at][1]
    return batch is not None and batch.txid is not None


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
