"""The master/replica cache: a django-redis client class.

Each web node reads from its own Redis replica and writes to one master that replicates to
every node's replica; a key this process wrote in the last ``READ_YOUR_WRITES`` seconds is
read from the master, so a request reads its own writes before replication delivers them.
Nothing is ever answered from a copy in process memory. While the master is down, writes
whose effect is certain (set, delete, expire, clear) are journaled in a file and replayed,
in order, when it is back; the keys they name read as missing meanwhile.

It is a django-redis ``CLIENT_CLASS``, the extension point django-redis's own Sentinel and
sharded clients use: every method of django-redis's ``RedisCache``, ``cache.client``,
``django_redis.get_redis_connection(alias, write=...)``, serializers, compressors and
connection factories work as they do on plain django-redis. docs/cache.rst has the details.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from django.core.cache.backends.base import BaseCache
from django.core.exceptions import ImproperlyConfigured
from django_redis.client.default import DefaultClient
from django_redis.exceptions import ConnectionInterrupted
from django_redis.pool import SentinelConnectionFactory
from redis import Redis
from redis.client import Pipeline

from distinct_counter.cache import commands as cmd
from distinct_counter.cache.conf import ClientOptions
from distinct_counter.cache.journal import FileJournal, default_path
from distinct_counter.cache.node import MasterDown, Node

__all__ = ["MasterReplicaClient", "reset"]

_nodes: dict[tuple[Any, ...], Node] = {}
_nodes_lock = threading.Lock()


class MasterReplicaClient(DefaultClient):  # type: ignore[misc]
    """A django-redis client for a master and this node's replica of it.

    ``LOCATION`` lists the master's URL first, then the replica's. With ``OPTIONS``
    ``SENTINELS``, the first URL names the Sentinel service (``redis://mymaster/0``) and the
    master is whichever server the Sentinels name. django-redis's ``get_client(write=True)``
    and ``get_redis_connection(alias, write=True)`` answer with a client of the master,
    ``write=False`` with one of the replica; both route each command as described above.
    """

    def __init__(self, server: Any, params: dict[str, Any], backend: BaseCache) -> None:
        super().__init__(server, params, backend)
        if len(self._server) != 2:
            raise ImproperlyConfigured(
                "A MasterReplicaClient's LOCATION lists two URLs: the master's, then this "
                f"node's replica's; got {list(self._server)!r}"
            )
        self.options = ClientOptions(options=self._options)
        errors = self.options.errors()
        if errors:
            raise ImproperlyConfigured("; ".join(e.msg for e in errors))
        self._node: Node | None = None

    @property
    def node(self) -> Node:
        """This process's routing state of the pair (shared by every thread's client)."""
        if self._node is None:
            key = (tuple(self._server), repr(sorted(self._options.items(), key=str)))
            with _nodes_lock:
                found = _nodes.get(key)
                if found is None:
                    found = _nodes[key] = self._make_node()
            self._node = found
        return self._node

    def _make_node(self) -> Node:
        options = self.options
        journal = options.JOURNAL_FILE or default_path(self._server)
        return Node(
            self._bare(0),
            self._bare(1),
            FileJournal(journal),
            window=options.READ_YOUR_WRITES,
            replay_mode=options.REPLAY,
            retry_interval=options.RETRY_INTERVAL,
            label=str(self._server[0]),
        )

    def _bare(self, index: int) -> Redis:
        """A plain redis-py client of server ``index``, from django-redis's connection
        factory (the Sentinels' for a Sentinel-managed master)."""
        url = self._server[index]
        if index == 0 and self.options.SENTINELS:
            options = {k: v for k, v in self._options.items() if k != "CONNECTION_POOL_CLASS"}
            factory = SentinelConnectionFactory(options)
            sep = "&" if "?" in url else "?"
            url = f"{url}{sep}is_master=1"
        else:
            factory = self.connection_factory
        client: Redis = factory.connect(url)
        return client

    def get_next_client_index(self, write: bool = True, tried: list[int] | None = None) -> int:
        """0 (the master) for writes, 1 (the replica) for reads. django-redis's own draws the
        read server at random among ``LOCATION[1:]`` on every read; here there is one.
        After a failure (``tried``), django-redis's choice."""
        if tried:
            return int(super().get_next_client_index(write, tried))
        return 0 if write else 1

    def add(self, *args: Any, **kwargs: Any) -> bool:
        """django-redis's ``add``; False while the master is down: the value is not stored
        (Django's contract allows it, and ``get_or_set`` then answers its default)."""
        try:
            return bool(super().add(*args, **kwargs))
        except ConnectionInterrupted as exc:
            if isinstance(exc.__cause__, MasterDown):
                return False
            raise

    def connect(self, index: int = 0) -> Redis:
        """The client django-redis asks for: of the master for index 0 (writes), of the
        replica for index 1 (reads), routing each command through :attr:`node`."""
        node = self.node
        bare = node.master if index == 0 else node.replica
        cls = routed_class(type(bare), write=index == 0)
        client = cls(
            connection_pool=bare.connection_pool,
            **getattr(self.connection_factory, "redis_client_cls_kwargs", {}),
        )
        client._node = node  # type: ignore[attr-defined]
        return client


#: Command names as redis-py sends them (``"GET"``, ``"SCRIPT LOAD"``) -> ``name_of``'s:
#: every command asks, and most are among a few dozen.
_names: dict[str, str] = {}


class _Routed:
    """What a routed redis-py client adds to its class: each command goes through the node,
    as a write (a client of the master) or a read."""

    _node: Node
    _write: bool
    connection_pool: Any
    response_callbacks: Any

    def execute_command(self, *args: Any, **options: Any) -> Any:
        name = _names.get(args[0]) if type(args[0]) is str else None
        if name is None:
            name = cmd.name_of(args)
            if type(args[0]) is str and len(_names) < 1000:
                _names[args[0]] = name
        if self._write and name not in cmd.READS:
            return self._node.write(name, args, options)
        return self._node.read(name, args, options, prefer_master=self._write)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        pipe = RoutedPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe._node = self._node
        pipe._write = self._write
        return pipe


class RoutedPipeline(Pipeline):
    """A pipeline whose commands run where the node sends them: on the master, or journaled
    while it is down (a client of the master); on the replica, or on the master when one of
    them asks for it (a client of the replica)."""

    _node: Node
    _write: bool

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.watching or self.connection is not None or not self.command_stack:
            # WATCH pinned a connection: the transaction runs on it, as redis-py runs it.
            return super().execute(raise_on_error)
        stack = list(self.command_stack)
        transaction = bool(getattr(self, "transaction", True) or self.explicit_transaction)

        def run(client: Redis, commands: list[tuple[Sequence[Any], dict[str, Any]]]) -> Any:
            pipe = client.pipeline(transaction)
            pipe.command_stack = list(commands)
            return pipe.execute(raise_on_error)

        try:
            if self._write and any(cmd.name_of(a) not in cmd.READS for a, _ in stack):
                return self._node.write_pipeline(stack, run)
            return self._node.read_pipeline(stack, run)  # type: ignore[no-any-return]
        finally:
            self.reset()


_classes: dict[tuple[type[Redis], bool], type[Redis]] = {}


def routed_class(base: type[Redis], *, write: bool) -> type[Redis]:
    """``base`` (redis-py's ``Redis`` or the ``REDIS_CLIENT_CLASS``) with routed commands."""
    key = (base, write)
    found = _classes.get(key)
    if found is None:
        role = "Master" if write else "Replica"
        found = type(f"{role}Routed{base.__name__}", (_Routed, base), {"_write": write})
        _classes[key] = found
    return found


def reset() -> None:
    """Forget every node's state (recent writes, failures): for tests, and for
    ``setting_changed``."""
    with _nodes_lock:
        _nodes.clear()
