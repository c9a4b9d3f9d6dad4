"""The /mail mailboxes console commands."""

from __future__ import annotations

from django.db.models import Count, Q

from mail.models import Message
from mail.services import mailboxes as services
from mail.services.mailboxes import MailboxError
from sshadmin.commands import CommandError, command


@command("/mail mailboxes create", usage="/mail mailboxes create ADDRESS", summary="add a mailbox")
def mailboxes_create(ctx, address: str) -> str:
    try:
        mailbox, created = services.mailbox_create(address=address)
    except MailboxError as exc:
        raise CommandError(str(exc)) from None
    return f"mailbox {mailbox.address} {'created' if created else 'already exists'}"


@command("/mail mailboxes list", usage="/mail mailboxes list [DOMAIN]", summary="list mailboxes")
def mailboxes_list(ctx, domain: str | None = None) -> str:
    try:
        boxes = services.mailbox_list(domain=domain)
    except MailboxError as exc:
        raise CommandError(str(exc)) from None
    if not boxes:
        return "no mailboxes"
    counts = {
        row["folder__mailbox_id"]: row["n"]
        for row in Message.objects.filter(folder__mailbox__in=boxes)
        .values("folder__mailbox_id")
        .annotate(n=Count("id"))
    }
    rows = [("MAILBOX", "MESSAGES")] + [(m.address, str(counts.get(m.id, 0))) for m in boxes]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a.ljust(width)}  {n}" for a, n in rows)


@command(
    "/mail mailboxes delete", usage="/mail mailboxes delete ADDRESS", summary="delete a mailbox and its mail"
)
def mailboxes_delete(ctx, address: str) -> str:
    try:
        deleted = services.mailbox_delete(address=address)
    except MailboxError as exc:
        raise CommandError(str(exc)) from None
    if not deleted:
        raise CommandError(f"no mailbox {address}")
    return f"mailbox {address} deleted"


@command(
    "/mail mailboxes set",
    usage="/mail mailboxes set ADDRESS quota=SIZE",
    summary="set a mailbox's quota: quota=1G (K, M, G, T) or quota=none",
)
def mailboxes_set(ctx, address: str, *pairs: str) -> str:
    quota = ...
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if key != "quota" or not sep:
            raise CommandError(f"unknown setting {pair!r} (expected quota=SIZE)")
        try:
            quota = services.parse_size(value)
        except MailboxError as exc:
            raise CommandError(str(exc)) from None
    if quota is ...:
        raise CommandError("nothing to set (expected quota=SIZE)")
    try:
        mailbox = services.mailbox_set(address=address, quota=quota)
    except MailboxError as exc:
        raise CommandError(str(exc)) from None
    limit = "no quota" if mailbox.quota is None else f"quota {mailbox.quota} bytes"
    return f"mailbox {mailbox.address}: {limit}"


@command(
    "/mail mailboxes show",
    usage="/mail mailboxes show ADDRESS",
    summary="a mailbox's folders (messages, unseen), size and quota",
)
def mailboxes_show(ctx, address: str) -> str:
    try:
        mailbox = services.mailbox_find(address=address)
    except MailboxError as exc:
        raise CommandError(str(exc)) from None
    usage = services.mailbox_usage(mailbox.id)
    quota = "none" if mailbox.quota is None else f"{mailbox.quota} bytes"
    lines = [f"mailbox {mailbox.address}", f"size {usage} bytes, quota {quota}"]
    folders = (
        mailbox.folders.annotate(
            n=Count("messages"), unseen=Count("messages", filter=Q(messages__seen=False))
        )
        .order_by("name")
        .values_list("name", "n", "unseen")
    )
    rows = [("FOLDER", "MESSAGES", "UNSEEN")] + [(name, str(n), str(unseen)) for name, n, unseen in folders]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines += [f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}" for r in rows]
    return "\n".join(lines)
