"""The console's own commands: /help and /quit."""

from __future__ import annotations

from sshadmin.commands import CommandError, Context, command, registry


class QuitConsole(Exception):
    """Raised by /quit: the session ends after this line."""


def group_help(group: str) -> str:
    """The usage lines of one command group. Raises CommandError for an unknown group."""
    commands = registry.groups().get(group.lstrip("/"))
    if not commands:
        raise CommandError(f"no command group {group}")
    return "\n".join(f"{c.usage}  - {c.summary}" for c in commands)


@command("/help", usage="/help [GROUP]", summary="list the commands, or those of one group (/help users)")
def help_(ctx: Context, group: str | None = None) -> str:
    if group is not None:
        return group_help(group)
    lines = []
    for commands in registry.groups().values():
        lines.extend(f"{c.usage}  - {c.summary}" for c in commands)
    return "\n".join(lines)


@command("/quit", usage="/quit", summary="end the session (exit and quit do too)")
def quit_(ctx: Context) -> str:
    raise QuitConsole
