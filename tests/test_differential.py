"""Differential, stateful: random sequences of Django's documented write APIs over every model
shape, and after **every step** each counter's frequencies in Redis (read through the public
API, answered from Redis with state ``ok``) equal the database's own ``GROUP BY``.

The write paths (one rule each, see ``tests/differential/ops.py``): ``Model.save()`` new
(``force_insert``) and fetched rows, with plain values or expressions (F, Upper/Lower, Concat,
Value, Case/When, Coalesce, Func), with or without ``update_fields``, ``force_update``;
``Model.delete()``; ``create``, ``get_or_create``, ``update_or_create``; ``QuerySet.update()``
with values and expressions, on ``distinct()`` querysets and across nullable relations;
``QuerySet.delete()``; ``bulk_create`` (plain, ``ignore_conflicts``, ``update_conflicts`` on the
pk); ``bulk_update`` (any iterable of names, repeated pks, ``batch_size``); ``in_bulk`` and
delete; deleting owners (CASCADE, SET_NULL, SET_DEFAULT, SET(callable), PROTECT, DO_NOTHING);
``loaddata`` over existing rows; ``acreate``, ``asave``, ``adelete``, ``aupdate``,
``abulk_create``, ``aget_or_create``; and, below, blocks of those in ``transaction.atomic()``,
with writes before, in and after a savepoint, the savepoint or the whole block rolled back,
and with another app's raising ``on_commit`` hook. Each applies to a plain model, its proxy,
a multi-table parent and both children, a UUID pk, counted foreign keys, and a model with a
generated field and a database default.

Each example starts from empty tables and rebuilt counters. The CI profile runs in a few
minutes; a longer search is::

    DISTINCT_COUNTER_HYPOTHESIS=long pytest -p no:randomly tests/test_differential.py

(add ``--ds=tests.settings_sqlite`` for SQLite).
"""

from __future__ import annotations

import os
from contextlib import suppress
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import transaction
from django.test import override_settings
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.differential.invariant import all_differences, fresh_start
from tests.differential.ops import OPS, Op

_COMMON = {
    "deadline": None,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
}
settings.register_profile(
    "distinct_counter-ci", max_examples=30, stateful_step_count=20, derandomize=True, **_COMMON
)
settings.register_profile(
    "distinct_counter-long", max_examples=1000, stateful_step_count=50, **_COMMON
)
PROFILE = os.environ.get("DISTINCT_COUNTER_HYPOTHESIS", "ci")


class Rollback(Exception):
    pass


class HookFailed(Exception):
    """Raised by another app's ``on_commit`` hook."""


def _fail() -> None:
    raise HookFailed


steps = st.lists(
    st.one_of(
        [st.tuples(st.just(op.run), st.fixed_dictionaries(op.args)) for op in OPS if op.nested]
    ),
    min_size=1,
    max_size=6,
)


def _run(block: list[tuple[Any, dict[str, Any]]]) -> None:
    for run, kwargs in block:
        run(**kwargs)


class Writes(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        fresh_start()

    @rule(block=steps, rollback=st.sampled_from(["none", "savepoint", "all"]))
    def atomic(self, block: list[Any], rollback: str) -> None:
        """A block whose middle third runs in a savepoint, with writes before and after it;
        the savepoint or the whole block may roll back."""
        third = len(block) // 3
        with suppress(Rollback), transaction.atomic():
            _run(block[:third])
            with suppress(Rollback), transaction.atomic():
                _run(block[third : 2 * third])
                if rollback == "savepoint":
                    raise Rollback
            _run(block[2 * third :])
            if rollback == "all":
                raise Rollback

    @rule(block=steps, at=st.integers(0, 4))
    def raising_commit_hook(self, block: list[Any], at: int) -> None:
        """Another app's ``on_commit`` hook raises, registered before, among or after the
        writes: the transaction commits all the same."""
        with suppress(HookFailed), transaction.atomic():
            for i, step in enumerate(block):
                if i == at:
                    transaction.on_commit(_fail)
                _run([step])
            if at >= len(block):
                transaction.on_commit(_fail)

    @invariant()
    def counters_equal_the_database(self) -> None:
        found = all_differences()
        assert not found, "\n".join(found)


def _rule(op: Op) -> Any:
    def step(self: Writes, **kwargs: Any) -> None:
        op.run(**kwargs)

    step.__name__ = step.__qualname__ = op.run.__name__
    step.__doc__ = op.run.__doc__
    return rule(**op.args)(step)


for _op in OPS:
    setattr(Writes, _op.run.__name__, _rule(_op))


@pytest.mark.django_db(transaction=True)
def test_counters_equal_the_database_after_every_write() -> None:
    run_state_machine_as_test(Writes, settings=settings.get_profile(f"distinct_counter-{PROFILE}"))


@pytest.mark.django_db(transaction=True)
def test_counters_equal_the_database_with_background_sending() -> None:
    """The same, with ``SEND = "background"``: every transaction's deltas go through the
    sender thread (the invariant's reads wait for it), async writes' from their own threads."""
    with override_settings(
        DISTINCT_COUNTER={**django_settings.DISTINCT_COUNTER, "SEND": "background"}
    ):
        profile = settings.get_profile(f"distinct_counter-{PROFILE}")
        run_state_machine_as_test(Writes, settings=settings(profile, max_examples=15))
