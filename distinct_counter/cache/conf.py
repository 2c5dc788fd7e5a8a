"""The ``OPTIONS`` a :class:`~distinct_counter.cache.client.MasterReplicaClient` adds to a
django-redis ``CACHES`` entry, typed and validated (see :mod:`distinct_counter.conf`).

django-redis's own options (``SERIALIZER``, ``COMPRESSOR``, ``SOCKET_TIMEOUT``...) keep
their meaning; these are the client's.
"""

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
CLIENT = "distinct_counter.cache.client.MasterReplicaClient"
#: The backend issue 13 replaced; check E027 points its users at the client.
OLD_BACKEND = "distinct_counter.cache.backend.MasterReplicaCache"


def sentinels(value: Any) -> list[tuple[str, int]]:
    """A non-empty list of ``(host, port)`` pairs."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("not a non-empty list of (host, port) pairs")
    found = []
    for item in value:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 2
            or not isinstance(item[0], str)
            or isinstance(item[1], bool)
            or not isinstance(item[1], int)
        ):
            raise ValueError(f"{item!r} is not a (host, port) pair")
        found.append((item[0], item[1]))
    return found


class ClientOptions(Settings):
    """The client's keys of ``CACHES[alias]["OPTIONS"]`` (or of the ``OPTIONS`` dict given):
    ``options.NAME`` is the validated value or its default."""

    #: Seconds a key this process wrote is read from the master rather than the replica.
    READ_YOUR_WRITES = Option(5.0, positive_number, "distinct_counter.E025", _SECONDS)
    #: How journaled sets are replayed.
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
    #: None: a file in the temporary directory named after the servers.
    JOURNAL_FILE = Option(
        None,
        optional(text),
        "distinct_counter.E029",
        "Point JOURNAL_FILE at a file in an existing directory, or use None.",
    )
    #: Sentinels that manage the master: LOCATION's first URL then names the service.
    SENTINELS = Option(
        None,
        optional(sentinels),
        "distinct_counter.E020",
        "Use a list of (host, port) pairs of the Sentinels, or None.",
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
    """The aliases in ``CACHES`` whose client is a MasterReplicaClient."""
    return [alias for alias, cfg in settings.CACHES.items() if is_node(cfg)]


def is_node(cfg: Mapping[str, Any]) -> bool:
    """Whether the ``CACHES`` entry ``cfg`` uses a MasterReplicaClient (or a subclass)."""
    options = cfg.get("OPTIONS")
    if not isinstance(options, Mapping):
        return False
    return is_subclass_path(options.get("CLIENT_CLASS", ""), CLIENT)
