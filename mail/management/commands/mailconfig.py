"""`manage.py mailconfig import [--domain D]`: read edited domain files back into the database."""

from django.core.management.base import BaseCommand, CommandError

from mail.services.domains import DomainError, domain_import, domain_import_all


class Command(BaseCommand):
    help = "Import everlock-mail/domains/<domain>.toml files (all, or one with --domain) into the database."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        imp = sub.add_parser("import", help="read edited domain files back")
        imp.add_argument("--domain", help="import only this domain's file")

    def handle(self, *args, action: str, domain: str | None = None, **options):
        try:
            changes = [domain_import(name=domain)] if domain else domain_import_all()
        except DomainError as exc:
            raise CommandError(str(exc)) from None
        if not changes:
            self.stdout.write("no domain files to import")
        for change in changes:
            for line in change.notes:
                self.stdout.write(line)
