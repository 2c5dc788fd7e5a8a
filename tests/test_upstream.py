"""The upstream suites (django-redis's own tests, Django's ``BaseCacheTests``) on the
master/replica client over a replica that really lags: every test that passes on plain
django-redis passes, but for the exceptions listed with their reason (``tests/upstream``).

``DISTINCT_COUNTER_UPSTREAM_CLIENT`` names another client class to hold to the same standard
(``DISTINCT_COUNTER_UPSTREAM_OPTIONS``: a JSON object added to its ``OPTIONS``), e.g.::

    DISTINCT_COUNTER_UPSTREAM_CLIENT=django_redis.client.DefaultClient \\
        .venv/bin/pytest tests/test_upstream.py -k master_replica

which fails: plain django-redis reads from the replica what it has just written to the
master. The harness's own tests below show that on a few tests, in seconds.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.upstream import Selection, run_suites
from tests.upstream.compare import Comparison
from tests.upstream.exceptions import EXCEPTIONS
from tests.upstream.runs import PLAIN_CLIENT, candidate_client, candidate_options

DOCS = Path(__file__).parent.parent / "docs"


def importable(dotted: str) -> bool:
    module, _, name = dotted.rpartition(".")
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


@pytest.mark.slow
def test_upstream_suites_pass_on_the_master_replica_client(
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = candidate_client()
    if not importable(client):
        pytest.skip(f"{client} cannot be imported")
    comparisons = run_suites(client, candidate_options())
    report = "\n".join(c.summary() for c in comparisons)
    with capsys.disabled():
        print(f"\n{report}")
    assert all(c.ok for c in comparisons), report


def test_the_harness_fails_a_client_that_fails_only_on_the_second_run() -> None:
    """Plain django-redis given [master, lagging replica] reads the replica: a value just
    written is not there yet. The tests that read right after writing pass on the baseline
    and fail on the candidate; those that fail on both, or read nothing back, are not
    counted."""
    selection = Selection(
        variants=("sqlite", "sqlite_json"),
        django_redis="test_save_string or test_delete_return_value_type or test_hashring",
        django="test_simple or test_data_types or test_invalid_key_length or test_zero_cull",
    )
    redis_suite, django_suite = run_suites(PLAIN_CLIENT, selection=selection)

    backend = "tests/test_backend.py::TestDjangoRedisCache"
    assert redis_suite.baseline[f"{backend}::test_save_string[sqlite_json]"] == "passed"
    assert f"{backend}::test_save_string[sqlite]" in redis_suite.regressions
    assert f"{backend}::test_save_string[sqlite_json]" in redis_suite.regressions
    assert f"{backend}::test_delete_return_value_type[sqlite]" not in redis_suite.regressions
    hashring = [t for t in redis_suite.baseline if "test_hashring" in t]
    assert hashring and all(redis_suite.candidate[t] == "passed" for t in hashring)
    assert not any(t.endswith("[sqlite_gzip]") for t in redis_suite.baseline)

    base = "test_cache.py::BaseCacheTests"
    assert f"{base}::test_simple" in django_suite.regressions
    assert f"{base}::test_data_types (key='int')" in django_suite.regressions
    # Django's key warnings are memcached's: django-redis never gives them.
    assert f"{base}::test_invalid_key_length (operation='get')" in django_suite.baseline_failures
    assert not any("test_invalid_key_length" in t for t in django_suite.regressions)
    assert django_suite.baseline[f"{base}::test_zero_cull"] == "skipped"

    for comparison in (redis_suite, django_suite):
        assert not comparison.ok and not comparison.problems
        assert "pass on the baseline, not on the candidate" in comparison.summary()
        excused = excuse_all(comparison)
        assert excused.ok and excused.excused == comparison.regressions


def excuse_all(comparison: Comparison) -> Comparison:
    exceptions = {comparison.key(t): "stale reads" for t in comparison.regressions}
    exceptions[f"{comparison.suite}::tests/gone.py::test_renamed"] = "no longer there"
    return Comparison(**{**vars(comparison), "exceptions": exceptions})


def compare(baseline: dict[str, str], candidate: dict[str, str], **exceptions: str) -> Comparison:
    table = {f"django-redis::{k}": v for k, v in exceptions.items()}
    return Comparison("django-redis", "7.0", "plain", "ours", baseline, candidate, table)


def test_only_a_test_that_passed_on_the_baseline_counts() -> None:
    comparison = compare(
        {"a": "passed", "b": "failed", "c": "skipped", "d": "passed", "e": "passed"},
        {"a": "passed", "b": "failed", "c": "failed", "d": "skipped"},
    )
    # d skipped and e not run at all on the candidate: neither passed there.
    assert comparison.regressions == ["d", "e"]
    assert comparison.baseline_failures == ["b"]
    assert not comparison.ok


def test_an_excused_test_is_reported_not_counted() -> None:
    comparison = compare({"a": "passed", "b": "passed"}, {"a": "failed", "b": "passed"}, a="why")
    assert comparison.ok and comparison.excused == ["a"]
    stale = compare({"a": "passed"}, {"a": "passed"}, a="why")
    assert stale.ok and stale.stale_exceptions == ["a"]
    assert "listed exceptions that pass now: 1\n    django-redis::a" in stale.summary()


def test_a_run_that_tested_nothing_fails() -> None:
    assert compare({"a": "failed"}, {"a": "failed"}).problems
    assert compare({"a": "passed"}, {}).problems
    assert not compare({}, {"a": "passed"}).ok


def test_every_exception_is_documented_with_its_reason() -> None:
    text = (DOCS / "cache.rst").read_text()
    for key, reason in EXCEPTIONS.items():
        assert re.match(r"(django-redis|django)::\S", key), key
        assert reason.strip(), key
        assert f"``{key}``" in text, f"docs/cache.rst does not list {key}"
