"""Calling console commands through the command registry, as sshadmin.session does."""

from __future__ import annotations

from sshadmin.commands import Context, ParsedLine, load_commands


def run(line: str) -> str:
    """Dispatch `line` like the console: find the command, check arity, call the handler.

    A CommandError (the console's one-line error) propagates to the test.
    """
    registry = load_commands()
    words = ParsedLine(line).words
    cmd, n = registry.find(words)
    assert cmd is not None, line
    args = words[n:]
    cmd.check_arity(args)
    return cmd.handler(Context(user=None), *args)
