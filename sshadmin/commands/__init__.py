"""The console's command registry.

Each module of this package registers the commands of one group with @command; the registry
imports every module here, so a new group is a new module. A command is named by its words
("/mail domains create") and its usage line gives its arguments: NAME is required, [NAME]
optional, NAME... takes the rest (one or more), [NAME...] zero or more. Handlers are ordinary
synchronous functions (they run in a worker thread, never on the event loop) that receive the
context and the arguments and return the text to print; bad input raises CommandError.
"""

from __future__ import annotations

import importlib
import pkgutil
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field


class CommandError(Exception):
    """Bad input or a refused change. The message is printed as one line with the usage."""


@dataclass
class Context:
    """Who runs a command, and where its output goes.

    `ask_secret(prompt)`, on an interactive console only (else None), prints `prompt` and
    returns the line the admin types, without echoing it (a password)."""

    user: object
    client_address: str = ""
    interactive: bool = False
    ask_secret: Callable[[str], str] | None = None


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    usage: str
    summary: str
    handler: Callable[..., str]
    required: int = 0
    optional: int = 0
    variadic: bool = False

    def check_arity(self, args: list[str]) -> None:
        if len(args) < self.required:
            raise CommandError("missing arguments")
        if not self.variadic and len(args) > self.required + self.optional:
            raise CommandError("too many arguments")


@dataclass
class Registry:
    commands: dict[tuple[str, ...], Command] = field(default_factory=dict)

    def add(self, cmd: Command) -> None:
        if cmd.words in self.commands:
            raise ValueError(f"command {' '.join(cmd.words)} registered twice")
        self.commands[cmd.words] = cmd

    def find(self, words: list[str]) -> tuple[Command | None, int]:
        """The command named by the longest prefix of `words`, and that prefix's length."""
        for n in range(min(len(words), 4), 0, -1):
            cmd = self.commands.get(tuple(words[:n]))
            if cmd is not None:
                return cmd, n
        return None, 0

    def complete(self, line: str, pos: int) -> tuple[str, int] | None:
        """Tab completion of the word before `pos` in a typed console line: a command group,
        then its sub-commands. Returns the new line and cursor position (the word completed
        as far as all candidates agree, with a space after a unique one), or None when there
        is nothing to add."""
        head, tail = line[:pos], line[pos:]
        if not head.startswith("/"):
            return None
        *typed, word = head[1:].split(" ")
        typed = [w for w in typed if w]
        depth = len(typed)
        candidates = {
            cmd.words[depth]
            for cmd in self.commands.values()
            if len(cmd.words) > depth
            and list(cmd.words[:depth]) == typed
            and cmd.words[depth].startswith(word)
        }
        if not candidates:
            return None
        # The common prefix of all candidates is that of the first and last in order.
        first, last = min(candidates), max(candidates)
        common = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), len(first))
        addition = first[len(word) : common]
        if len(candidates) == 1:
            addition += " "
        if not addition:
            return None
        return head + addition + tail, pos + len(addition)

    def groups(self) -> dict[str, list[Command]]:
        out: dict[str, list[Command]] = {}
        for cmd in sorted(self.commands.values(), key=lambda c: c.words):
            out.setdefault(cmd.words[0], []).append(cmd)
        return out


registry = Registry()


def _arity(usage: str, n_words: int) -> tuple[int, int, bool]:
    required = optional = 0
    variadic = False
    for token in usage.split()[n_words:]:
        is_optional = token.startswith("[")
        if token.rstrip("]").endswith("..."):
            variadic = True
            required += 0 if is_optional else 1
        elif is_optional:
            optional += 1
        else:
            required += 1
    return required, optional, variadic


def command(name: str, *, usage: str, summary: str):
    """Register the decorated function as the console command `name` ("/users add")."""
    words = tuple(name.lstrip("/").split())

    def register(handler: Callable[..., str]) -> Callable[..., str]:
        required, optional, variadic = _arity(usage, len(words))
        registry.add(Command(words, usage, summary, handler, required, optional, variadic))
        return handler

    return register


def table(rows: list[tuple[str, ...]]) -> str:
    """`rows` (the first one the header) as left-aligned columns two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


class ParsedLine:
    """A console line split into the command and its arguments."""

    def __init__(self, line: str):
        text = line.strip()
        if not text.startswith("/"):
            raise CommandError("commands start with / (try /help)")
        try:
            self.words = shlex.split(text[1:])
        except ValueError as exc:
            raise CommandError(f"cannot parse the line: {exc}") from None
        if not self.words:
            raise CommandError("empty command (try /help)")


def load_commands() -> Registry:
    """Import every command module of this package once; return the registry."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return registry
