"""A pytest plugin the harness loads into each upstream run: it records every test's outcome,
and keeps one settings variant of django-redis's parametrized suite.

Standalone on purpose: it is copied into the run's directory and loaded with ``-p``, in a
pytest whose ``tests`` package is django-redis's own, where this project's ``tests`` cannot be
imported.

Environment:

``DC_UPSTREAM_OUTCOMES``
    the JSON file written at the end: ``{test id: outcome}``, the outcome one of ``passed``,
    ``failed``, ``skipped``, ``xfailed``. A test is failed when any of its phases (setup,
    call, teardown) or subtests failed. Each subtest is recorded too, under the test's id
    followed by its description (``... [msg] (operation='add')``), so a subtest that fails
    only on one run counts even when another subtest of the same test fails on both.
``DC_UPSTREAM_VARIANT`` / ``DC_UPSTREAM_UNPARAMETRIZED``
    keep only the tests whose ``cache_settings`` parameter is this variant, and (when
    ``DC_UPSTREAM_UNPARAMETRIZED`` is ``1``) the tests without that parameter: a Django
    settings module is loaded once per process, so each variant needs a pytest of its own.
``DC_UPSTREAM_RESTORE_CACHES``
    ``1``: after each test, put ``settings.CACHES`` back as the settings module defines it,
    if the test changed it in place. django-redis's ``test_client.py`` does: it clears a
    client's ``_options`` (the very ``OPTIONS`` dict of ``settings.CACHES``), and the next
    ``override_settings(CACHES=...)`` rebuilds every cache from what is left. Every later
    test of the process would run on a ``DefaultClient`` without the variant's serializer
    and compressor: not what it says it tests, and for the client under test, not that
    client at all (a ``DefaultClient`` that reads a lagging replica).
"""

from __future__ import annotations

import copy
import json
import os
import runpy
import sys
from collections.abc import Iterator
from typing import Any

import pytest

_RANK = {"passed": 0, "skipped": 1, "xfailed": 2, "failed": 3}
_outcomes: dict[str, str] = {}
_pristine: dict[str, Any] = {}


def _record(key: str, outcome: str) -> None:
    if _RANK[outcome] >= _RANK[_outcomes.get(key, "passed")]:
        _outcomes[key] = outcome


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    variant = os.environ.get("DC_UPSTREAM_VARIANT")
    if not variant:
        return
    unparametrized = os.environ.get("DC_UPSTREAM_UNPARAMETRIZED") == "1"
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("cache_settings") if callspec is not None else None
        (kept if (param == variant if param is not None else unparametrized) else dropped).append(
            item
        )
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_collectreport(report: Any) -> None:
    if report.failed:
        _record(f"{report.nodeid} (collection)", "failed")


def pytest_runtest_logreport(report: Any) -> None:
    if report.failed:
        outcome = "failed"
    elif report.skipped:
        outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped"
    elif report.when == "call" or report.nodeid not in _outcomes:
        outcome = "passed"
    else:
        return
    describe = getattr(report, "_sub_test_description", None)
    if getattr(report, "context", None) is not None and describe is not None:
        _outcomes[f"{report.nodeid} {describe()}"] = outcome
        if outcome == "failed":
            _record(report.nodeid, "failed")
        return
    _record(report.nodeid, outcome)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: Any) -> Iterator[None]:
    yield
    if os.environ.get("DC_UPSTREAM_RESTORE_CACHES") == "1":
        _restore_caches()


def _restore_caches() -> None:
    from django.conf import Settings, settings
    from django.test.signals import setting_changed

    # Only the settings module's own values: an override_settings still active is left alone.
    if not settings.configured or not isinstance(settings._wrapped, Settings):
        return
    if "CACHES" not in _pristine:
        module = sys.modules[settings.SETTINGS_MODULE]  # run anew from its file: fresh values
        _pristine["CACHES"] = runpy.run_path(str(module.__file__))["CACHES"]
    current = settings.CACHES
    if current != _pristine["CACHES"]:
        current.clear()
        current.update(copy.deepcopy(_pristine["CACHES"]))
        setting_changed.send(sender=Settings, setting="CACHES", value=current, enter=False)


def pytest_sessionfinish(session: Any) -> None:
    path = os.environ.get("DC_UPSTREAM_OUTCOMES")
    if path:
        with open(path, "w") as f:
            json.dump(_outcomes, f, indent=0, sort_keys=True)
