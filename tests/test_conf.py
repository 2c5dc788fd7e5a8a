"""The typed settings: one validator per key, used by the code at call time and by the
system checks alike."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from distinct_counter.cache.conf import ClientOptions
from distinct_counter.checks import check_settings
from distinct_counter.counting.conf import CountingSettings, conf
from distinct_counter.routing.checks import check_router
from distinct_counter.routing.conf import RoutingSettings
from distinct_counter.routing.conf import conf as routing_conf

#: A wrong value for each key, and the check id it gets.
WRONG = {
    "CACHE": (5, "E001"),
    "WRITE_CACHE": ("", "E001"),
    "KEY_PREFIX": ("", "E008"),
    "FALLBACK": ("zero", "E007"),
    "DATABASE": (3, "E006"),
    "ON_ERROR": ("ignore", "E007"),
    "SEND": ("async", "E007"),
    "RETRY_INTERVAL": ("5", "E008"),
    "SOCKET_TIMEOUT": (0, "E008"),
    "SOCKET_CONNECT_TIMEOUT": (-1, "E008"),
    "REBUILD_BATCH_SIZE": (2.5, "E008"),
    "REBUILD_CONCURRENCY": (0, "E008"),
    "REBUILD_GRACE": (-1, "E008"),
    "REBUILD_SETTLE": (-1, "E008"),
    "PRIMARY": ("", "E011"),
    "REPLICAS": ("replica", "E010"),
    "PIN_SECONDS": (0, "E013"),
    "PIN_COOKIE": ("a b", "E017"),
    "PIN_COOKIE_SECURE": ("yes", "E008"),
    "PIN_COOKIE_HTTPONLY": (1, "E008"),
    "PIN_COOKIE_SAMESITE": ("lazy", "E015"),
    "REPLICA_RETRY_SECONDS": (True, "E013"),
    "MAX_REPLICA_LAG": (0, "E014"),
    "LAG_CHECK_SECONDS": (None, "E013"),
}


def test_every_key_has_a_wrong_value_here() -> None:
    assert set(WRONG) == {*CountingSettings.options(), *RoutingSettings.options()}


@pytest.mark.parametrize("key", sorted(WRONG))
def test_a_wrong_value_is_one_check_error_and_an_error_when_read(key: str) -> None:
    value, check_id = WRONG[key]
    with override_settings(DISTINCT_COUNTER={key: value}):
        errors = [*check_settings(), *check_router()]
        assert [e.id for e in errors] == [f"distinct_counter.{check_id}"]
        assert key in errors[0].msg and repr(value) in errors[0].msg and errors[0].hint
        settings_object = conf if key in CountingSettings.options() else routing_conf
        with pytest.raises(
            ImproperlyConfigured, match=f"'{key}'.*{re.escape(errors[0].hint[:20])}"
        ):
            getattr(settings_object, key)


def test_values_are_typed_and_read_at_call_time() -> None:
    assert conf.REBUILD_GRACE == 0.02  # tests/settings.py
    with override_settings(DISTINCT_COUNTER={"REBUILD_BATCH_SIZE": 7, "RETRY_INTERVAL": 2}):
        assert conf.REBUILD_BATCH_SIZE == 7
        assert conf.RETRY_INTERVAL == 2.0 and isinstance(conf.RETRY_INTERVAL, float)
        assert conf.REBUILD_GRACE == 0.5  # the default
    assert conf.write_cache == "default"
    with override_settings(DISTINCT_COUNTER={"CACHE": "replica1", "WRITE_CACHE": "default"}):
        assert (conf.CACHE, conf.write_cache) == ("replica1", "default")


def test_e009_unknown_key() -> None:
    with override_settings(DISTINCT_COUNTER={"REBUILD_BATCHSIZE": 10}):
        [error] = check_settings()
    assert error.id == "distinct_counter.E009" and "REBUILD_BATCHSIZE" in error.msg
    assert "REBUILD_BATCH_SIZE" in error.hint


def test_a_misconfigured_router_degrades_to_the_primary() -> None:
    with override_settings(DISTINCT_COUNTER={"PRIMARY": 5, "REPLICAS": "replica"}):
        assert routing_conf.primary() == "default" and routing_conf.replicas() == []


@pytest.mark.parametrize(
    "options,key",
    [({"READ_YOUR_WRITES": "soon"}, "READ_YOUR_WRITES"), ({"REPLAY": "merge"}, "REPLAY")],
)
def test_cache_options_are_validated_by_the_same_code(options: dict[str, Any], key: str) -> None:
    opts = ClientOptions(options=options)
    [error] = opts.errors()
    assert key in error.msg
    with pytest.raises(ImproperlyConfigured):
        getattr(opts, key)
    assert ClientOptions(options={}).READ_YOUR_WRITES == 5.0
