"""``manage.py seed_messages N``: load N sample messages fast, counters kept exact."""

from __future__ import annotations

import itertools
import sys
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from distinct_counter import DistinctCount
from distinct_counter.api import counters
from messaging import sample
from messaging.models import Message


def load_messages(count: int, *, seed: int = 0, batch: int = 5000, progress: bool = False) -> None:
    """Insert ``count`` sample messages in batches (``bulk_create``, which the counters follow),
    then build any counter not built yet."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=count, unit="msg", desc="loading messages", file=sys.stderr)
    rows = sample.messages(count, seed=seed)
    while chunk := list(itertools.islice(rows, batch)):
        Message.objects.bulk_create(chunk, batch_size=batch)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if any(
        DistinctCount.read(c.field.name, Message).state != "ok"
        for c in counters("messaging.Message")
    ):
        call_command("rebuild_counts", "messaging", verbosity=0)


class Command(BaseCommand):
    help = "Load N sample messages (bulk inserts in batches); counters stay exact."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("count", type=int, help="number of messages to add")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        parser.add_argument("--batch", type=int, default=5000, help="rows per INSERT")

    def handle(self, *args: Any, count: int, seed: int, batch: int, **options: Any) -> None:
        if count < 0 or batch < 1:
            raise CommandError("count must be >= 0 and --batch >= 1")
        verbosity = int(options["verbosity"])
        load_messages(
            count, seed=seed, batch=batch, progress=verbosity >= 1 and sys.stderr.isatty()
        )
        if verbosity >= 1:
            self.stdout.write(f"{count} messages added; {Message.objects.count()} in all")
