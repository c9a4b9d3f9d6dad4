"""`everlock restore BACKUP`: a backup of `everlock backup` into this installation."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from everlock_site.backup import BackupError, restore


class Command(BaseCommand):
    help = "Restore a backup made by `everlock backup` into this (fresh) installation; stop Everlock first."

    def add_arguments(self, parser):
        parser.add_argument("source", metavar="BACKUP", help="the directory `everlock backup` wrote")
        parser.add_argument(
            "--force",
            action="store_true",
            help="replace the database and files of an installation that already holds data",
        )

    def handle(self, *args, **opts):
        try:
            result = restore(Path(opts["source"]).resolve(), force=opts["force"])
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write("\n".join(result.report()))
