from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandParser

from distinct_counter.cache.status import cache_status
from distinct_counter.management.base import NodesCommand


def _lag(value: int | None) -> str:
    return "lag ?" if value is None else f"lag {value} bytes"


class Command(NodesCommand):
    help = (
        "Show each master/replica cache (all, or those named): its master, the master's "
        "replicas and their replication lag, this node's replica and its link, the journal."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--json", action="store_true", help="Print JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        statuses = [cache_status(alias) for alias in self.nodes(options)]
        if options["json"]:
            self.stdout.write(json.dumps(statuses, indent=2))
            return
        if options["verbosity"] < 1:
            return
        for status in statuses:
            self.stdout.write(self._text(status))

    def _text(self, status: dict[str, Any]) -> str:
        master, replica, journal = status["master"], status["replica"], status["journal"]
        lines = [f"{status['alias']}:"]
        if master["up"]:
            lines.append(
                f"  master {master['location']}: up, "
                f"offset {master['offset']}, {len(master['replicas'])} replicas"
            )
        else:
            lines.append(f"  master {master['location']}: DOWN, {master['error']}")
        for fed in master["replicas"]:
            lines.append(
                f"    replica {fed['address']}: {fed['state']}, offset "
                f"{fed['offset']}, {_lag(fed['lag'])}"
            )
        if replica["up"]:
            lines.append(
                f"  node replica {replica['location']}: up, "
                f"link {replica['link']}, offset {replica['offset']}, "
                f"{_lag(replica['lag'])}"
            )
        else:
            lines.append(f"  node replica {replica['location']}: DOWN, {replica['error']}")
        lines.append(f"  journal: {journal['entries']} writes waiting ({journal['location']})")
        return "\n".join(lines)
