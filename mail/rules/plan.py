"""What local delivery does for one recipient: the outcome of the rules. Pure: no Django.

mail.rules.engine.plan_delivery() builds a DeliveryPlan from MessageFacts; local delivery
(mail.services.delivery) carries it out inside the transaction that files the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INBOX = "inbox"
# Where the implicit keep goes when the sender's DMARC policy says quarantine (RFC 7489
# section 6.3): the IMAP Junk folder (RFC 6154 \Junk).
JUNK = "Junk"


@dataclass(frozen=True)
class MessageFacts:
    """What rules may look at. `headers` keeps order and repeats: (name, value) pairs."""

    envelope_from: str  # "" for the null sender
    recipient: str  # local@domain, domain in normal form
    headers: tuple[tuple[str, str], ...]
    size: int
    authenticated: bool  # submitted by an authenticated user (port 587)
    # The whole message as received (Return-Path/Received included); redirects send it on.
    raw: bytes = b""
    # The receiving server's Authentication-Results (mail.auth), "method=result" each, as
    # ("spf=pass", "dkim=pass", "dkim=fail", "dmarc=pass", "arc=none", "iprev=pass"); None
    # when the message was not checked (submission, or the checks are off).
    auth: tuple[str, ...] | None = None
    # The DMARC disposition was quarantine: the implicit keep files into JUNK.
    quarantined: bool = False

    def results(self, method: str) -> list[str]:
        """The results of `method` (several for dkim, one per signature)."""
        prefix = method + "="
        return [a[len(prefix) :] for a in self.auth or () if a.startswith(prefix)]

    @property
    def sender_verified(self) -> bool:
        """Whether an automatic reply may go to the envelope sender: it authenticated, or
        passed SPF or DMARC here (a forged sender would get the reply otherwise:
        backscatter). Unchecked mail (checks off) is not held back."""
        if self.authenticated or self.auth is None:
            return True
        return "spf=pass" in self.auth or "dmarc=pass" in self.auth

    @property
    def keep_folder(self) -> str:
        """Where the implicit keep files the message."""
        return JUNK if self.quarantined else INBOX


@dataclass(frozen=True)
class Filing:
    folder: str
    seen: bool = False
    flagged: bool = False


@dataclass(frozen=True)
class Rejection:
    """Refuse the message at SMTP time with this reply (RFC 5321 section 4.2)."""

    code: int
    enhanced: str
    text: str


@dataclass(frozen=True)
class OutgoingMessage:
    """A message the rules send (a redirect or an auto-reply), complete with its headers.

    `carries_message` is true for a redirect or forward (the received message sent on): when
    it cannot reach a local target, local delivery keeps it in the redirecting mailbox; sent
    to another server, its envelope sender is rewritten (mail.auth.srs)."""

    envelope_from: str
    recipients: tuple[str, ...]
    data: bytes
    carries_message: bool = False
    # The original sender passed SPF or DMARC (MessageFacts.sender_verified): a bounce of the
    # message sent on may go back to it (mail.auth.srs).
    sender_verified: bool = True


@dataclass
class DeliveryPlan:
    """Filed into `filings` (inbox when empty), unless discarded or rejected."""

    filings: list[Filing] = field(default_factory=list)
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    outgoing: list[OutgoingMessage] = field(default_factory=list)
    discard: bool = False
    reject: Rejection | None = None
    matched: list[str] = field(default_factory=list)  # names of the rules that matched
    refused: list[str] = field(default_factory=list)  # redirects not made, and why

    def folders(self) -> list[Filing]:
        if self.reject is not None or self.discard:
            return []
        return self.filings or [Filing(INBOX)]
