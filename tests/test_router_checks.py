"""Each system check id of the database router (distinct_counter.E010-E019)."""

from __future__ import annotations

import warnings
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from distinct_counter.checks import check_settings
from distinct_counter.routing.checks import check_router

ROUTER = "distinct_counter.routing.router.PrimaryReplicaRouter"
MIDDLEWARE = "distinct_counter.routing.middleware.PinPrimaryMiddleware"


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


@pytest.fixture
def routed(settings: Any) -> Any:
    settings.DATABASE_ROUTERS = [ROUTER]
    settings.DISTINCT_COUNTER = {"REPLICAS": ["replica"]}
    return settings


def test_router_with_replicas_passes_check(routed: Any) -> None:
    routed.MIDDLEWARE = [MIDDLEWARE]
    assert check_router() == []
    out = StringIO()
    call_command("check", stdout=out)
    assert "no issues" in out.getvalue()


def test_router_without_replicas_is_fine(settings: Any) -> None:
    settings.DATABASE_ROUTERS = [ROUTER]
    settings.DISTINCT_COUNTER = {"REPLICAS": []}
    assert check_router() == []


@pytest.mark.parametrize("value", ["replica", [""], ["replica", 3], {"replica": 1}])
def test_e010_replicas_not_a_list_of_aliases(routed: Any, value: Any) -> None:
    routed.DISTINCT_COUNTER = {"REPLICAS": value}
    [error] = check_router()
    assert error.id == "distinct_counter.E010"
    assert repr(value) in error.msg and '"REPLICAS": ["replica1"' in error.hint


@pytest.mark.parametrize("value", [5, "replica"])
def test_replicas_not_a_list_is_e010_alone(routed: Any, value: Any) -> None:
    routed.DISTINCT_COUNTER = {"REPLICAS": value}
    assert check_settings() == []  # no crash, no E006 per character
    assert ids(check_router()) == ["distinct_counter.E010"]


@pytest.mark.parametrize("value", [None, "", 0])
def test_e011_primary_not_an_alias(routed: Any, value: Any) -> None:
    routed.DISTINCT_COUNTER = {"PRIMARY": value}
    assert ids(check_router()) == ["distinct_counter.E011"]


def test_primary_or_replica_missing_from_databases_is_e006(routed: Any) -> None:
    routed.DISTINCT_COUNTER = {"PRIMARY": "main", "REPLICAS": ["replica", "replica9"]}
    assert check_settings() == []  # the router's own checks name them
    assert ids(check_router()) == ["distinct_counter.E006"] * 2


@pytest.mark.parametrize(
    "replicas,why", [(["default"], "PRIMARY"), (["replica", "replica"], "twice")]
)
def test_e012_replica_is_the_primary_or_listed_twice(
    routed: Any, replicas: list[str], why: str
) -> None:
    routed.DISTINCT_COUNTER = {"REPLICAS": replicas}
    [error] = check_router()
    assert error.id == "distinct_counter.E012" and why in error.msg


@pytest.mark.parametrize("key", ["PIN_SECONDS", "REPLICA_RETRY_SECONDS", "LAG_CHECK_SECONDS"])
@pytest.mark.parametrize("value", [0, -1, "5", True, None])
def test_e013_seconds_not_positive(routed: Any, key: str, value: Any) -> None:
    routed.DISTINCT_COUNTER = {"REPLICAS": ["replica"], key: value}
    [error] = check_router()
    assert error.id == "distinct_counter.E013" and key in error.msg


@pytest.mark.parametrize("value", [0, -2, "1", True])
def test_e014_max_replica_lag_not_positive(routed: Any, value: Any) -> None:
    routed.DISTINCT_COUNTER = {"REPLICAS": ["replica"], "MAX_REPLICA_LAG": value}
    assert ids(check_router()) == ["distinct_counter.E014"]


def test_max_replica_lag_positive_or_none_is_fine(routed: Any) -> None:
    for value in (None, 0.5, 3):
        routed.DISTINCT_COUNTER = {"REPLICAS": ["replica"], "MAX_REPLICA_LAG": value}
        assert check_router() == []


@pytest.mark.parametrize("value", ["lazy", "", 1])
def test_e015_samesite_invalid(routed: Any, value: Any) -> None:
    routed.DISTINCT_COUNTER = {"REPLICAS": ["replica"], "PIN_COOKIE_SAMESITE": value}
    [error] = check_router()
    assert error.id == "distinct_counter.E015" and "'Lax', 'Strict', 'None'" in error.hint


@pytest.mark.parametrize("value", ["Lax", "strict", None, False])
def test_samesite_valid(routed: Any, value: Any) -> None:
    routed.DISTINCT_COUNTER = {"REPLICAS": ["replica"], "PIN_COOKIE_SAMESITE": value}
    assert check_router() == []


def test_e016_samesite_none_needs_secure(routed: Any) -> None:
    routed.DISTINCT_COUNTER = {"REPLICAS": ["replica"], "PIN_COOKIE_SAMESITE": "None"}
    [error] = check_router()
    assert error.id == "distinct_counter.E016" and "PIN_COOKIE_SECURE" in error.hint
    routed.DISTINCT_COUNTER = {
        "REPLICAS": ["replica"],
        "PIN_COOKIE_SAMESITE": "None",
        "PIN_COOKIE_SECURE": True,
    }
    assert check_router() == []


@pytest.mark.parametrize("value", ["", "pin me", "pin;", None])
def test_e017_cookie_name_invalid(routed: Any, value: Any) -> None:
    routed.DISTINCT_COUNTER = {"REPLICAS": ["replica"], "PIN_COOKIE": value}
    assert ids(check_router()) == ["distinct_counter.E017"]


def test_e018_lag_on_a_replica_that_is_not_postgresql(routed: Any) -> None:
    with warnings.catch_warnings():  # Only the check reads it; no connection is made.
        warnings.simplefilter("ignore")
        routed.DATABASES = {
            **routed.DATABASES,
            "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        }
    routed.DISTINCT_COUNTER = {"REPLICAS": ["replica", "lite"], "MAX_REPLICA_LAG": 2}
    [error] = check_router()
    assert error.id == "distinct_counter.E018" and "'lite'" in error.msg
    routed.DISTINCT_COUNTER = {"REPLICAS": ["replica", "lite"]}
    assert check_router() == []


def test_e019_replicas_without_the_router(settings: Any) -> None:
    settings.DATABASE_ROUTERS = []
    settings.DISTINCT_COUNTER = {"REPLICAS": ["replica"]}
    [error] = check_router()
    assert error.id == "distinct_counter.E019" and ROUTER in error.hint


def test_e019_middleware_without_the_router(settings: Any) -> None:
    settings.DATABASE_ROUTERS = []
    settings.MIDDLEWARE = [MIDDLEWARE]
    assert ids(check_router()) == ["distinct_counter.E019"]


class SubRouter:
    pass


def test_a_subclass_of_the_router_counts(settings: Any) -> None:
    from distinct_counter.routing.router import PrimaryReplicaRouter

    settings.DATABASE_ROUTERS = [type("Mine", (PrimaryReplicaRouter,), {})()]
    settings.DISTINCT_COUNTER = {"REPLICAS": ["replica"]}
    assert check_router() == []
    settings.DATABASE_ROUTERS = ["tests.test_router_checks.SubRouter"]
    assert ids(check_router()) == ["distinct_counter.E019"]
