"""Vacation auto-replies: when one may be sent (RFC 3834, RFC 5230) and what it says. Pure.

The once-per-sender-per-days memory lives in the database (mail.models.rules.VacationReply)
and is asked through the evaluator's Gate; this module only looks at the message.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP

from mail.message import field_addresses
from mail.rules.language import Vacation
from mail.rules.plan import MessageFacts, OutgoingMessage

# RFC 5230 section 4.6 / RFC 3834 section 2: senders that are programs, not people.
_DAEMON_LOCALS = ("mailer-daemon", "postmaster", "listserv", "majordomo", "noreply", "no-reply", "bounce")
_RECIPIENT_HEADERS = ("to", "cc", "bcc", "resent-to", "resent-cc")


def refusal(facts: MessageFacts, header: Callable[[str], list[str]], vacation: Vacation) -> str | None:
    """Why no auto-reply may answer this message, or None when one may (rate limit aside)."""
    sender = facts.envelope_from
    # RFC 3834 section 2: never respond to the null reverse-path.
    if not sender:
        return "null sender"
    if not facts.sender_verified:
        return f"the sender {sender} passed neither SPF nor DMARC"
    # RFC 3834 section 2: do not answer one's own mail (a copy to oneself).
    if sender.lower() == facts.recipient.lower() or sender.lower() in vacation.addresses:
        return "the recipient's own address"
    local = sender.rpartition("@")[0].lower()
    if local in _DAEMON_LOCALS or local.startswith("owner-") or local.endswith("-request"):
        return f"automated sender {sender}"
    # RFC 3834 section 5: Auto-Submitted other than "no" is not answered.
    for value in header("auto-submitted"):
        if value.split(";")[0].strip().lower() != "no":
            return f"Auto-Submitted: {value}"
    # RFC 3834 section 3.1.8 and RFC 2076: list and bulk traffic is not answered.
    for value in header("precedence"):
        if value.strip().lower() in ("bulk", "list", "junk"):
            return f"Precedence: {value}"
    for name in (
        "list-id",
        "list-help",
        "list-unsubscribe",
        "list-subscribe",
        "list-post",
        "list-owner",
        "list-archive",
    ):
        if header(name):
            return "mailing list message"
    # RFC 5230 section 4.5: only mail that names the recipient is answered (not Bcc'd lists).
    mine = {facts.recipient.lower(), *vacation.addresses}
    named = set()
    for name in _RECIPIENT_HEADERS:
        named.update(addr.lower() for addr in field_addresses(header(name)))
    if not mine & named:
        return "the recipient is not named in To or Cc"
    return None


def reply(
    facts: MessageFacts,
    header: Callable[[str], list[str]],
    vacation: Vacation,
    *,
    now: Callable[[], float] | None = None,
) -> OutgoingMessage:
    """The auto-reply to facts.envelope_from, sent from the null sender (RFC 3834 3.3)."""
    original_subject = (header("subject") or [""])[0]
    subject = vacation.subject or f"Auto: {original_subject}".strip()
    domain = facts.recipient.rpartition("@")[2]
    msg = EmailMessage(policy=SMTP)
    msg["From"] = vacation.sender or facts.recipient
    msg["To"] = facts.envelope_from
    msg["Subject"] = subject
    # RFC 5322 section 3.3: UTC as +0000 ("-0000" would say the zone is unknown).
    moment = datetime.fromtimestamp(now() if now else time.time(), UTC)
    msg["Date"] = email.utils.format_datetime(moment)
    msg["Message-ID"] = email.utils.make_msgid(domain=domain)
    original_id = (header("message-id") or [""])[0].strip()
    if original_id:
        # RFC 3834 section 3.1.5: thread the reply to the message it answers.
        msg["In-Reply-To"] = original_id
        references = " ".join([*(header("references") or [""])[:1], original_id]).strip()
        msg["References"] = references
    # RFC 3834 section 5.1.
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(vacation.body)
    return OutgoingMessage(envelope_from="", recipients=(facts.envelope_from,), data=msg.as_bytes())
