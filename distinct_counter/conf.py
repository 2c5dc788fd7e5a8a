"""The ``DISTINCT_COUNTER`` setting, read at call time so ``override_settings`` just works.

Every key is optional; ``conf.NAME`` returns the configured value or the default below.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

#: Defaults of every key of ``settings.DISTINCT_COUNTER``.
DEFAULTS: dict[str, Any] = {
    # Counting
    "CACHE": "default",
    "WRITE_CACHE": None,
    "KEY_PREFIX": "distinct_counter",
    "FALLBACK": "database",
    "DATABASE": None,
    "ON_ERROR": "log",
    "RETRY_INTERVAL": 5.0,
    "SOCKET_TIMEOUT": 0.5,
    "SOCKET_CONNECT_TIMEOUT": 0.5,
    "REBUILD_BATCH_SIZE": 5000,
    "REBUILD_GRACE": 0.5,
    "REBUILD_SETTLE": 30.0,
    # Database router
    "PRIMARY": "default",
    "REPLICAS": [],
    "PIN_SECONDS": 5.0,
    "PIN_COOKIE": "distinct_counter_pin",
    "PIN_COOKIE_SECURE": False,
    "PIN_COOKIE_HTTPONLY": True,
    "PIN_COOKIE_SAMESITE": "Lax",
    "REPLICA_RETRY_SECONDS": 5.0,
    "MAX_REPLICA_LAG": None,
    "LAG_CHECK_SECONDS": 2.0,
}

FALLBACK_CHOICES = ("database", "raise")
ON_ERROR_CHOICES = ("log", "raise")


def get(name: str) -> Any:
    """Return ``DISTINCT_COUNTER[name]``, or its default."""
    user: dict[str, Any] = getattr(settings, "DISTINCT_COUNTER", None) or {}
    return user.get(name, DEFAULTS[name])


class _Conf:
    """Attribute access to the setting: ``conf.CACHE``, ``conf.FALLBACK``..."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(name)
        return get(name)

    @property
    def write_cache(self) -> str:
        """The cache alias counter writes go to: ``WRITE_CACHE``, else ``CACHE``."""
        return str(get("WRITE_CACHE") or get("CACHE"))


conf = _Conf()
