from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.management.utils import run_formatters

from distinct_counter.indexes.planner import IndexMigration, index_migration


class Command(BaseCommand):
    help = (
        "Write a migration creating, with CreateIndexConcurrently (no write lock on "
        "PostgreSQL), an index on each counted field of the app's models that has none."
    )
    # Its point is fixing W001; repeating that warning before the fix is noise.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("app_label", help="The app whose counted fields to index.")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Print the migration instead of writing it.",
        )
        parser.add_argument(
            "--runsql",
            action="store_true",
            help="Write Django's own RunSQL operations (PostgreSQL only) instead of "
            "CreateIndexConcurrently: the migration loads without this app.",
        )
        parser.add_argument(
            "--name",
            default=None,
            help="The migration's name after its number (default: counted_indexes).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        app_label = options["app_label"]
        try:
            migration = index_migration(app_label, name=options["name"], runsql=options["runsql"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        verbosity = options["verbosity"]
        if verbosity >= 1:
            for note in migration.notes:
                self.stdout.write(self.style.WARNING(note))
        if not migration.indexes:
            if verbosity >= 1:
                self.stdout.write(f"No counted field of {app_label!r} lacks an index.")
            return
        if options["dry_run"]:
            self.stdout.write(migration.contents, ending="")
        else:
            if os.path.exists(migration.path):
                raise CommandError(f"{migration.path} exists already.")
            migration.write()
            run_formatters([migration.path])  # black, when installed, as makemigrations
            if verbosity >= 1:
                self.stdout.write(f"Wrote {migration.path}")
        if verbosity >= 1:
            self._describe(migration)

    def _describe(self, migration: IndexMigration) -> None:
        for missing in migration.indexes:
            self.stdout.write(f"  + {missing.label}: index {missing.index.name}")
        if migration.undeclared:
            self.stdout.write(
                "Declare these indexes in the models' Meta.indexes, so that makemigrations "
                "agrees with the migration:"
            )
            for missing in migration.undeclared:
                self.stdout.write(f"  {missing.model._meta.label}: {missing.meta_line}")
