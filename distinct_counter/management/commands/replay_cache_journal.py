from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from distinct_counter.cache.status import replay_journal
from distinct_counter.management.base import NodesCommand


class Command(NodesCommand):
    help = (
        "Replay, in order, the writes a master/replica cache journaled while its master was "
        "down (all such caches, or those named); exit 1 if any are left."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        left = 0
        for alias in self.nodes(options):
            result = replay_journal(alias)
            left += result.left
            if options["verbosity"] >= 1:
                self.stdout.write(
                    f"{alias}: {result.replayed} replayed, {result.left} left ({result.location})"
                )
        if left:
            raise CommandError(
                f"{left} journaled writes are left: the master did not take "
                "them; run this again once it is reachable"
            )
