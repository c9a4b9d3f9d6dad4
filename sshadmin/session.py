"""One console session: read lines, dispatch them to the command registry, print the result.

Three ways in, all through `run_session`:
- interactive (the client asked for a pty): a banner, a prompt, line editing and history
  (asyncssh's line editor), tab completion of commands, ^C discards the typed line; an error
  prints and the session goes on; /quit (or exit, quit) or ^D ends it;
- exec (`ssh host '/users list'`): the command line runs once; exit status 0, or 1 on error;
- piped (no pty, no command): every line of stdin runs in turn, without prompt; the exit
  status is 1 when any line failed.

Handlers are synchronous and touch the ORM, so each line runs in a worker thread.
Bad input prints `error: ...` and `usage: ...`; an unexpected failure is logged with its
traceback on the server and prints one error line to the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import asyncssh
from asgiref.sync import sync_to_async
from django.db import close_old_connections

from accounts.authentication import is_admin
from accounts.models import User
from sshadmin.commands import CommandError, Context, ParsedLine, load_commands
from sshadmin.commands.core import QuitConsole

log = logging.getLogger("sshadmin")

PROMPT = "everlock> "
BANNER = "Everlock admin console. /help lists the commands, tab completes them, /quit ends the session."
# Lines that end the session as /quit does, as people type them out of habit.
QUIT_WORDS = ("exit", "quit", "/exit")


@dataclass(frozen=True)
class Outcome:
    """What one line produced: `output` to print, or an `error` line with its `usage`."""

    output: str = ""
    error: str | None = None
    usage: str | None = None
    quit: bool = False

    @property
    def failed(self) -> bool:
        return self.error is not None

    def error_text(self) -> str:
        lines = [f"error: {self.error}"]
        if self.usage:
            lines.append(f"usage: {self.usage}")
        return "\n".join(lines) + "\n"


def _still_admin(ctx: Context) -> bool:
    """Re-read the logged-in user: a deleted, disabled or demoted admin runs nothing more."""
    if ctx.user is None:
        return True
    user = User.objects.filter(pk=ctx.user.pk, is_active=True).first()
    if user is None or not is_admin(user):
        return False
    ctx.user = user
    return True


def execute(line: str, ctx: Context) -> Outcome:
    """Run one console line synchronously (in a worker thread) and say what it produced."""
    if not line.strip():
        return Outcome()
    if line.strip() in QUIT_WORDS:
        return Outcome(quit=True)
    registry = load_commands()
    try:
        words = ParsedLine(line).words
    except CommandError as exc:
        return Outcome(error=str(exc), usage="/help")
    cmd, n = registry.find(words)
    if cmd is None:
        group = words[0]
        usage = f"/help {group}" if group in registry.groups() else "/help"
        return Outcome(error=f"unknown command /{' '.join(words)}", usage=usage)
    args = words[n:]
    close_old_connections()
    try:
        if not _still_admin(ctx):
            return Outcome(error="your admin rights were withdrawn; the session ends", quit=True)
        cmd.check_arity(args)
        return Outcome(output=cmd.handler(ctx, *args))
    except CommandError as exc:
        return Outcome(error=str(exc), usage=cmd.usage)
    except QuitConsole:
        return Outcome(quit=True)
    except Exception:
        log.exception("console command %r of %s failed", line, getattr(ctx.user, "username", "?"))
        return Outcome(error="internal error (logged on the server); nothing was changed", usage=cmd.usage)
    finally:
        close_old_connections()


async def run_line(line: str, ctx: Context) -> Outcome:
    return await sync_to_async(execute, thread_sensitive=False)(line, ctx)


def _write(process: asyncssh.SSHServerProcess, outcome: Outcome, *, errors_to_stderr: bool) -> None:
    if outcome.output:
        process.stdout.write(outcome.output.rstrip("\n") + "\n")
    if outcome.failed:
        (process.stderr if errors_to_stderr else process.stdout).write(outcome.error_text())


def _secret_reader(process: asyncssh.SSHServerProcess) -> Callable[[str], str]:
    """Context.ask_secret for an interactive session: called from a command's worker
    thread, it reads one line on the session's event loop with the line editor's echo off
    (so the line is neither shown nor kept in the history)."""
    loop = asyncio.get_running_loop()

    async def ask(prompt: str) -> str:
        process.stdout.write(prompt)
        process.channel.set_echo(False)
        try:
            line = await process.stdin.readline()
        finally:
            process.channel.set_echo(True)  # the editor still ended the line on the screen
        if not line:
            raise CommandError("input ended; nothing changed")
        return line.rstrip("\r\n")

    def ask_secret(prompt: str) -> str:
        return asyncio.run_coroutine_threadsafe(ask(prompt), loop).result()

    return ask_secret


def _discard_line(line: str, pos: int) -> tuple[str, int]:
    """^C: the typed line is dropped, as a shell does, instead of staying before the next one."""
    return "", 0


def _complete(line: str, pos: int) -> tuple[str, int] | bool:
    return load_commands().complete(line, pos) or False  # False rings the bell


def _register_keys(channel) -> None:
    channel.register_key("\x03", _discard_line)
    channel.register_key("\t", _complete)


async def run_session(process: asyncssh.SSHServerProcess, *, user, client_address: str) -> None:
    """Serve one SSH session channel of an authenticated admin, then exit it with a status."""
    interactive = process.term_type is not None
    ctx = Context(
        user=user,
        client_address=client_address,
        interactive=interactive,
        ask_secret=_secret_reader(process) if interactive else None,
    )
    status = 0
    try:
        if process.command is not None:
            outcome = await run_line(process.command, ctx)
            _write(process, outcome, errors_to_stderr=True)
            status = 1 if outcome.failed else 0
            return
        if interactive:
            _register_keys(process.channel)
            process.stdout.write(BANNER + "\n")
        while True:
            if interactive:
                process.stdout.write(PROMPT)
            try:
                line = await process.stdin.readline()
            except asyncssh.TerminalSizeChanged:
                continue
            except (asyncssh.BreakReceived, asyncssh.SignalReceived):
                process.stdout.write("\n")
                continue
            if not line:
                break
            outcome = await run_line(line, ctx)
            _write(process, outcome, errors_to_stderr=not interactive)
            if outcome.failed and (not interactive or outcome.quit):
                status = 1
            if outcome.quit:
                break
    except (asyncssh.BreakReceived, asyncssh.SignalReceived, asyncssh.TerminalSizeChanged):
        status = 1
    except (ConnectionError, asyncssh.DisconnectError):
        return
    finally:
        if not process.is_closing():
            process.exit(status)
