"""The router's keys of ``DISTINCT_COUNTER``, typed and validated (see
:mod:`distinct_counter.conf`)."""

from __future__ import annotations

import re
from typing import Any

from distinct_counter.conf import (
    Option,
    Settings,
    aliases,
    boolean,
    optional,
    positive_number,
    text,
)

_SECONDS = "Use a positive number of seconds."
# RFC 6265 cookie-name: an RFC 2616 token.
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
SAMESITE_CHOICES = ("lax", "strict", "none")


def cookie_name(value: Any) -> str:
    if not isinstance(value, str) or not _COOKIE_NAME.fullmatch(value):
        raise ValueError("not a valid cookie name")
    return value


def samesite(value: Any) -> str | None:
    """A ``SameSite`` attribute (any case), or None (and False) for none."""
    if value is None or value is False:
        return None
    if not isinstance(value, str) or value.lower() not in SAMESITE_CHOICES:
        raise ValueError("not 'Lax', 'Strict', 'None' or None")
    return value


class RoutingSettings(Settings):
    """The router's settings; ``conf.NAME`` is the validated value of
    ``DISTINCT_COUNTER[NAME]`` or its default."""

    PRIMARY = Option(
        "default",
        text,
        "distinct_counter.E011",
        "Use the alias in DATABASES of the primary database, e.g. 'default'.",
    )
    REPLICAS = Option(
        [],
        aliases,
        "distinct_counter.E010",
        'For example: "REPLICAS": ["replica1", "replica2"] (aliases in DATABASES); [] for none.',
    )
    PIN_SECONDS = Option(5.0, positive_number, "distinct_counter.E013", _SECONDS)
    PIN_COOKIE = Option(
        "distinct_counter_pin",
        cookie_name,
        "distinct_counter.E017",
        "Use letters, digits and - _ . only, e.g. 'distinct_counter_pin'.",
    )
    PIN_COOKIE_SECURE = Option(False, boolean, "distinct_counter.E008", "Use True or False.")
    PIN_COOKIE_HTTPONLY = Option(True, boolean, "distinct_counter.E008", "Use True or False.")
    PIN_COOKIE_SAMESITE = Option(
        "Lax",
        samesite,
        "distinct_counter.E015",
        "Use 'Lax', 'Strict', 'None', or None to send no SameSite attribute.",
    )
    REPLICA_RETRY_SECONDS = Option(5.0, positive_number, "distinct_counter.E013", _SECONDS)
    MAX_REPLICA_LAG = Option(
        None,
        optional(positive_number),
        "distinct_counter.E014",
        "Use a positive number of seconds, or None to ignore replication lag.",
    )
    LAG_CHECK_SECONDS = Option(2.0, positive_number, "distinct_counter.E013", _SECONDS)

    # The router degrades rather than fails on a misconfiguration the checks report (E010,
    # E011): a query must not fail because a setting is wrong.

    def primary(self) -> str:
        """``PRIMARY``; ``"default"`` while it is invalid."""
        return str(self.value_or("PRIMARY", "default"))

    def replicas(self) -> list[str]:
        """The replicas reads may go to: never the primary; none while ``REPLICAS`` is invalid
        (reads then go to the primary)."""
        primary = self.primary()
        return [a for a in self.value_or("REPLICAS", []) if a != primary]


conf = RoutingSettings()
