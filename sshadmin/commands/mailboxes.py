"""The /mail mailboxes console commands."""

from __future__ import annotations

from django.db.models import Count

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
    boxes = services.mailbox_list(domain=domain)
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
