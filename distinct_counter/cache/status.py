"""What the ``cache_status`` and ``replay_cache_journal`` commands run: the state of each
cache with a MasterReplicaClient, as its servers report it, and the replay of its journal."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import caches

from distinct_counter.cache.client import MasterReplicaClient
from distinct_counter.cache.conf import CLIENT, is_node, node_aliases
from distinct_counter.cache.node import UNREACHABLE
from distinct_counter.connection import REDIS_ERRORS

__all__ = ["ReplayResult", "cache_status", "client", "node_aliases", "nodes", "replay_journal"]


def client(alias: str) -> MasterReplicaClient:
    """The MasterReplicaClient of ``CACHES[alias]``.

    :raises ValueError: ``alias`` is not in ``CACHES`` or does not use a MasterReplicaClient.
    """
    if alias not in settings.CACHES or not is_node(settings.CACHES[alias]):
        known = ", ".join(node_aliases()) or "none"
        raise ValueError(
            f"{alias!r} is not a cache with CLIENT_CLASS {CLIENT} in CACHES; those are: {known}"
        )
    found: MasterReplicaClient = caches[alias].client  # type: ignore[attr-defined]
    return found


def nodes(aliases: Iterable[str] = ()) -> list[str]:
    """The aliases given, checked to use a MasterReplicaClient; all such when none is given.

    :raises ValueError: one of them is not in ``CACHES`` or does not use one.
    """
    aliases = list(aliases) or node_aliases()
    for alias in aliases:
        client(alias)
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
    """Replay the journal of the master/replica cache ``alias`` on its master now, in order.

    Stops at the first write the master fails to take; ``left`` counts what is kept for
    later. Raises nothing for a Redis failure.
    """
    node = client(alias).node
    before = len(node.journal)
    try:
        left = node.replay()
    except UNREACHABLE:
        left = len(node.journal)
    return ReplayResult(alias, max(before - left, 0), left, node.journal.location)


def _info(server: Any) -> dict[str, Any]:
    try:
        return dict(server.info("replication"))
    except REDIS_ERRORS as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _where(server: Any) -> str:
    kwargs = server.connection_pool.connection_kwargs
    if "host" in kwargs:
        return f"redis://{kwargs['host']}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    return str(getattr(server.connection_pool, "service_name", kwargs.get("path", "?")))


def cache_status(alias: str) -> dict[str, Any]:
    """The state of the master/replica cache ``alias``, as its servers report it.

    ``master``: whether it is up, its replication offset and the replicas it feeds (address,
    state, offset, ``lag`` in bytes behind the master); ``replica``: this node's replica,
    its link to the master (``"up"``/``"down"``) and its lag; ``journal``: the writes
    waiting for the master. A server that does not answer has ``up`` False and ``error``.
    """
    node = client(alias).node
    info = _info(node.master)
    offset = info.get("master_repl_offset")
    master: dict[str, Any] = {
        "location": _where(node.master),
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
    rinfo = _info(node.replica)
    roffset = rinfo.get("slave_repl_offset", rinfo.get("master_repl_offset"))
    replica = {
        "location": _where(node.replica),
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
        "journal": {"entries": len(node.journal), "location": node.journal.location},
    }
