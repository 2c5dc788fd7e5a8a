"""The ``OPTIONS`` of a :class:`~distinct_counter.cache.backend.MasterReplicaCache` entry of
``CACHES``, typed and validated (see :mod:`distinct_counter.conf`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings

from distinct_counter.conf import (
    Option,
    Settings,
    choice,
    is_subclass_path,
    optional,
    positive_number,
    text,
)

_SECONDS = "Use a positive number of seconds."
REPLAY_CHOICES = ("delete", "set")
BACKEND = "distinct_counter.cache.backend.MasterReplicaCache"


class CacheOptions(Settings):
    """The ``OPTIONS`` of the ``MasterReplicaCache`` ``CACHES[alias]`` (or the ``OPTIONS``
    dict given): ``options.NAME`` is the validated value or its default."""

    MASTER = Option(
        None,
        text,
        "distinct_counter.E020",
        "Set OPTIONS['MASTER'] to the alias of the django-redis cache of the master.",
    )
    REPLICA = Option(
        None,
        text,
        "distinct_counter.E020",
        "Set OPTIONS['REPLICA'] to the alias of the django-redis cache of this node's replica.",
    )
    LOCAL = Option(
        None,
        optional(text),
        "distinct_counter.E021",
        "Use the alias of a node-local cache in CACHES, or None.",
    )
    LOCAL_TTL = Option(5.0, positive_number, "distinct_counter.E025", _SECONDS)
    REPLAY = Option(
        "delete", choice(*REPLAY_CHOICES), "distinct_counter.E024", "Use one of: 'delete', 'set'."
    )
    #: None: ``DISTINCT_COUNTER["RETRY_INTERVAL"]``.
    RETRY_INTERVAL = Option(
        None,
        optional(positive_number),
        "distinct_counter.E025",
        f"{_SECONDS[:-1]}, or None for DISTINCT_COUNTER['RETRY_INTERVAL'].",
    )
    #: None: a file in the temporary directory, named after ``MASTER``.
    JOURNAL_FILE = Option(
        None,
        optional(text),
        "distinct_counter.E029",
        "Point JOURNAL_FILE at a file in an existing directory, or use None.",
    )

    def __init__(self, alias: str | None = None, options: Mapping[str, Any] | None = None) -> None:
        self.alias = alias
        self._options = options
        self.where = f"CACHES[{alias!r}]['OPTIONS']" if alias else "OPTIONS"

    def raw(self) -> Mapping[str, Any]:
        if self._options is not None:
            return self._options
        entry: Mapping[str, Any] = settings.CACHES.get(self.alias or "", {})
        value = entry.get("OPTIONS", {})
        return value if isinstance(value, Mapping) else {}


def node_aliases() -> list[str]:
    """The aliases in ``CACHES`` whose backend is a MasterReplicaCache."""
    return [alias for alias, cfg in settings.CACHES.items() if is_node(cfg)]


def is_node(cfg: dict[str, Any]) -> bool:
    """Whether the ``CACHES`` entry ``cfg`` is a MasterReplicaCache (or a subclass)."""
    return is_subclass_path(cfg.get("BACKEND", ""), BACKEND)
