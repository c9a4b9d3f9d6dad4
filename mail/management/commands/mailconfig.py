"""`manage.py mailconfig import [--domain D | --rules]`: read edited config files back.

Without an option it imports every everlock-mail/domains/<domain>.toml file and, when it
exists, everlock-mail/rules.toml. A file that does not parse or validate changes nothing and
the error names the file, line or field.
"""

from django.core.management.base import BaseCommand, CommandError

from mail.services.domains import DomainError, domain_import, domain_import_all
from mail.services.rules import RulesError, import_rules_file, rules_file_path


class Command(BaseCommand):
    help = "Import the edited files under everlock-mail/ (domain files and rules.toml) into the database."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        imp = sub.add_parser("import", help="read edited domain files and rules.toml back")
        only = imp.add_mutually_exclusive_group()
        only.add_argument("--domain", help="import only this domain's file")
        only.add_argument("--rules", action="store_true", help="import only rules.toml")

    def handle(self, *args, action: str, domain: str | None = None, rules: bool = False, **options):
        if not rules:
            self._import_domains(domain)
        if rules or (domain is None and rules_file_path().exists()):
            self._import_rules()

    def _import_domains(self, domain: str | None) -> None:
        try:
            changes = [domain_import(name=domain)] if domain else domain_import_all()
        except DomainError as exc:
            raise CommandError(str(exc)) from None
        if not changes:
            self.stdout.write("no domain files to import")
        for change in changes:
            for line in change.notes:
                self.stdout.write(line)

    def _import_rules(self) -> None:
        path = rules_file_path()
        try:
            change = import_rules_file()
        except RulesError as exc:
            raise CommandError(f"{exc}; nothing changed") from None
        state = "changed" if change.changed else "unchanged"
        self.stdout.write(
            f"mail rules imported from {path} ({state}): version {change.version}, {change.rules} rules"
        )
