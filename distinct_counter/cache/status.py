"""What the ``cache_status`` and ``replay_cache_journal`` commands run: the state of each
MasterReplicaCache as its servers report it, and the replay of its journal."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import caches

from distinct_counter.cache.backend import MasterReplicaCache
from distinct_counter.cache.conf import BACKEND, is_node, node_aliases
from distinct_counter.connection import REDIS_ERRORS, get_client

__all__ = ["ReplayResult", "cache_status", "node", "node_aliases", "nodes", "replay_journal"]


def node(alias: str) -> MasterReplicaCache:
    """The MasterReplicaCache ``CACHES[alias]``.

    :raises ValueError: ``alias`` is not in ``CACHES`` or is not a MasterReplicaCache.
    """
    if alias not in settings.CACHES or not is_node(settings.CACHES[alias]):
        known = ", ".join(node_aliases()) or "none"
        raise ValueError(f"{alias!r} is not a {BACKEND} in CACHES; those are: {known}")
    return caches[alias]  # type: ignore[return-value]


def nodes(aliases: Iterable[str] = ()) -> list[str]:
    """The aliases given, checked to be MasterReplicaCaches; all of them when none is given.

    :raises ValueError: one of them is not in ``CACHES`` or is not a MasterReplicaCache.
    """
    aliases = list(aliases) or node_aliases()
    for alias in aliases:
        node(alias)
    return aliases


@dataclass
class ReplayResult:
    """What :func:`replay_journal` did: writes ``replayed`` and ``left`` in the journal at
    ``location``."""

    alias: str
    replayed: int
    left: int
    location: str

    @property
    def ok(self) -> bool:
        return self.left == 0


def replay_journal(alias: str) -> ReplayResult:
    """Replay the journal of the MasterReplicaCache ``alias`` on its master now, in order.

    Stops at the first write the master fails to take; ``left`` counts what is kept for
    later. Raises nothing for a Redis failure.
    """
    cache = node(alias)
    before = len(cache.journal)
    cache._replay()
    left = len(cache.journal)
    return ReplayResult(alias, max(before - left, 0), left, cache.journal.location)


def _info(alias: str) -> dict[str, Any]:
    try:
        return dict(get_client(alias).info("replication"))
    except REDIS_ERRORS as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _server(alias: str) -> dict[str, Any]:
    return {"alias": alias, "location": settings.CACHES[alias].get("LOCATION")}


def cache_status(alias: str) -> dict[str, Any]:
    """The state of the MasterReplicaCache ``alias``, as its servers report it.

    ``master``: whether it is up, its replication offset and the replicas it feeds (address,
    state, offset, ``lag`` in bytes behind the master); ``replica``: this node's replica,
    its link to the master (``"up"``/``"down"``) and its lag; ``journal``: the writes
    waiting for the master. A server that does not answer has ``up`` False and ``error``.
    """
    cache = node(alias)
    info = _info(cache.master_alias)
    offset = info.get("master_repl_offset")
    master: dict[str, Any] = {
        **_server(cache.master_alias),
        "up": "error" not in info,
        "role": info.get("role"),
        "offset": offset,
        "error": info.get("error"),
        "replicas": [],
    }
    for name, value in sorted(info.items()):
        if name.startswith("slave") and isinstance(value, dict):
            replica_offset = int(value.get("offset", 0))
            master["replicas"].append(
                {
                    "address": f"{value.get('ip')}:{value.get('port')}",
                    "state": value.get("state"),
                    "offset": replica_offset,
                    "lag": None if offset is None else int(offset) - replica_offset,
                }
            )
    rinfo = _info(cache.replica_alias)
    roffset = rinfo.get("slave_repl_offset", rinfo.get("master_repl_offset"))
    replica = {
        **_server(cache.replica_alias),
        "up": "error" not in rinfo,
        "role": rinfo.get("role"),
        "link": rinfo.get("master_link_status"),
        "offset": roffset,
        "error": rinfo.get("error"),
        "lag": None if offset is None or roffset is None else int(offset) - int(roffset),
    }
    return {
        "alias": alias,
        "master": master,
        "replica": replica,
        "journal": {"entries": len(cache.journal), "location": cache.journal.location},
    }
