"""The system checks of every MasterReplicaCache in ``CACHES`` (E020-E029)."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core import checks

from distinct_counter.cache.conf import CacheOptions, is_node, node_aliases
from distinct_counter.conf import is_subclass_path, unknown_keys

REDIS_BACKEND = "django_redis.cache.RedisCache"


def check_master_replica_caches(
    app_configs: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """The checks of every ``MasterReplicaCache`` in ``CACHES``."""
    errors: list[checks.CheckMessage] = []
    for alias in node_aliases():
        errors += check_master_replica_cache(alias)
    return errors


def check_master_replica_cache(alias: str) -> list[checks.CheckMessage]:
    """The checks of the MasterReplicaCache ``CACHES[alias]``."""
    options = CacheOptions(alias)
    errors = options.errors()
    redis_roles = {}
    for role in ("MASTER", "REPLICA", "LOCAL"):
        target = options.value_or(role, None)
        if not target:
            continue
        error = _role_error(alias, options, role, target)
        if error is not None:
            errors.append(error)
        elif role != "LOCAL":
            redis_roles[role] = settings.CACHES[target]
    if len(redis_roles) == 2:
        errors += _pair_errors(alias, redis_roles)
    unknown = unknown_keys(options.raw(), options.options())
    if unknown:
        errors.append(
            _error(
                alias,
                f"OPTIONS has unknown keys: {', '.join(unknown)}.",
                f"Known keys: {', '.join(options.options())}.",
                27,
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


def _error(alias: str, msg: str, hint: str, n: int) -> checks.CheckMessage:
    return checks.Error(f"CACHES[{alias!r}]: {msg}", hint=hint, id=f"distinct_counter.E0{n}")


def _role_error(
    alias: str, options: CacheOptions, role: str, target: str
) -> checks.CheckMessage | None:
    """E021 (not in CACHES), E022 (MASTER or REPLICA not django-redis), E023 (LOCAL not
    node-local)."""
    if target not in settings.CACHES:
        return _error(
            alias,
            f"OPTIONS[{role!r}] names the cache {target!r}, which is not in CACHES.",
            f"Use one of: {', '.join(settings.CACHES)}; or add {target!r} to CACHES.",
            21,
        )
    cfg = settings.CACHES[target]
    if role == "LOCAL":
        redis_aliases = (options.value_or("MASTER", None), options.value_or("REPLICA", None))
        if target in redis_aliases or is_node(cfg):
            return _error(
                alias,
                f"OPTIONS['LOCAL'] names {target!r}, which is not a node-local cache.",
                "LOCAL must be a writable cache of this node only, e.g. a "
                "django.core.cache.backends.locmem.LocMemCache; or omit it.",
                23,
            )
    elif is_node(cfg) or not is_subclass_path(cfg.get("BACKEND", ""), REDIS_BACKEND):
        return _error(
            alias,
            f"OPTIONS[{role!r}] names {target!r}, which is not a django-redis cache.",
            "Use BACKEND 'django_redis.cache.RedisCache' with a redis:// LOCATION.",
            22,
        )
    return None


def _pair_errors(alias: str, roles: dict[str, dict[str, Any]]) -> list[checks.CheckMessage]:
    """E026 (MASTER and REPLICA name keys differently), E028 (one hides its failures)."""
    errors = []
    differ = [
        k
        for k in ("KEY_PREFIX", "VERSION", "KEY_FUNCTION")
        if roles["MASTER"].get(k) != roles["REPLICA"].get(k)
    ]
    if differ:
        errors.append(
            _error(
                alias,
                f"its MASTER and REPLICA caches differ in {', '.join(differ)}, so reads "
                "would not find what writes stored.",
                "Give both caches the same KEY_PREFIX, VERSION and KEY_FUNCTION.",
                26,
            )
        )
    hiding = [r for r, cfg in roles.items() if cfg.get("OPTIONS", {}).get("IGNORE_EXCEPTIONS")]
    if hiding:
        errors.append(
            _error(
                alias,
                f"its {' and '.join(hiding)} cache sets IGNORE_EXCEPTIONS, which hides the "
                "failures that make it read from the master and journal writes.",
                "Remove IGNORE_EXCEPTIONS from those caches' OPTIONS.",
                28,
            )
        )
    return errors
