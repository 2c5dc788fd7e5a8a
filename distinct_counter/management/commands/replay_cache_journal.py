from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from distinct_counter.cache.status import nodes, replay_journal


class Command(BaseCommand):
    help = (
        "Replay, in order, the writes a MasterReplicaCache journaled while its master was "
        "down (all such caches, or those named); exit 1 if any are left."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "aliases",
            nargs="*",
            metavar="alias",
            help="CACHES aliases of MasterReplicaCache caches; all of them when none is named.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            aliases = nodes(options["aliases"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        left = 0
        for alias in aliases:
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
