"""How a counter's counts (value -> rows) are laid out in Redis: in small hashes, buckets.

One hash per counter costs about 60 bytes per value on Redis 7 (an entry, two strings and
a slot of the table each); a hash of up to ``hash-max-listpack-entries`` (128) small fields
is one compact listpack, about 15. So a counter's values are spread over buckets of
:data:`LOAD` values on average, ``<counter>:b:<gen>:<i>``, by linear hashing of their
CRC-32: the map grows one bucket at a time (``scripts.APPLY`` splits one whenever the
values outnumber ``LOAD`` per bucket), and never needs rewriting whole. A header hash holds
``gen`` (a rebuild's maps are new generations), ``n`` (buckets) and ``len`` (values): the
counter's ``meta`` for its live map, ``tmp`` for the one a rebuild fills, ``old`` for the
one a rebuild replaced, until it is dropped.

The scripts place values in Lua (``scripts._MAP``); this module places them the same way
for what Python writes and reads directly.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from distinct_counter.connection import round_trip

if TYPE_CHECKING:
    from distinct_counter.counting.registry import Counter

#: Values per bucket, on average, before a bucket is split: the buckets not yet split in a
#: round hold up to twice as many, still well under the listpack's 128.
LOAD = 32


def hash_of(value: str) -> int:
    """The CRC-32 of ``value``'s UTF-8 text: what places it in a bucket."""
    return zlib.crc32(value.encode())


def slot(h: int, n: int) -> int:
    """The bucket, of ``n``, that linear hashing gives the hash ``h``."""
    level = 1 << (n.bit_length() - 1)
    b = h % level
    return h % (2 * level) if b < n - level else b


def bucket_prefix(counter: Counter, gen: Any) -> str:
    """The keys of the buckets of generation ``gen`` of ``counter``'s map, without the
    bucket's number."""
    return counter.key(f"b:{_text(gen)}:")


def bucket_key(counter: Counter, gen: Any, i: int) -> str:
    return f"{bucket_prefix(counter, gen)}{i}"


def sized(values: int) -> int:
    """The buckets, a power of two, for a map of about ``values`` values."""
    return 1 << max(0, values // LOAD - 1).bit_length()


def header(client: Any, key: str) -> tuple[str, int, int] | None:
    """(gen, buckets, values) of the map whose header is ``key``, None if there is none."""
    gen, n, length = client.hmget(key, "gen", "n", "len")
    if gen is None:
        return None
    return _text(gen), int(n), int(length or 0)


def keys(client: Any, counter: Counter, part: str) -> list[str]:
    """The bucket keys of the map whose header is ``counter.key(part)`` (none without one)."""
    found = header(client, counter.key(part))
    if found is None:
        return []
    gen, n, _ = found
    return [bucket_key(counter, gen, i) for i in range(n)]


def drop(client: Any, counter: Counter, part: str, chunk: int = 1000) -> None:
    """Delete the map whose header is ``counter.key(part)``, its buckets and then its
    header, a chunk of keys per ``UNLINK``, all in one round trip."""
    found = [*keys(client, counter, part), counter.key(part)]
    round_trip(client, *[("UNLINK", *found[i : i + chunk]) for i in range(0, len(found), chunk)])


def entries(
    client: Any, counter: Counter, per_call: int = 1000
) -> Iterator[list[dict[bytes, bytes]]]:
    """The live map's buckets, a list of about ``per_call`` values' buckets per round trip,
    in bucket order.

    Buckets only ever split into higher ones, so a value is never missed by a walk that
    reads ``n`` again once it reaches it; a value a split moves during the walk may be
    read twice."""
    at = 0
    while True:
        found = header(client, counter.key("meta"))
        if found is None or at >= found[1]:
            return
        gen, n, _ = found
        step = max(1, per_call // LOAD)
        while at < n:
            pipe = client.pipeline(transaction=False)
            for i in range(at, min(n, at + step)):
                pipe.hgetall(bucket_key(counter, gen, i))
            at = min(n, at + step)
            yield pipe.execute()


def grouped(values: Iterable[tuple[str, Any]], n: int) -> dict[int, list[Any]]:
    """``(value, count)`` pairs grouped by bucket, of a map of ``n`` buckets (a power of
    two): ``{bucket: [value, count, value, count...]}``, for one ``HSET`` per bucket."""
    mask = n - 1
    by: dict[int, list[Any]] = {}
    get, crc32 = by.get, zlib.crc32  # a rebuild's hottest loop: half the time of a zip of maps
    for value, count in values:
        b = crc32(value.encode()) & mask
        found = get(b)
        if found is None:
            by[b] = [value, count]
        else:
            found += (value, count)
    return by


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
