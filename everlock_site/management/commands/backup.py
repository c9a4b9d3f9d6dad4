"""`everlock backup DEST`: a consistent copy of the installation (see everlock_site.backup)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from everlock_site.backup import BackupError, backup


class Command(BaseCommand):
    help = "Back up the database, stored messages and config files into a new directory DEST."

    def add_arguments(self, parser):
        parser.add_argument("destination", metavar="DEST", help="a new (or empty) directory")

    def handle(self, *args, **opts):
        try:
            result = backup(Path(opts["destination"]).resolve())
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write("\n".join(result.report()))
