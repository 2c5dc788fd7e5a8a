"""The upstream suites: django-redis's own tests and Django's ``BaseCacheTests``, run on plain
django-redis (the baseline) and on a client class under test over a replica that really lags
(the candidate), each test's outcome compared.

The verdict: every test that passes on the baseline passes on the candidate, but for those
listed in ``tests/upstream/exceptions.py`` (and docs/cache.rst) with their reason. Tests that
fail on the baseline are not counted: they test what django-redis does not do.

``run_suites`` runs both suites, both runs of each, a few pytests at a time; the entry test is
``tests/test_upstream.py``. Each pytest's log and outcomes are copied to
``.upstream/last-run/`` (next to the downloaded sdists) for a look after the run.

Modules: ``sdists`` (the suites, downloaded once), ``runs`` (servers, one pytest in a
subprocess), ``django_redis_suite`` and ``django_suite`` (each suite's copy and settings),
``outcomes_plugin`` (the pytest plugin recording outcomes), ``compare`` (the verdict).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distinct_counter.testing.lag import DEFAULT_DELAY
from distinct_counter.testing.servers import temp_root
from tests.upstream import django_redis_suite, django_suite, sdists
from tests.upstream.compare import Comparison
from tests.upstream.exceptions import EXCEPTIONS
from tests.upstream.runs import Job, Target, run_all, targets

SUITES = (django_redis_suite.NAME, django_suite.NAME)


@dataclass(frozen=True)
class Selection:
    """Which tests to run (all by default; a subset for the harness's own tests)."""

    suites: tuple[str, ...] = SUITES
    variants: tuple[str, ...] = django_redis_suite.VARIANTS
    django_redis: str | None = None  # a -k expression
    django: str | None = None


def _jobs(suite: str, target: Target, directory: Path, selection: Selection) -> list[Job]:
    if suite == django_redis_suite.NAME:
        return django_redis_suite.jobs(
            target, directory, selection.variants, selection.django_redis
        )
    return django_suite.jobs(target, directory, selection.django)


def _keep_logs(work: Path) -> None:
    kept = sdists.cache_dir() / "last-run"
    shutil.rmtree(kept, ignore_errors=True)
    for path in [*work.rglob("pytest-*.log"), *work.rglob("outcomes-*.json")]:
        dest = kept / path.relative_to(work)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)


def run_suites(
    client_class: str,
    options: dict[str, Any] | None = None,
    *,
    selection: Selection | None = None,
    delay: float = DEFAULT_DELAY,
    workers: int | None = None,
) -> list[Comparison]:
    """Run the selected suites on plain django-redis and on ``client_class``; compare."""
    selection = selection or Selection()
    for suite in selection.suites:  # downloaded before any server starts
        (django_redis_suite if suite == django_redis_suite.NAME else django_suite).source()
    work = temp_root("distinct_counter-upstream-runs-")
    try:
        with targets(client_class, options, delay) as (plain, candidate):
            plan: list[tuple[str, str, Job]] = []
            for suite in selection.suites:
                for side, target in (("baseline", plain), ("candidate", candidate)):
                    directory = work / suite / side
                    plan += [(suite, side, j) for j in _jobs(suite, target, directory, selection)]
            results = run_all([job for _, _, job in plan], workers)
    finally:
        _keep_logs(work)
        shutil.rmtree(work, ignore_errors=True)
    sides: dict[tuple[str, str], dict[str, str]] = {}
    for (suite, side, _), outcomes in zip(plan, results, strict=True):
        sides.setdefault((suite, side), {}).update(outcomes)
    comparisons = []
    for suite in selection.suites:
        comparisons.append(
            Comparison(
                suite,
                sdists.installed(suite),
                plain.name,
                f"{candidate.name} (replica {delay * 1000:.0f} ms behind)",
                sides.get((suite, "baseline"), {}),
                sides.get((suite, "candidate"), {}),
                EXCEPTIONS,
            )
        )
    return comparisons
