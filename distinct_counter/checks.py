"""System checks: every misconfiguration gets an id and a hint.

=====================  =====================================================================
``distinct_counter.E001``  a cache alias in ``DISTINCT_COUNTER`` is not in ``CACHES``
``distinct_counter.E002``  that cache is not a Redis (django-redis) cache
``distinct_counter.E003``  ``counted_fields`` is not a tuple or list of field names
``distinct_counter.E004``  a counted field does not exist
``distinct_counter.E005``  a counted field is many-to-many or not a concrete column
``distinct_counter.E006``  a database alias in ``DISTINCT_COUNTER`` is not in ``DATABASES``
``distinct_counter.E007``  a setting has a value outside its choices
``distinct_counter.W001``  a counted field has no database index
``distinct_counter.W002``  a counted model's default manager does not count bulk operations
``distinct_counter.E020``  a MasterReplicaCache lacks ``OPTIONS`` ``MASTER`` or ``REPLICA``
``distinct_counter.E021``  its ``MASTER``, ``REPLICA`` or ``LOCAL`` is not in ``CACHES``
``distinct_counter.E022``  its ``MASTER`` or ``REPLICA`` is not a django-redis cache
``distinct_counter.E023``  its ``LOCAL`` is its MASTER, its REPLICA or a MasterReplicaCache
``distinct_counter.E024``  its ``REPLAY`` is not ``"delete"`` or ``"set"``
``distinct_counter.E025``  its ``LOCAL_TTL`` or ``RETRY_INTERVAL`` is not a positive number
``distinct_counter.E026``  its MASTER and REPLICA name keys differently
``distinct_counter.E027``  its ``OPTIONS`` has an unknown key
``distinct_counter.E028``  its MASTER or REPLICA hides failures (``IGNORE_EXCEPTIONS``)
``distinct_counter.E029``  the directory of its ``JOURNAL_FILE`` does not exist
``distinct_counter.E010``  ``REPLICAS`` is not a list of database aliases
``distinct_counter.E011``  ``PRIMARY`` is not a database alias (a non-empty string)
``distinct_counter.E012``  a replica is the primary, or is listed twice
``distinct_counter.E013``  ``PIN_SECONDS``, ``REPLICA_RETRY_SECONDS`` or ``LAG_CHECK_SECONDS``
                           is not a positive number
``distinct_counter.E014``  ``MAX_REPLICA_LAG`` is neither None nor a positive number
``distinct_counter.E015``  ``PIN_COOKIE_SAMESITE`` is not "Lax", "Strict", "None" or None
``distinct_counter.E016``  ``PIN_COOKIE_SAMESITE`` is "None" but ``PIN_COOKIE_SECURE`` is off
``distinct_counter.E017``  ``PIN_COOKIE`` is not a valid cookie name
``distinct_counter.E018``  ``MAX_REPLICA_LAG`` is set but a replica is not PostgreSQL
``distinct_counter.E019``  replicas or the pin middleware are configured, but no
                           ``PrimaryReplicaRouter`` is in ``DATABASE_ROUTERS``
=====================  =====================================================================
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.utils.module_loading import import_string

from distinct_counter.conf import FALLBACK_CHOICES, ON_ERROR_CHOICES, conf
from distinct_counter.indexes import has_index

REDIS_BACKENDS = ("django_redis.cache.RedisCache", "distinct_counter.cache.MasterReplicaCache")


def register() -> None:
    checks.register(check_settings, "distinct_counter")
    checks.register(check_master_replica_caches, checks.Tags.caches)
    checks.register(check_models, checks.Tags.models)
    checks.register(check_router, "distinct_counter")


def _is_redis_backend(path: str) -> bool:
    if path in REDIS_BACKENDS:
        return True
    try:
        backend = import_string(path)
    except ImportError:
        return False
    for base in REDIS_BACKENDS:
        try:
            if issubclass(backend, import_string(base)):
                return True
        except ImportError:
            continue
    return False


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    cache_names = {"CACHE": conf.CACHE, "WRITE_CACHE": conf.WRITE_CACHE}
    for key, alias in cache_names.items():
        if alias is None:
            continue
        if alias not in settings.CACHES:
            errors.append(checks.Error(
                f"DISTINCT_COUNTER[{key!r}] names the cache {alias!r}, which is not in CACHES.",
                hint=f"Use one of: {', '.join(settings.CACHES)}; or add {alias!r} to CACHES.",
                id="distinct_counter.E001",
            ))
        elif not _is_redis_backend(settings.CACHES[alias].get("BACKEND", "")):
            errors.append(checks.Error(
                f"CACHES[{alias!r}] (DISTINCT_COUNTER[{key!r}]) is not a Redis cache.",
                hint="Use BACKEND 'django_redis.cache.RedisCache' with a redis:// LOCATION.",
                id="distinct_counter.E002",
            ))
    databases = {"DATABASE": conf.DATABASE, "PRIMARY": conf.PRIMARY}
    replicas = conf.REPLICAS
    if isinstance(replicas, (list, tuple)):  # Anything else is distinct_counter.E010.
        databases.update({f"REPLICAS[{i}]": a for i, a in enumerate(replicas)})
    for key, alias in databases.items():
        if alias is not None and (not isinstance(alias, str) or alias not in settings.DATABASES):
            errors.append(checks.Error(
                f"DISTINCT_COUNTER[{key!r}] names the database {alias!r}, which is not in "
                "DATABASES.",
                hint=f"Use one of: {', '.join(settings.DATABASES)}.",
                id="distinct_counter.E006",
            ))
    for key, choices in (("FALLBACK", FALLBACK_CHOICES), ("ON_ERROR", ON_ERROR_CHOICES)):
        value = getattr(conf, key)
        if value not in choices:
            errors.append(checks.Error(
                f"DISTINCT_COUNTER[{key!r}] is {value!r}.",
                hint=f"Use one of: {', '.join(map(repr, choices))}.",
                id="distinct_counter.E007",
            ))
    return errors


def check_master_replica_caches(app_configs: Any = None,
                                **kwargs: Any) -> list[checks.CheckMessage]:
    """The checks of every ``distinct_counter.cache.MasterReplicaCache`` in ``CACHES``."""
    from distinct_counter.cache import node_aliases

    errors: list[checks.CheckMessage] = []
    for alias in node_aliases():
        errors += check_master_replica_cache(alias)
    return errors


def check_master_replica_cache(alias: str) -> list[checks.CheckMessage]:
    """The checks of the MasterReplicaCache ``CACHES[alias]``."""
    import os

    from distinct_counter.cache import OPTION_DEFAULTS, REPLAY_CHOICES, _is_node

    def error(msg: str, hint: str, n: int) -> None:
        errors.append(checks.Error(f"CACHES[{alias!r}]: {msg}", hint=hint,
                                   id=f"distinct_counter.E0{n}"))

    errors: list[checks.CheckMessage] = []
    options = settings.CACHES[alias].get("OPTIONS", {})
    for role in ("MASTER", "REPLICA"):
        if not options.get(role):
            error(f"OPTIONS has no {role!r}.", f"Set OPTIONS[{role!r}] to the alias of the "
                  f"django-redis cache of the {role.lower()}.", 20)
    redis_roles = {}
    for role in ("MASTER", "REPLICA", "LOCAL"):
        target = options.get(role)
        if not target:
            continue
        if target not in settings.CACHES:
            error(f"OPTIONS[{role!r}] names the cache {target!r}, which is not in CACHES.",
                  f"Use one of: {', '.join(settings.CACHES)}; or add {target!r} to CACHES.", 21)
            continue
        cfg = settings.CACHES[target]
        if role == "LOCAL":
            if target in (options.get("MASTER"), options.get("REPLICA")) or _is_node(cfg):
                error(f"OPTIONS['LOCAL'] names {target!r}, which is not a node-local cache.",
                      "LOCAL must be a writable cache of this node only, e.g. a "
                      "django.core.cache.backends.locmem.LocMemCache; or omit it.", 23)
        elif _is_node(cfg) or not _is_redis_backend(cfg.get("BACKEND", "")):
            error(f"OPTIONS[{role!r}] names {target!r}, which is not a django-redis cache.",
                  "Use BACKEND 'django_redis.cache.RedisCache' with a redis:// LOCATION.", 22)
        else:
            redis_roles[role] = cfg
    if options.get("REPLAY", "delete") not in REPLAY_CHOICES:
        error(f"OPTIONS['REPLAY'] is {options['REPLAY']!r}.",
              f"Use one of: {', '.join(map(repr, REPLAY_CHOICES))}.", 24)
    for key in ("LOCAL_TTL", "RETRY_INTERVAL"):
        value = options.get(key, OPTION_DEFAULTS[key])
        if value is None and key == "RETRY_INTERVAL":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            error(f"OPTIONS[{key!r}] is {value!r}.", "Use a positive number of seconds.", 25)
    if len(redis_roles) == 2:
        differ = [k for k in ("KEY_PREFIX", "VERSION", "KEY_FUNCTION")
                  if redis_roles["MASTER"].get(k) != redis_roles["REPLICA"].get(k)]
        if differ:
            error(f"its MASTER and REPLICA caches differ in {', '.join(differ)}, so reads "
                  "would not find what writes stored.",
                  "Give both caches the same KEY_PREFIX, VERSION and KEY_FUNCTION.", 26)
        hiding = [r for r, cfg in redis_roles.items()
                  if cfg.get("OPTIONS", {}).get("IGNORE_EXCEPTIONS")]
        if hiding:
            error(f"its {' and '.join(hiding)} cache sets IGNORE_EXCEPTIONS, which hides the "
                  "failures that make it read from the master and journal writes.",
                  "Remove IGNORE_EXCEPTIONS from those caches' OPTIONS.", 28)
    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        error(f"OPTIONS has unknown keys: {', '.join(unknown)}.",
              f"Known keys: {', '.join(OPTION_DEFAULTS)}.", 27)
    journal = options.get("JOURNAL_FILE")
    if journal and not os.path.isdir(os.path.dirname(os.path.abspath(journal))):
        error(f"the directory of OPTIONS['JOURNAL_FILE'] ({journal!r}) does not exist.",
              "Create it, or point JOURNAL_FILE at a file in an existing directory.", 29)
    return errors


def check_models(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from distinct_counter.registry import counted_models

    errors: list[checks.CheckMessage] = []
    app_labels = {a.label for a in app_configs} if app_configs else None
    for model in counted_models():
        if app_labels is None or model._meta.app_label in app_labels:
            errors += check_model(model)
    return errors


def check_model(model: type[models.Model]) -> list[checks.CheckMessage]:
    """The checks of one counted model."""
    from distinct_counter.models import CountedQuerySet

    errors: list[checks.CheckMessage] = []
    fields = getattr(model, "counted_fields", ())
    if not isinstance(fields, (tuple, list)) or not all(isinstance(f, str) for f in fields):
        errors.append(checks.Error(
            f"{model._meta.label}.counted_fields must be a tuple or list of field names, "
            f"not {fields!r}.",
            hint='For example: counted_fields = ("city", "username")',
            obj=model, id="distinct_counter.E003",
        ))
        return errors
    for name in fields:
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            errors.append(checks.Error(
                f"{model._meta.label}.counted_fields names {name!r}, which is not a field.",
                hint="Fields: " + ", ".join(f.name for f in model._meta.concrete_fields),
                obj=model, id="distinct_counter.E004",
            ))
            continue
        if field.many_to_many or not getattr(field, "concrete", False):
            errors.append(checks.Error(
                f"{model._meta.label}.{name} cannot be counted: it is not a column of the "
                "model's table (many-to-many, reverse relation or generic).",
                hint="Count a concrete field; for a many-to-many, count a field of the "
                     "through model.",
                obj=model, id="distinct_counter.E005",
            ))
            continue
        if not has_index(model, field):  # type: ignore[arg-type]
            errors.append(checks.Warning(
                f"{model._meta.label}.{name} is counted but has no database index; "
                "rebuilds and database fallbacks will scan the whole table.",
                hint="Add an index without locking writes: manage.py counted_indexes "
                     f"{model._meta.app_label} writes a CreateIndexConcurrently migration.",
                obj=model, id="distinct_counter.W001",
            ))
    manager = model._default_manager
    if not isinstance(manager.get_queryset(), CountedQuerySet):
        errors.append(checks.Warning(
            f"{model._meta.label}'s default manager {manager.name!r} does not return a "
            "CountedQuerySet: its bulk_create/update/delete would not be counted.",
            hint="Base the manager on distinct_counter.models.CountedQuerySet, e.g. "
                 "CountedManager or MyQuerySet(CountedQuerySet).as_manager().",
            obj=model, id="distinct_counter.W002",
        ))
    return errors


# --- Primary/replica database router (E010-E019) --------------------------------------------

ROUTER = "distinct_counter.routers.PrimaryReplicaRouter"
PIN_MIDDLEWARE = "distinct_counter.middleware.PinPrimaryMiddleware"
SAMESITE_CHOICES = ("lax", "strict", "none")
# RFC 6265 cookie-name: an RFC 2616 token.
_COOKIE_NAME = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"


def _is_positive_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0


def _router_installed() -> bool:
    for entry in getattr(settings, "DATABASE_ROUTERS", ()):
        if entry == ROUTER:
            return True
        try:
            router = import_string(entry) if isinstance(entry, str) else entry
            if not isinstance(router, type):
                router = type(router)
            if issubclass(router, import_string(ROUTER)):
                return True
        except ImportError:
            continue
    return False


def check_router(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The checks of the router's settings (``PRIMARY``, ``REPLICAS``, ``PIN_*``...).

    Aliases missing from ``DATABASES`` are ``distinct_counter.E006``. A router installed
    without replicas is fine: every read goes to the primary.
    """
    import re

    def error(msg: str, hint: str, n: int) -> None:
        errors.append(checks.Error(msg, hint=hint, id=f"distinct_counter.E0{n}"))

    errors: list[checks.CheckMessage] = []
    primary, replicas = conf.PRIMARY, conf.REPLICAS
    if not isinstance(primary, str) or not primary:
        error(f"DISTINCT_COUNTER['PRIMARY'] is {primary!r}.",
              "Use the alias in DATABASES of the primary database, e.g. 'default'.", 11)
    if replicas is None:
        replicas = []
    if not isinstance(replicas, (list, tuple)) or not all(
            isinstance(a, str) and a for a in replicas):
        error(f"DISTINCT_COUNTER['REPLICAS'] is {replicas!r}, not a list of database aliases.",
              'For example: "REPLICAS": ["replica1", "replica2"] (aliases in DATABASES); '
              "[] for none.", 10)
        replicas = []
    seen: set[str] = set()
    for alias in replicas:
        if alias == primary or alias in seen:
            error(f"DISTINCT_COUNTER['REPLICAS'] lists {alias!r} "
                  + ("which is the PRIMARY." if alias == primary else "twice."),
                  "List each replica once, and not the primary: reads already fall back to "
                  "the primary when no replica is usable.", 12)
        seen.add(alias)
    for key in ("PIN_SECONDS", "REPLICA_RETRY_SECONDS", "LAG_CHECK_SECONDS"):
        value = getattr(conf, key)
        if not _is_positive_number(value):
            error(f"DISTINCT_COUNTER[{key!r}] is {value!r}.", "Use a positive number of seconds.",
                  13)
    max_lag = conf.MAX_REPLICA_LAG
    if max_lag is not None and not _is_positive_number(max_lag):
        error(f"DISTINCT_COUNTER['MAX_REPLICA_LAG'] is {max_lag!r}.",
              "Use a positive number of seconds, or None to ignore replication lag.", 14)
    samesite = conf.PIN_COOKIE_SAMESITE
    if samesite not in (None, False) and (
            not isinstance(samesite, str) or samesite.lower() not in SAMESITE_CHOICES):
        error(f"DISTINCT_COUNTER['PIN_COOKIE_SAMESITE'] is {samesite!r}.",
              "Use 'Lax', 'Strict', 'None', or None to send no SameSite attribute.", 15)
    elif isinstance(samesite, str) and samesite.lower() == "none" and not conf.PIN_COOKIE_SECURE:
        error("DISTINCT_COUNTER['PIN_COOKIE_SAMESITE'] is 'None' but PIN_COOKIE_SECURE is "
              "off: browsers reject such a cookie, so clients would never be pinned.",
              "Set PIN_COOKIE_SECURE to True (HTTPS), or use 'Lax'.", 16)
    name = conf.PIN_COOKIE
    if not isinstance(name, str) or not re.fullmatch(_COOKIE_NAME, name):
        error(f"DISTINCT_COUNTER['PIN_COOKIE'] is {name!r}, not a valid cookie name.",
              "Use letters, digits and - _ . only, e.g. 'distinct_counter_pin'.", 17)
    if max_lag is not None:
        for alias in replicas:
            engine = settings.DATABASES.get(alias, {}).get("ENGINE", "")
            if alias in settings.DATABASES and "postgres" not in engine:
                error(f"DISTINCT_COUNTER['MAX_REPLICA_LAG'] is set but the replica {alias!r} "
                      f"is not PostgreSQL ({engine}): its lag cannot be measured.",
                      "Set MAX_REPLICA_LAG to None, or use PostgreSQL streaming replicas.", 18)
    uses_pin = PIN_MIDDLEWARE in (getattr(settings, "MIDDLEWARE", None) or ())
    if (replicas or uses_pin) and not _router_installed():
        error(("DISTINCT_COUNTER['REPLICAS'] is set" if replicas else f"{PIN_MIDDLEWARE} is "
               "in MIDDLEWARE") + " but DATABASE_ROUTERS has no PrimaryReplicaRouter, so no "
              "read goes to a replica.",
              f"Add {ROUTER!r} to DATABASE_ROUTERS.", 19)
    return errors
