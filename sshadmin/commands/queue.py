"""The /mail queue console commands: the outbound queue."""

from __future__ import annotations

from mail.delivery.queue import (
    QueueError,
    format_detail,
    format_list,
    queue_delete,
    queue_hold,
    queue_list,
    queue_release,
    queue_retry,
    queue_show,
)
from sshadmin.commands import CommandError, command


def _id(text: str) -> int:
    try:
        return int(text.lstrip("#"))
    except ValueError:
        raise CommandError(f"not a queue entry id: {text!r}") from None


def _run(fn, text: str):
    try:
        return fn(id=_id(text))
    except QueueError as exc:
        raise CommandError(str(exc)) from None


@command("/mail queue list", usage="/mail queue list [all]", summary="list the outbound queue")
def queue_list_cmd(ctx, which: str = "") -> str:
    if which not in ("", "all"):
        raise CommandError("the only option is: all")
    return format_list(queue_list(include_done=which == "all"))


@command("/mail queue show", usage="/mail queue show ID", summary="show an outbound queue entry")
def queue_show_cmd(ctx, id: str) -> str:
    return format_detail(_run(queue_show, id))


@command("/mail queue retry", usage="/mail queue retry ID", summary="attempt a queue entry now")
def queue_retry_cmd(ctx, id: str) -> str:
    entry = _run(queue_retry, id)
    return f"queue entry #{entry.id} will be attempted now"


@command("/mail queue hold", usage="/mail queue hold ID", summary="stop attempting a queue entry")
def queue_hold_cmd(ctx, id: str) -> str:
    entry = _run(queue_hold, id)
    return f"queue entry #{entry.id} held"


@command("/mail queue release", usage="/mail queue release ID", summary="attempt a held queue entry again")
def queue_release_cmd(ctx, id: str) -> str:
    entry = _run(queue_release, id)
    return f"queue entry #{entry.id} released (next attempt {entry.next_attempt_at:%Y-%m-%d %H:%M:%S})"


@command("/mail queue delete", usage="/mail queue delete ID", summary="drop a queue entry without a bounce")
def queue_delete_cmd(ctx, id: str) -> str:
    if not _run(queue_delete, id):
        raise CommandError(f"no queue entry #{_id(id)}")
    return f"queue entry #{_id(id)} deleted"
