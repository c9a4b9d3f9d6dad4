"""The /mail messages console commands: what a mailbox holds, read-only."""

from __future__ import annotations

from mail.addresses import AddressError, parse_address
from mail.models import Mailbox, Message
from mail.services.delivery import stored_results
from mail.services.storage import read_content
from sshadmin.commands import CommandError, command


def _mailbox(address: str) -> Mailbox:
    try:
        parsed = parse_address(address)
    except AddressError as exc:
        raise CommandError(str(exc)) from None
    mailbox = Mailbox.objects.filter(domain__name=parsed.domain, local_part=parsed.local.casefold()).first()
    if mailbox is None:
        raise CommandError(f"no mailbox {address}")
    return mailbox


@command(
    "/mail messages list",
    usage="/mail messages list ADDRESS [FOLDER]",
    summary="list a mailbox's messages, newest first (of one folder when given)",
)
def messages_list(ctx, address: str, folder: str | None = None) -> str:
    mailbox = _mailbox(address)
    messages = Message.objects.filter(folder__mailbox=mailbox).select_related("folder")
    if folder is not None:
        messages = messages.filter(folder__name=folder)
    # FLAGS as IMAP clients left them (\\Seen, \\Flagged, keywords), "-" for none.
    rows = [("ID", "FOLDER", "FLAGS", "FROM", "SUBJECT")]
    rows += [
        (str(m.id), m.folder.name, " ".join(m.flags) or "-", m.header_from or m.envelope_from, m.subject)
        for m in messages
    ]
    if len(rows) == 1:
        return f"no messages in {mailbox.address}" + (f" {folder}" if folder is not None else "")
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows
    )


@command(
    "/mail messages show",
    usage="/mail messages show ID",
    summary="print a stored message as its mailbox holds it (headers and body), after the "
    "results of the inbound checks when it has them",
)
def messages_show(ctx, message_id: str) -> str:
    if not message_id.isdigit():
        raise CommandError(f"message id must be a number, got {message_id!r}")
    message = (
        Message.objects.select_related("content", "folder__mailbox__domain")
        .filter(id=int(message_id))
        .first()
    )
    if message is None:
        raise CommandError(f"no message {message_id}")
    raw = bytes(message.prepended_headers) + read_content(message.content)
    checks = stored_results(message, raw)
    summary = "".join(f"checks: {line}\n" for line in checks) + ("\n" if checks else "")
    return summary + raw.decode("utf-8", errors="replace")
