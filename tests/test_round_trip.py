"""``connection.round_trip``: many commands, one connection, replies in order, errors kept
in their place, against the test session's Redis master."""

from __future__ import annotations

import pytest
import redis

from distinct_counter.connection import round_trip
from tests.conftest import master


@pytest.fixture
def client() -> redis.Redis:
    client = master()
    client.delete("rt:n", "rt:s")
    client.set("rt:s", "text")
    return client


def test_thousands_of_commands_answer_in_order(client: redis.Redis) -> None:
    # More than one slice of packed commands.
    replies = round_trip(client, *[("INCR", "rt:n") for _ in range(2500)])
    assert replies == list(range(1, 2501))
    assert client.get("rt:n") == b"2500"


def test_an_error_reply_is_returned_in_its_place_or_raised_after_all(
    client: redis.Redis,
) -> None:
    commands = [("INCR", "rt:n")] * 1200 + [("INCR", "rt:s")] + [("INCR", "rt:n")] * 1200
    replies = round_trip(client, *commands, raise_on_error=False)
    assert isinstance(replies[1200], redis.ResponseError)
    assert "not an integer" in str(replies[1200])
    assert replies[:1200] == list(range(1, 1201))
    assert replies[1201:] == list(range(1201, 2401))

    with pytest.raises(redis.ResponseError, match="not an integer"):
        round_trip(client, ("INCR", "rt:s"), ("INCR", "rt:n"))
    # Every reply was read: the command after the error ran, and the connection is clean.
    assert client.get("rt:n") == b"2401"
    assert round_trip(client, ("GET", "rt:n"), ("PING",)) == [b"2401", b"PONG"]


def test_a_script_error_keeps_its_class(client: redis.Redis) -> None:
    [reply] = round_trip(client, ("EVALSHA", "0" * 40, 0), raise_on_error=False)
    assert isinstance(reply, redis.exceptions.NoScriptError)
