"""What the commands of the master/replica cache share: which caches they act on."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from distinct_counter.cache.status import nodes


class NodesCommand(BaseCommand):
    """A command over the master/replica caches named on its command line (all by default)."""

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "aliases",
            nargs="*",
            metavar="alias",
            help="CACHES aliases of master/replica caches; all of them when none is named.",
        )

    def nodes(self, options: dict[str, Any]) -> list[str]:
        try:
            return nodes(options["aliases"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
