"""SMTP replies as values: the replies we send by name, and the one exception that carries a
refusal.

Codes are RFC 5321 section 4.2 reply codes; enhanced codes are RFC 3463 (with RFC 4954 for
AUTH and RFC 3207 for STARTTLS). A reply is a frozen value, shared freely; a service refuses
with a fresh `SMTPReject(reply)` each time (never a shared exception instance: raising one
again chains each traceback onto it and pins every frame and its data for the life of the
process). The SMTP listener (mail.smtp.server) turns replies into wire lines in one place.
Pure: imports nothing of the server, so services may use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """`code enhanced text` (RFC 5321 section 4.2, RFC 3463)."""

    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


class SMTPReject(Exception):
    """Refuse a command with `reply`. Raise a new one per refusal: `raise SMTPReject(X)`."""

    def __init__(self, reply: Reply):
        super().__init__(reply)
        self.reply = reply

    def __str__(self) -> str:
        return str(self.reply)


# Successes.
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
ACCEPTED = Reply(250, "2.0.0", "Accepted")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")  # RFC 4954 section 6

# Our own failure (database, storage): the client retries later. RFC 3463 X.3.0.
LOCAL_ERROR = Reply(451, "4.3.0", "Temporary local problem")

# A mailbox accepted at RCPT was deleted before DATA: try again later (RFC 3463 X.2.0).
MAILBOX_CHANGED = Reply(451, "4.2.0", "Mailbox changed, try again later")

# Recipients (RFC 5321 section 3.6.2: relaying only for our own domains).
RELAY_DENIED = Reply(554, "5.7.1", "Relaying denied")
UNKNOWN_USER = Reply(550, "5.1.1", "Mailbox unavailable")
BAD_RECIPIENT = Reply(553, "5.1.3", "Invalid recipient address")
BAD_SENDER = Reply(553, "5.1.7", "Invalid sender address")
# The mailbox is at its quota (RFC 3463 X.2.2): temporary, the sender retries once mail is gone.
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full")
# RFC 5321 section 4.5.3.1.8: "452 too many recipients" is the transient answer.
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")

# Message content.
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message too big")
# RFC 5321 section 6.3: a message with too many Received headers is a loop.
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many hops, mail loop detected")
# RFC 5321 section 2.3.8: lines end with CRLF only; a bare CR or LF could smuggle a second
# message past another server's idea of where DATA ends.
BARE_LINE_ENDING = Reply(550, "5.6.0", "Bare CR or LF in message data")
LINE_TOO_LONG = Reply(500, "5.5.6", "Line too long")  # RFC 5321 section 4.5.3.1.6
COMMAND_TOO_LONG = Reply(500, "5.5.2", "Command line too long")  # RFC 5321 section 4.5.3.1.4
BAD_HEADERS = Reply(550, "5.6.0", "Malformed message headers")

# Submission (RFC 6409) and AUTH (RFC 4954).
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_THROTTLED = Reply(454, "4.7.0", "Too many failed logins, try again later")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_NOT_OFFERED = Reply(502, "5.5.1", "AUTH not available on this port")
SENDER_NOT_ALLOWED = Reply(553, "5.7.1", "Sender address not allowed for this user")
FROM_NOT_ALLOWED = Reply(550, "5.7.1", "From header address not allowed for this user")
ONE_FROM_REQUIRED = Reply(550, "5.7.1", "Exactly one From address is required")

# Session (RFC 3207 section 4.2: no second STARTTLS).
TLS_ACTIVE = Reply(503, "5.5.1", "TLS already active")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from your address")
# RFC 5321 section 3.8: a server that cannot serve now answers 421 and closes.
SERVER_BUSY = Reply(421, "4.7.0", "Too many connections, try again later")
IDLE_TIMEOUT = Reply(421, "4.4.2", "Idle timeout, closing")
SESSION_TOO_LONG = Reply(421, "4.4.2", "Session time limit exceeded, closing")
# RFC 5321 section 3.1: after a 554 greeting the server waits for QUIT and answers every other
# command 503 (the wording of Postfix's smtpd with smtpd_delay_reject=no).
REFUSED_AT_CONNECT = Reply(503, "5.7.0", "Access denied, only QUIT is accepted")
BYE = Reply(221, "2.0.0", "Bye")
# A client that goes on regardless is let go (Postfix's smtpd_hard_error_limit).
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing")

# Inbound checks (mail.auth). RFC 7489 section 6.6.3 / 10.3: a DMARC p=reject message is
# refused during the SMTP session, so no bounce is ever generated.
DMARC_REJECT = Reply(550, "5.7.1", "Rejected by the DMARC policy of the From domain")
# RFC 7208 section 8.6 (and RFC 7489 for its DNS): a temporary DNS failure while deciding is
# answered 451 4.4.3, so the sender retries; never a 5xx.
AUTH_DNS_TEMPORARY = Reply(451, "4.4.3", "Temporary DNS failure checking the sender, try again later")


def dnsbl_listed(text: str) -> Reply:
    """554 5.7.1 with the DNSBL's TXT record (RFC 5782 section 2.1), one line of printable
    ASCII."""
    line = "".join(c if " " <= c <= "~" else " " for c in text)[:400].strip()
    return Reply(554, "5.7.1", f"Client address listed: {line}")
