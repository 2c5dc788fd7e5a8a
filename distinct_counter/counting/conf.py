"""The counting keys of ``DISTINCT_COUNTER``, typed and validated (see
:mod:`distinct_counter.conf`)."""

from __future__ import annotations

from distinct_counter.conf import (
    Option,
    choice,
    non_negative_number,
    optional,
    positive_int,
    text,
)
from distinct_counter.connection import RedisSettings

_CACHE_HINT = "Use the alias of a django-redis cache in CACHES."
_SECONDS = "Use a number of seconds, 0 or more."

FALLBACK_CHOICES = ("database", "raise")
ON_ERROR_CHOICES = ("log", "raise")
SEND_CHOICES = ("wait", "background")


class CountingSettings(RedisSettings):
    """The counters' settings; ``conf.NAME`` is the validated value of ``DISTINCT_COUNTER[NAME]``
    or its default."""

    CACHE = Option("default", text, "distinct_counter.E001", _CACHE_HINT)
    WRITE_CACHE = Option(None, optional(text), "distinct_counter.E001", _CACHE_HINT)
    KEY_PREFIX = Option(
        "distinct_counter",
        text,
        "distinct_counter.E008",
        "Use a non-empty string, e.g. 'distinct_counter'.",
    )
    FALLBACK = Option(
        "database",
        choice(*FALLBACK_CHOICES),
        "distinct_counter.E007",
        "Use one of: 'database', 'raise'.",
    )
    DATABASE = Option(
        None,
        optional(text),
        "distinct_counter.E006",
        "Use the alias of a database in DATABASES, or None.",
    )
    ON_ERROR = Option(
        "log", choice(*ON_ERROR_CHOICES), "distinct_counter.E007", "Use one of: 'log', 'raise'."
    )
    SEND = Option(
        "wait",
        choice(*SEND_CHOICES),
        "distinct_counter.E007",
        "Use one of: 'wait', 'background'.",
    )
    REBUILD_BATCH_SIZE = Option(
        5000, positive_int, "distinct_counter.E008", "Use a positive integer, e.g. 5000."
    )
    REBUILD_CONCURRENCY = Option(
        2, positive_int, "distinct_counter.E008", "Use a positive integer, e.g. 2."
    )
    REBUILD_GRACE = Option(0.5, non_negative_number, "distinct_counter.E008", _SECONDS)
    REBUILD_SETTLE = Option(30.0, non_negative_number, "distinct_counter.E008", _SECONDS)

    @property
    def write_cache(self) -> str:
        """The cache alias counter writes go to: ``WRITE_CACHE``, else ``CACHE``."""
        return self.WRITE_CACHE or self.CACHE


conf = CountingSettings()
