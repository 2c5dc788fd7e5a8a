"""Test settings: a PostgreSQL primary and streaming replica, a Redis master and replicas."""

from __future__ import annotations

import os

from tests import servers
from tests.settings_base import *  # noqa: F403

servers.ensure_started()

DATABASES = {
    "default": servers.database(os.environ[servers.PG]),
    "replica": servers.database(os.environ[servers.PG_REPLICA], TEST={"MIRROR": "default"}),
}
CACHES = {
    "default": servers.redis_cache(os.environ[servers.REDIS]),
    "replica1": servers.redis_cache(os.environ[servers.REDIS_REPLICAS].split(",")[0]),
    "replica2": servers.redis_cache(os.environ[servers.REDIS_REPLICAS].split(",")[-1]),
    "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}
DISTINCT_COUNTER = {"CACHE": "default", "RETRY_INTERVAL": 0.5, "REBUILD_GRACE": 0.02}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {"distinct_counter": {"handlers": ["null"], "propagate": True}},
}
