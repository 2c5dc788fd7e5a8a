"""The system checks of every master/replica cache in ``CACHES`` (E020-E029)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core import checks

from distinct_counter.cache.conf import OLD_BACKEND, ClientOptions, node_aliases
from distinct_counter.conf import is_subclass_path

REDIS_BACKEND = "django_redis.cache.RedisCache"


def check_master_replica_caches(
    app_configs: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """The checks of every ``CACHES`` entry with a ``MasterReplicaClient``, and E023 for
    entries still naming the backend it replaced."""
    errors: list[checks.CheckMessage] = []
    for alias, cfg in settings.CACHES.items():
        if cfg.get("BACKEND") == OLD_BACKEND:
            errors.append(
                _error(
                    alias,
                    f"BACKEND {OLD_BACKEND!r} was removed.",
                    "Use BACKEND 'django_redis.cache.RedisCache' with OPTIONS "
                    "{'CLIENT_CLASS': 'distinct_counter.cache.client.MasterReplicaClient'} "
                    "and LOCATION [master URL, replica URL]; see 'Migrating' in "
                    "docs/cache.rst.",
                    23,
                )
            )
    for alias in node_aliases():
        errors += check_master_replica_cache(alias)
    return errors


def check_master_replica_cache(alias: str) -> list[checks.CheckMessage]:
    """The checks of the master/replica cache ``CACHES[alias]``."""
    cfg: Mapping[str, Any] = settings.CACHES[alias]
    options = ClientOptions(alias)
    errors = options.errors()
    if not is_subclass_path(cfg.get("BACKEND", ""), REDIS_BACKEND):
        errors.append(
            _error(
                alias,
                "a MasterReplicaClient needs django-redis's backend.",
                f"Use BACKEND {REDIS_BACKEND!r}.",
                21,
            )
        )
    servers = _servers(cfg.get("LOCATION"))
    if len(servers) != 2:
        errors.append(
            _error(
                alias,
                f"LOCATION is {cfg.get('LOCATION')!r}; a MasterReplicaClient needs two URLs.",
                "List the master's URL first, then this node's replica's "
                "(with SENTINELS, the first names the Sentinel service: redis://mymaster/0).",
                20,
            )
        )
    elif servers[0] == servers[1]:
        errors.append(
            _error(
                alias,
                "LOCATION names the same server as master and replica.",
                "Give this node's replica's URL second.",
                22,
            )
        )
    journal = options.value_or("JOURNAL_FILE", None)
    if journal and not os.path.isdir(os.path.dirname(os.path.abspath(journal))):
        errors.append(
            _error(
                alias,
                f"the directory of OPTIONS['JOURNAL_FILE'] ({journal!r}) does not exist.",
                "Create it, or point JOURNAL_FILE at a file in an existing directory.",
                29,
            )
        )
    return errors


def _servers(location: Any) -> list[str]:
    """The URLs of a LOCATION, as django-redis reads it (a list, or a comma-separated text)."""
    if isinstance(location, str):
        return [s.strip() for s in location.split(",") if s.strip()]
    if isinstance(location, (list, tuple)):
        return [str(s) for s in location]
    return []


def _error(alias: str, msg: str, hint: str, n: int) -> checks.CheckMessage:
    return checks.Error(f"CACHES[{alias!r}]: {msg}", hint=hint, id=f"distinct_counter.E0{n}")
