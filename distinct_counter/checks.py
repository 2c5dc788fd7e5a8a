"""System checks: every misconfiguration gets an id and a hint. Each product keeps its own
checks beside its settings; this module registers them all.

=====================  =====================================================================
``distinct_counter.E001``  a cache alias in ``DISTINCT_COUNTER`` is not in ``CACHES``
``distinct_counter.E002``  that cache is not a Redis (django-redis) cache
``distinct_counter.E003``  ``counted_fields`` is not a tuple or list of field names
``distinct_counter.E004``  a counted field does not exist
``distinct_counter.E005``  a counted field is many-to-many or not a concrete column
``distinct_counter.E006``  a database alias in ``DISTINCT_COUNTER`` is not in ``DATABASES``
``distinct_counter.E007``  a setting has a value outside its choices
``distinct_counter.E008``  a setting has a value of the wrong type or range (a number of
                           seconds, a batch size, a prefix, a cookie flag)
``distinct_counter.E009``  ``DISTINCT_COUNTER`` has an unknown key (a typo)
``distinct_counter.W001``  a counted field has no database index
``distinct_counter.W002``  a counted model's default manager does not count bulk operations
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
``distinct_counter.E020``  a cache with a ``MasterReplicaClient`` does not list two URLs in
                           ``LOCATION``, or its ``SENTINELS`` is not a list of (host, port)
``distinct_counter.E021``  its ``BACKEND`` is not django-redis's ``RedisCache``
``distinct_counter.E022``  its ``LOCATION`` names the same server as master and replica
``distinct_counter.E023``  a cache still uses the removed ``MasterReplicaCache`` backend
``distinct_counter.E024``  its ``REPLAY`` is not ``"delete"`` or ``"set"``
``distinct_counter.E025``  its ``READ_YOUR_WRITES`` or ``RETRY_INTERVAL`` is not a positive
                           number
``distinct_counter.E026``  (retired: a master/replica cache is one cache, its keys named once)
``distinct_counter.E027``  (retired: ``OPTIONS`` also holds django-redis's own keys)
``distinct_counter.E028``  (retired: ``IGNORE_EXCEPTIONS`` now means what it means in
                           django-redis)
``distinct_counter.E029``  the directory of its ``JOURNAL_FILE`` does not exist
``distinct_counter.E030``  a counted field's type is not compared as one text per value
                           (``JSONField``, arrays, ranges, custom types)
``distinct_counter.E031``  a counted text field has a ``db_collation`` that may compare
                           different texts as equal
``distinct_counter.E032``  a counted model has a composite primary key
``distinct_counter.E033``  a foreign key of a counted model has a database-level
                           ``on_delete`` (``DB_CASCADE``; ``DB_SET_NULL`` or
                           ``DB_SET_DEFAULT`` on a counted foreign key)
``distinct_counter.E034``  ``SEND`` is ``"background"`` and ``ON_ERROR`` is ``"raise"``
=====================  =====================================================================
"""

from __future__ import annotations

from typing import Any

from django.core import checks

from distinct_counter.cache.checks import check_master_replica_caches
from distinct_counter.conf import unknown_keys
from distinct_counter.counting.checks import check_models
from distinct_counter.counting.checks import check_settings as check_counting_settings
from distinct_counter.counting.conf import CountingSettings
from distinct_counter.counting.conf import conf as counting_conf
from distinct_counter.routing.checks import check_router
from distinct_counter.routing.conf import RoutingSettings


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The counting keys of ``DISTINCT_COUNTER``, and no key unknown to every product."""
    errors = check_counting_settings()
    known = {*CountingSettings.options(), *RoutingSettings.options()}
    unknown = unknown_keys(counting_conf.raw(), known)
    if unknown:
        errors.append(
            checks.Error(
                f"DISTINCT_COUNTER has unknown keys: {', '.join(unknown)}.",
                hint=f"Known keys: {', '.join(sorted(known))}.",
                id="distinct_counter.E009",
            )
        )
    return errors


def register() -> None:
    checks.register(check_settings, "distinct_counter")
    checks.register(check_master_replica_caches, checks.Tags.caches)
    checks.register(check_models, checks.Tags.models)
    checks.register(check_router, "distinct_counter")
