"""Test and demo helpers, kept apart from the library: no module of the library imports them.

``mirror_replicas`` (here) is for the test settings of projects that use the primary/replica
router; ``distinct_counter.testing.servers`` starts throwaway PostgreSQL and Redis servers for
the test suite and the example project's demo.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

__all__ = ["mirror_replicas"]


def mirror_replicas(
    databases: dict[str, dict[str, Any]], replicas: Iterable[str], primary: str = "default"
) -> dict[str, dict[str, Any]]:
    """A copy of ``databases`` in which every replica is a test mirror of the primary.

    Use it in test settings (it imports nothing from Django, so settings may call it)::

        DATABASES = mirror_replicas(DATABASES, DISTINCT_COUNTER["REPLICAS"])

    Django's test runner then creates no test database for the replicas (it could not: a
    replica is read-only) and points their aliases at the primary's test database, through
    connections of their own. What the router does with them:

    * ``TestCase`` wraps each test in a transaction on the primary, so the router sends every
      read to the primary (a transaction is open there): the replicas are never read.
    * ``TransactionTestCase`` (pytest-django ``transaction=True``): reads go to the mirror,
      which sees every committed row at once, like a replica with no lag.

    Limits: a mirror is the primary itself, so replication lag, a replica that is down and
    the lag check (a mirror is not in recovery: its lag is 0) are never exercised, and a
    missing read-your-writes guard (a read that should have gone to the primary) goes
    unnoticed. Test those against a real streaming replica. Tests must list the replica
    aliases in ``databases`` too, or Django refuses the queries routed to them.
    """
    result = copy.deepcopy(databases)
    for alias in replicas:
        if alias == primary:
            raise ValueError(f"{alias!r} is the primary, it cannot mirror itself")
        if alias not in result:
            raise KeyError(f"{alias!r} is not in DATABASES")
        result[alias].setdefault("TEST", {})["MIRROR"] = primary
    return result
