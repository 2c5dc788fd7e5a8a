"""A primary/replica database router that keeps each request's and task's reads consistent.

``DATABASE_ROUTERS = ["distinct_counter.routing.router.PrimaryReplicaRouter"]`` with
``DISTINCT_COUNTER["REPLICAS"] = ["replica1", ...]`` sends writes and migrations to the primary
(``DISTINCT_COUNTER["PRIMARY"]``, ``"default"``) and reads to a replica picked at random among
those that are up and not lagging, except when a stale answer would surprise:

* after the current request or task wrote (it reads its own writes from the primary);
* while a transaction is open on the primary (it reads its own uncommitted rows);
* when the client is pinned by :class:`~distinct_counter.routing.middleware.PinPrimaryMiddleware`
  (the request after a writing one, e.g. the redirect after a POST);
* inside :func:`~distinct_counter.routing.context.use_primary` (and never inside
  :func:`~distinct_counter.routing.context.use_replica`).

The state lives in ``ContextVar`` objects, so it follows a request through async views and
``sync_to_async`` and each thread has its own. Replica health is remembered per process: a
replica whose connection is refused is skipped for ``REPLICA_RETRY_SECONDS``; with
``MAX_REPLICA_LAG`` set, a PostgreSQL replica whose replay lag exceeds it is skipped, the lag
being measured at most every ``LAG_CHECK_SECONDS``. With no replica usable, reads go to the
primary: a replica never fails a read the primary could answer.
"""

from __future__ import annotations

from typing import Any

from django.db import connections, models
from django.utils.connection import ConnectionDoesNotExist

from distinct_counter.routing.conf import conf
from distinct_counter.routing.context import PRIMARY, mark_written, mode_var, scope_var
from distinct_counter.routing.health import healthy_replica

__all__ = ["PrimaryReplicaRouter"]

#: The app whose models (``CounterState``) are bookkeeping read back from the write alias
#: explicitly: writing them does not pin the request that happens to trigger it.
_OWN_APP = "distinct_counter"


def _read_alias() -> str:
    primary = conf.primary()
    mode = mode_var.get()
    if mode == PRIMARY:
        return primary
    if mode is None:
        scope = scope_var.get()
        if scope is not None and (scope.wrote or scope.pinned):
            return primary
        try:
            if connections[primary].in_atomic_block:
                return primary
        except ConnectionDoesNotExist:
            pass
    return healthy_replica() or primary


class PrimaryReplicaRouter:
    """Writes and migrations to the primary; reads to a usable replica, or to the primary
    when the current context needs fresh data (see the module's documentation).

    ``route_app_labels``: the apps whose models this router places; ``None`` (the default)
    means every app. For models of other apps it has no opinion (``None``), so the next
    router, or ``"default"``, decides. Subclass to restrict it::

        class MyRouter(PrimaryReplicaRouter):
            route_app_labels = frozenset({"shop", "blog"})
    """

    route_app_labels: frozenset[str] | None = None

    def _routes(self, model: type[models.Model]) -> bool:
        labels = self.route_app_labels
        return labels is None or model._meta.app_label in labels

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None:
        if not self._routes(model):
            return None
        return _read_alias()

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str | None:
        if not self._routes(model):
            return None
        if model._meta.app_label != _OWN_APP:
            mark_written()
        return conf.primary()

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool | None:
        """True between objects of the pool (the primary and its replicas hold the same
        rows); no opinion otherwise."""
        pool = {conf.primary(), *conf.replicas()}
        if obj1._state.db in pool and obj2._state.db in pool:
            return True
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        """Never on a replica (it is read-only and receives the primary's schema through
        replication); no opinion elsewhere."""
        if db in conf.replicas():
            return False
        return None
