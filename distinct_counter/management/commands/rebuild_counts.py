from __future__ import annotations

import json
import sys
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from distinct_counter.api import Counter, Drift, RebuildInProgress, check, counters, rebuild


class Command(BaseCommand):
    help = (
        "Rebuild the distinct counters in Redis from the database (all, or those named), or "
        "compare them with --check."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "names",
            nargs="*",
            metavar="app_label[.Model[.field]]",
            help="Counters to rebuild or check, or a counted field's name; all when none.",
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="Compare Redis with the database instead of writing; exit 1 on any drift.",
        )
        parser.add_argument("--json", action="store_true", help="With --check: print JSON.")
        parser.add_argument(
            "--stale",
            action="store_true",
            help="Only the counters the database knows to be stale.",
        )
        parser.add_argument(
            "--database",
            default=None,
            help="Database alias to read from (a replica, say); default: the router's choice.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        database = options["database"]
        if database is not None and database not in connections:
            raise CommandError(
                f"Unknown database {database!r}; choose from: {', '.join(connections)}"
            )
        try:
            selected = counters(*options["names"], stale=options["stale"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if options["check"]:
            self._check(selected, database, options["json"])
        else:
            self._rebuild(selected, database, options["verbosity"])

    def _check(self, counters: list[Counter], database: str | None, as_json: bool) -> None:
        drifts = check(*counters, using=database)
        if as_json:
            self.stdout.write(json.dumps([d.as_dict() for d in drifts], indent=2))
        else:
            for drift in drifts:
                self.stdout.write(self._describe(drift))
        drifted = [d.counter.label for d in drifts if not d.ok]
        if drifted:
            raise CommandError(f"drift in {', '.join(drifted)}", returncode=1)

    def _describe(self, drift: Drift) -> str:
        status = "ok" if drift.ok else "DRIFT"
        line = (
            f"{drift.counter.label}: {status} (state {drift.state}): "
            f"redis {drift.redis_distinct}, database {drift.db_distinct} distinct; "
            f"missing {drift.missing}, extra {drift.extra}, wrong {drift.wrong}"
        )
        if drift.examples:
            line += "; e.g. " + ", ".join(repr(v) for v in drift.examples[:5])
        return self.style.SUCCESS(line) if drift.ok else self.style.ERROR(line)

    def _rebuild(self, counters: list[Counter], database: str | None, verbosity: int) -> None:
        if not counters:  # rebuild() of no name at all would rebuild every counter
            return
        bars = _ProgressBars(verbosity)
        try:
            results = rebuild(*counters, using=database, progress=bars)
        except RebuildInProgress as exc:
            raise CommandError(str(exc)) from None
        finally:
            bars.close()
        for result in results if verbosity >= 1 else ():
            label = result.counter.label
            self.stdout.write(
                f"{label}: {result.values} distinct values in {result.rows} rows, "
                f"{result.recounted} recounted, {result.seconds:.2f}s"
            )
            if not result.settled:
                self.stderr.write(
                    f"{label}: writes never paused during the recount; the counts of "
                    "values written in its last moments may be off: check later with "
                    "rebuild_counts --check"
                )


class _ProgressBars:
    """A rebuild's progress: a tqdm bar per counter (several at once when counters are
    rebuilt concurrently) on an interactive terminal; nothing when piped or with -v 0."""

    def __init__(self, verbosity: int) -> None:
        self.shown = verbosity >= 1 and sys.stderr.isatty()
        self.bars: dict[Counter, tuple[Any, int]] = {}
        self.lock = threading.Lock()

    def __call__(self, counter: Counter, rows: int, values: int) -> None:
        if not self.shown:
            return
        with self.lock:
            if counter not in self.bars:
                from tqdm import tqdm

                bar = tqdm(
                    desc=counter.label,
                    unit=" rows",
                    unit_scale=True,
                    leave=False,
                    position=len(self.bars),
                )
                self.bars[counter] = (bar, 0)
            bar, done = self.bars[counter]
            bar.update(rows - done)
            bar.set_postfix(values=values)
            self.bars[counter] = (bar, rows)

    def close(self) -> None:
        for bar, _ in self.bars.values():
            bar.close()
        self.bars.clear()
