"""How a counter in Redis differs from the database: ``rebuild_counts --check``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from distinct_counter.connection import get_client
from distinct_counter.counting.buckets import hash_of
from distinct_counter.counting.conf import conf
from distinct_counter.counting.reads import read_database
from distinct_counter.counting.registry import Counter
from distinct_counter.counting.scan import grouped_counts
from distinct_counter.counting.scripts import READ, run_script


@dataclass
class Drift:
    """How a counter in Redis differs from the database."""

    counter: Counter
    state: str
    redis_distinct: int
    db_distinct: int
    missing: int = 0
    extra: int = 0
    wrong: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state == "ok" and not (self.missing or self.extra or self.wrong)

    def as_dict(self) -> dict[str, Any]:
        return {
            "counter": self.counter.label,
            "state": self.state,
            "ok": self.ok,
            "redis_distinct": self.redis_distinct,
            "db_distinct": self.db_distinct,
            "missing": self.missing,
            "extra": self.extra,
            "wrong": self.wrong,
            "examples": self.examples,
        }


def check(counter: Counter, using: str | None = None) -> Drift:
    """Compare a counter with the database, value by value, without changing it.

    ``missing``: values in the database but not in Redis; ``extra``: values in Redis the
    database does not hold; ``wrong``: values in both with different row counts.
    """
    using = using or read_database(counter.model)
    client = get_client(conf.CACHE, write=False)
    meta = counter.key("meta")
    state, length = client.hmget(meta, "state", "len")
    built = isinstance(state, bytes) and length is not None
    drift = Drift(counter, cast(bytes, state).decode() if built else "missing", 0, 0)
    found = 0
    batch_size = conf.REBUILD_BATCH_SIZE

    def compare(batch: dict[str, int]) -> None:
        nonlocal found
        names = list(batch)
        args = [x for name in names for x in (name, hash_of(name))]
        _, _, *counts = run_script(client, READ, [meta], args)
        for name, got in zip(names, counts, strict=True):
            if got is None:
                drift.missing += 1
                if len(drift.examples) < 10:
                    drift.examples.append(name)
                continue
            found += 1
            if int(got) != batch[name]:
                drift.wrong += 1
                if len(drift.examples) < 10:
                    drift.examples.append(name)

    batch: dict[str, int] = {}
    for text, n in grouped_counts(counter, using, chunk_size=batch_size):
        if text not in batch:
            drift.db_distinct += 1
        batch[text] = batch.get(text, 0) + n
        if len(batch) >= batch_size:
            compare(batch)
            batch = {}
    if batch:
        compare(batch)
    drift.redis_distinct = int(client.hget(meta, "len") or 0)
    drift.extra = drift.redis_distinct - found
    drift.examples.sort()
    return drift
