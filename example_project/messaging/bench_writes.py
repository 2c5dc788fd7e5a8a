"""What counting costs the writes, for ``manage.py bench``: every counted operation against
the same operation on ``PlainMessage`` (the same table, not counted), timed interleaved."""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Model
from django.test.utils import override_settings

from distinct_counter.connection import get_client
from distinct_counter.counting.conf import conf
from distinct_counter.counting.deltas import sender
from distinct_counter.testing.servers import free_port
from messaging import sample
from messaging.bench_figures import Figure, figure, ratio_of_medians
from messaging.models import Message, PlainMessage

#: An operation that times itself (its preparation excluded) and returns seconds.
Op = Callable[[], float]
Row = dict[str, Any]
BULK_STEPS = ("bulk_create", "bulk_update", "update", "delete")
#: ``bulk_update``'s ``batch_size``, as Django's documentation advises: without one, on
#: PostgreSQL, 10,000 rows are one ``CASE`` of 10,000 branches, seconds of database time
#: that would drown what counting adds.
BULK_UPDATE_BATCH = 1000
#: Rounds of the quick figures (1,000 creates in a transaction; the bulk steps but
#: ``bulk_update``, which takes seconds) per ``--repeat``: on a shared machine a step of
#: 0.2 s varies by 10 to 15% from one time to the next, and the median of seven rounds
#: moved a ratio by 0.1 between runs of the same code; it settles over some thirty.
QUICK_ROUNDS = 4


def timed(fn: Callable[[], object]) -> Op:
    def op() -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    return op


def interleaved(ops: dict[str, Op], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Each op once per round, ``rounds`` times (after ``warmup`` rounds not kept), in an order
    rotated every round and reversed every other cycle, so drift hits every op alike."""
    names = list(ops)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(warmup + rounds):
        k = i % len(names)
        order = names[k:] + names[:k]
        if (i // len(names)) % 2:
            order.reverse()
        for name in order:
            seconds = ops[name]()
            if i >= warmup:
                times[name].append(seconds)
    return times


def sample_rows(count: int, seed: int) -> list[Row]:
    return [
        {"username": m.username, "city": m.city, "text": m.text}
        for m in sample.messages(count, seed=seed)
    ]


def other_city(current: str | None, i: int) -> str:
    """A sample city that is not ``current``: a write that changes the counted value."""
    city = sample.CITIES[i % len(sample.CITIES)]
    return city if city != current else sample.CITIES[(i + 1) % len(sample.CITIES)]


def rtt_op() -> Op:
    """One bare ``EVALSHA`` of a no-op script on the client counter writes go through."""
    client = get_client(conf.write_cache)
    sha = client.script_load("return 0")
    return timed(lambda: client.evalsha(sha, 0))


def creator(model: type[Model], rows: list[Row]) -> Op:
    """``model.objects.create()`` of the next row, one per transaction (autocommit)."""
    cycle = itertools.cycle(rows)
    return timed(lambda: model._default_manager.create(**next(cycle)))


def saver(objs: list[Model]) -> Op:
    """``save()`` of the next existing row, its city changed."""
    counter = itertools.count()

    def op() -> float:
        i = next(counter)
        obj: Any = objs[i % len(objs)]
        obj.city = other_city(obj.city, i)
        started = time.perf_counter()
        obj.save()
        return time.perf_counter() - started

    return op


def overhead(name: str, times: dict[str, list[float]], target: float | None) -> Figure:
    """``counted`` minus ``plain`` (medians), in round trips (median ``rtt``)."""
    counted, plain = statistics.median(times["counted"]), statistics.median(times["plain"])
    return figure(
        name,
        "s",
        counted - plain,
        statistics.median(times["rtt"]),
        target,
        ratio_unit="RTT",
        note=f"counted {counted * 1e6:.0f} us, plain {plain * 1e6:.0f} us; "
        f"{len(times['rtt'])} of each interleaved with a no-op EVALSHA",
    )


def create_overhead(count: int, send: str = "wait") -> Figure:
    rows = sample_rows(count, seed=7)
    with sending(send):
        ops = {"counted": creator(Message, rows), "plain": creator(PlainMessage, rows)}
        times = interleaved(idle_sender({**ops, "rtt": rtt_op()}), count, warmup=20)
    return overhead(f"create() counted minus plain{SEND_LABEL[send]}", times, 1.25)


#: How the figures of a ``SEND`` other than the default are named.
SEND_LABEL = {"wait": "", "background": ", SEND background"}


@contextlib.contextmanager
def sending(send: str) -> Iterator[None]:
    """Counted writes sent as ``DISTINCT_COUNTER["SEND"]`` says."""
    with override_settings(DISTINCT_COUNTER={**settings.DISTINCT_COUNTER, "SEND": send}):
        yield


def idle_sender(ops: dict[str, Op]) -> dict[str, Op]:
    """Each op timed with the sender thread of ``SEND = "background"`` idle (what it still
    had to send sent first, untimed), so no op is billed for the previous one's send: the
    figure is what a write waits for. (Nothing is queued with ``SEND = "wait"``.)"""

    def idle(op: Op) -> Op:
        def run() -> float:
            sender.flush()
            return op()

        return run

    return {name: idle(op) for name, op in ops.items()}


def after_commit_floor(count: int) -> Figure:
    """A plain ``create()`` followed at once by a no-op ``EVALSHA``, minus the plain
    ``create()``: the least a counted create that waits for Redis can cost, its one round
    trip coming right after its commit (information, beside ``create_overhead``)."""
    rows = sample_rows(count, seed=12)
    plain, round_trip = creator(PlainMessage, rows), rtt_op()
    ops = {
        # Under overhead()'s name for the side it subtracts the plain one from.
        "counted": lambda: plain() + round_trip(),
        "plain": creator(PlainMessage, rows),
        "rtt": rtt_op(),
    }
    times = interleaved(ops, count, warmup=20)
    return overhead("plain create() then a no-op EVALSHA, minus plain create()", times, None)


def txid_overhead(count: int) -> Figure:
    """What returning its transaction's id costs an INSERT, as every counted save's does on
    PostgreSQL: ``INSERT ... RETURNING id, pg_current_xact_id()::text`` minus ``RETURNING
    id``, raw SQL on ``PlainMessage``'s table."""
    rows = sample_rows(count, seed=9)
    table = connection.ops.quote_name(PlainMessage._meta.db_table)

    def inserter(returning: str) -> Op:
        cycle = itertools.cycle(rows)
        sql = (
            f"INSERT INTO {table} (username, city, text, created_at) "
            f"VALUES (%s, %s, %s, now()) RETURNING {returning}"
        )

        def op() -> float:
            row = next(cycle)
            started = time.perf_counter()
            with connection.cursor() as cur:
                cur.execute(sql, [row["username"], row["city"], row["text"]])
                cur.fetchone()
            return time.perf_counter() - started

        return op

    ops = {
        "counted": inserter("id, pg_current_xact_id()::text"),
        "plain": inserter("id"),
        "rtt": rtt_op(),
    }
    times = interleaved(ops, count, warmup=20)
    return overhead("INSERT returning its transaction id minus plain INSERT", times, None)


def save_overhead(count: int, send: str = "wait") -> Figure:
    """``save()`` of existing rows (the first ``count`` of each table) changing their city."""
    with sending(send):
        ops = {
            "counted": saver(list(Message.objects.order_by("pk")[:count])),
            "plain": saver(list(PlainMessage.objects.order_by("pk")[:count])),
            "rtt": rtt_op(),
        }
        times = interleaved(idle_sender(ops), count, warmup=20)
    return overhead(f"save() changing city, counted minus plain{SEND_LABEL[send]}", times, 2.5)


def in_one_transaction(size: int, repeat: int) -> Figure:
    rows = sample_rows(size, seed=8)

    def run(model: type[Model]) -> Op:
        def creates() -> None:
            with transaction.atomic():
                for row in rows:
                    model._default_manager.create(**row)

        return timed(creates)

    times = interleaved({"counted": run(Message), "plain": run(PlainMessage)}, repeat)
    per = {side: [t / size for t in values] for side, values in times.items()}
    return ratio_of_medians(
        f"{size} creates in one transaction",
        per["counted"],
        per["plain"],
        1.05,
        note=f"per create; median of {repeat} interleaved rounds",
    )


def redis_down(count: int) -> Figure:
    """Counted creates while the counters' Redis refuses connections, against plain ones: the
    counters miss them (a rebuild makes them exact again)."""
    rows = sample_rows(count, seed=9)
    down = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
    }
    with override_settings(
        CACHES={**settings.CACHES, "bench_down": down},
        DISTINCT_COUNTER={**settings.DISTINCT_COUNTER, "CACHE": "bench_down", "WRITE_CACHE": None},
    ):
        ops = {"down": creator(Message, rows), "plain": creator(PlainMessage, rows)}
        times = interleaved(ops, count, warmup=5)
    return ratio_of_medians(
        "create() with Redis down / plain",
        times["down"],
        times["plain"],
        None,
        note="connection refused; the counters are rebuilt afterwards",
    )


class BulkCycle:
    """``bulk_create`` of a set of rows, ``bulk_update`` and queryset ``update()`` of their
    city, queryset ``delete()`` of them: the table is as before once the cycle is done. Each
    step times itself, what it prepares excluded."""

    def __init__(self, model: type[Model], rows: list[Row]) -> None:
        self.model, self.rows = model, rows
        self.objs: list[Any] = []
        self.first = 0

    def mine(self) -> Any:
        """The rows just created: the highest primary keys of the table."""
        return self.model._default_manager.filter(pk__gte=self.first)

    def bulk_create(self) -> float:
        self.objs = [self.model(**row) for row in self.rows]
        started = time.perf_counter()
        self.model._default_manager.bulk_create(self.objs)
        seconds = time.perf_counter() - started
        self.first = min(obj.pk for obj in self.objs)
        return seconds

    def bulk_update(self) -> float:
        for i, obj in enumerate(self.objs):
            obj.city = other_city(obj.city, i)
        manager = self.model._default_manager
        return timed(
            lambda: manager.bulk_update(self.objs, ["city"], batch_size=BULK_UPDATE_BATCH)
        )()

    def update(self) -> float:
        return timed(lambda: self.mine().update(city=sample.CITIES[5]))()

    def delete(self) -> float:
        return timed(lambda: self.mine().delete())()


def bulk_ratios(size: int, repeat: int, send: str = "wait") -> list[Figure]:
    """The four steps of a ``BulkCycle`` of ``size`` rows, counted and plain one after the
    other (which goes first alternates by step and by round); a first round is not kept.
    ``bulk_update`` in ``repeat`` rounds, the other steps in ``QUICK_ROUNDS`` times as
    many. Each step starts with the sender thread of ``SEND = "background"`` idle."""
    rows = sample_rows(size, seed=11)
    cycles = {"counted": BulkCycle(Message, rows), "plain": BulkCycle(PlainMessage, rows)}
    times: dict[tuple[str, str], list[float]] = {}
    with sending(send):
        for r in range(QUICK_ROUNDS * repeat + 1):
            for s, step in enumerate(BULK_STEPS):
                if step == "bulk_update" and r > repeat:
                    continue
                sides = ("counted", "plain") if (r + s) % 2 == 0 else ("plain", "counted")
                for side in sides:
                    sender.flush()
                    seconds = getattr(cycles[side], step)()
                    if r:
                        times.setdefault((step, side), []).append(seconds)
        sender.flush()
    label = SEND_LABEL[send]
    names = {
        "bulk_create": f"bulk_create of {size} rows{label}",
        "bulk_update": f"bulk_update of {size} rows (city){label}",
        "update": f"update() of {size} rows (city){label}",
        "delete": f"delete() of {size} rows{label}",
    }
    return [
        ratio_of_medians(
            names[step],
            times[(step, "counted")],
            times[(step, "plain")],
            1.1 if step == "bulk_create" else 1.2,
            note=f"median of {len(times[(step, 'plain')])} interleaved rounds; rows created, "
            f"changed, deleted; bulk_update's batch_size {BULK_UPDATE_BATCH}",
        )
        for step in BULK_STEPS
    ]
