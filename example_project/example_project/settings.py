"""Settings of the example project.

With no environment, everything is embedded: SQLite and a Redis server from the ``example``
extra, in ``DEMO_DATA_DIR`` (default ``example_project/.data``). The environment switches to
the full topology:

``DATABASE_URL``
    the PostgreSQL primary (``postgresql://user:pass@host:port/db``);
``REPLICA_URLS``
    its streaming replicas, comma-separated: reads go there through
    ``distinct_counter.routing.router.PrimaryReplicaRouter``, with read-your-writes pinning;
``REDIS_MASTER_URL``
    the Redis master;
``REDIS_REPLICA_URL``
    this node's Redis replica: the cache gets the ``MasterReplicaClient`` (reads here, writes
    to the master) and counters follow it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url

from example_project.services import redis_master_url

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", BASE_DIR / ".data"))
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "distinct_counter",
    "messaging",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# -- databases ---------------------------------------------------------------------------------

DATABASES: dict[str, Any] = {
    "default": (
        dj_database_url.parse(os.environ["DATABASE_URL"])
        if os.environ.get("DATABASE_URL")
        else {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "db.sqlite3"),
            "OPTIONS": {"timeout": 20},
        }
    ),
}
DISTINCT_COUNTER: dict[str, Any] = {"CACHE": "default"}

_replicas = [u for u in os.environ.get("REPLICA_URLS", "").split(",") if u]
if _replicas:
    for _i, _url in enumerate(_replicas, 1):
        DATABASES[f"replica{_i}"] = {**dj_database_url.parse(_url), "TEST": {"MIRROR": "default"}}
    DATABASE_ROUTERS = ["distinct_counter.routing.router.PrimaryReplicaRouter"]
    DISTINCT_COUNTER["REPLICAS"] = [f"replica{_i}" for _i in range(1, len(_replicas) + 1)]
    MIDDLEWARE.append("distinct_counter.routing.middleware.PinPrimaryMiddleware")

# -- caches ------------------------------------------------------------------------------------


def _redis(url: str) -> dict[str, Any]:
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": url,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
    }


_master = redis_master_url(DATA_DIR)
if os.environ.get("REDIS_REPLICA_URL"):
    _node = _redis(_master)
    _node["LOCATION"] = [_master, os.environ["REDIS_REPLICA_URL"]]
    _node["OPTIONS"]["CLIENT_CLASS"] = "distinct_counter.cache.client.MasterReplicaClient"
    # The counters' writes through a plain client of the master: its own circuit breaker.
    CACHES = {"default": _node, "master": _redis(_master)}
    DISTINCT_COUNTER["WRITE_CACHE"] = "master"
else:
    CACHES = {"default": _redis(_master)}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"distinct_counter": {"handlers": ["console"], "level": "WARNING"}},
}
