"""SMTP replies: the one exception that carries a refusal, and the replies we send by name.

Codes are RFC 5321 section 4.2 reply codes; enhanced codes are RFC 3463 (with RFC 4954 for
AUTH and RFC 3207 for STARTTLS). A service raises SMTPReject; the SMTP handlers turn it into
the reply line in one place.
"""

from __future__ import annotations


class SMTPReject(Exception):
    """Refuse a command with `code enhanced text` (RFC 5321 section 4.2, RFC 3463)."""

    def __init__(self, code: int, enhanced: str, text: str):
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text

    @property
    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


def reply(code: int, enhanced: str, text: str) -> str:
    return f"{code} {enhanced} {text}"


# Successes.
SENDER_OK = reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = reply(250, "2.1.5", "Recipient OK")
ACCEPTED = reply(250, "2.0.0", "Accepted")
AUTH_OK = reply(235, "2.7.0", "Authentication successful")  # RFC 4954 section 6

# Our own failure (database, storage): the client retries later. RFC 3463 X.3.0.
LOCAL_ERROR = reply(451, "4.3.0", "Temporary local problem")

# A mailbox accepted at RCPT was deleted before DATA: try again later (RFC 3463 X.2.0).
MAILBOX_CHANGED = SMTPReject(451, "4.2.0", "Mailbox changed, try again later")

# Recipients (RFC 5321 section 3.6.2: relaying only for our own domains).
RELAY_DENIED = SMTPReject(554, "5.7.1", "Relaying denied")
UNKNOWN_USER = SMTPReject(550, "5.1.1", "Mailbox unavailable")
BAD_RECIPIENT = SMTPReject(553, "5.1.3", "Invalid recipient address")
BAD_SENDER = SMTPReject(553, "5.1.7", "Invalid sender address")
# RFC 5321 section 4.5.3.1.8: "452 too many recipients" is the transient answer.
TOO_MANY_RECIPIENTS = SMTPReject(452, "4.5.3", "Too many recipients")

# Message content.
MESSAGE_TOO_BIG = SMTPReject(552, "5.3.4", "Message too big")
# RFC 5321 section 6.3: a message with too many Received headers is a loop.
TOO_MANY_HOPS = SMTPReject(554, "5.4.6", "Too many hops, mail loop detected")
# RFC 5321 section 2.3.8: lines end with CRLF only; a bare CR or LF could smuggle a second
# message past another server's idea of where DATA ends.
BARE_LINE_ENDING = SMTPReject(550, "5.6.0", "Bare CR or LF in message data")
LINE_TOO_LONG = SMTPReject(500, "5.5.6", "Line too long")  # RFC 5321 section 4.5.3.1.6
BAD_HEADERS = SMTPReject(550, "5.6.0", "Malformed message headers")

# Submission (RFC 6409) and AUTH (RFC 4954).
AUTH_REQUIRED = SMTPReject(530, "5.7.0", "Authentication required")
AUTH_INVALID = SMTPReject(535, "5.7.8", "Authentication credentials invalid")
AUTH_THROTTLED = SMTPReject(454, "4.7.0", "Too many failed logins, try again later")
AUTH_NEEDS_TLS = SMTPReject(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_NOT_OFFERED = SMTPReject(502, "5.5.1", "AUTH not available on this port")
SENDER_NOT_ALLOWED = SMTPReject(553, "5.7.1", "Sender address not allowed for this user")
FROM_NOT_ALLOWED = SMTPReject(550, "5.7.1", "From header address not allowed for this user")
ONE_FROM_REQUIRED = SMTPReject(550, "5.7.1", "Exactly one From address is required")

# Session (RFC 3207 section 4.2: no second STARTTLS).
TLS_ACTIVE = SMTPReject(503, "5.5.1", "TLS already active")
TOO_MANY_CONNECTIONS = SMTPReject(421, "4.7.0", "Too many connections from your address")
IDLE_TIMEOUT = SMTPReject(421, "4.4.2", "Idle timeout, closing")
SESSION_TOO_LONG = SMTPReject(421, "4.4.2", "Session time limit exceeded, closing")
