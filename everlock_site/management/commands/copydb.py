"""`everlock copydb --to URL`: the database copied into another one (everlock_site.database_copy)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from everlock_site.database_copy import CopyError, copy_database


class Command(BaseCommand):
    help = "Copy the database (e.g. SQLite) into an empty one (e.g. PostgreSQL); stop Everlock first."

    def add_arguments(self, parser):
        parser.add_argument(
            "--to",
            required=True,
            metavar="URL",
            help="the target database, e.g. postgres://everlock:PASSWORD@127.0.0.1:5432/everlock",
        )

    def handle(self, *args, **opts):
        try:
            result = copy_database(opts["to"])
        except CopyError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write("\n".join(result.report()))
