"""The `everlock` console script: manage.py under another name, with Everlock's own version
and a help text that lists Everlock's commands first."""

import os
import sys
from importlib.metadata import PackageNotFoundError, version

from django.core.management import ManagementUtility, get_commands, load_command_class

# The apps whose commands are Everlock's (the others are Django's).
EVERLOCK_APPS = ("everlock_site", "accounts", "dns_zones", "mail", "sshadmin")


def everlock_version() -> str:
    try:
        return version("everlock")
    except PackageNotFoundError:  # a checkout run without `pip install -e .`
        return "unknown (not installed)"


def _summary(app: str, name: str) -> str:
    text = load_command_class(app, name).help or ""
    return text.strip().splitlines()[0] if text.strip() else ""


class EverlockUtility(ManagementUtility):
    """Django's ManagementUtility, answering `--version` and `help` as Everlock."""

    def main_help_text(self, commands_only: bool = False) -> str:
        if commands_only or self.settings_exception is not None:
            return super().main_help_text(commands_only)
        commands = get_commands()
        ours = sorted(name for name, app in commands.items() if app in EVERLOCK_APPS)
        django = sorted(name for name, app in commands.items() if app not in EVERLOCK_APPS)
        width = max(map(len, ours))
        lines = [
            f"Everlock {everlock_version()}",
            "",
            f"Type '{self.prog_name} help <command>' for help on a command.",
            "",
            "Everlock commands:",
            *(f"    {name.ljust(width)}  {_summary(commands[name], name)}" for name in ours),
            "",
            "Django commands:",
            *(f"    {name}" for name in django),
        ]
        return "\n".join(lines)

    def execute(self) -> None:
        if self.argv[1:] in (["--version"], ["version"]):
            sys.stdout.write(f"everlock {everlock_version()}\n")
            return
        super().execute()


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "everlock_site.settings")
    EverlockUtility(["everlock", *(sys.argv[1:] if argv is None else argv)]).execute()
