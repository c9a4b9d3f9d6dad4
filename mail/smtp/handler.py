"""What the inbound and submission handlers share: EHLO keywords and the checks on the
envelope and the DATA bytes that need no database."""

from __future__ import annotations

import email.utils
import logging
import re

from mail import replies
from mail.addresses import Address, AddressError, parse_address
from mail.replies import Reply, SMTPReject
from mail.smtp.server import peer_host

log = logging.getLogger("mail.smtp")

_RECEIVED = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)


def envelope_address(text: str, *, invalid: Reply) -> Address:
    """Parse an address from MAIL/RCPT. aiosmtpd decodes arguments as UTF-8 with
    surrogateescape, so bytes that are not UTF-8 show up as surrogates: refused here, as
    are NUL, source routes and quoted local parts (mail.addresses.parse_address)."""
    try:
        text.encode("utf-8")
        return parse_address(text)
    except (UnicodeEncodeError, AddressError):
        raise SMTPReject(invalid) from None


def check_data(raw: bytes, *, max_hops: int) -> None:
    """Refuse DATA with a bare CR or LF (RFC 5321 section 2.3.8: only CRLF ends a line, so
    nothing can hide a second message) or more Received headers than `max_hops` (RFC 5321
    section 6.3, a mail loop)."""
    stripped = raw.replace(b"\r\n", b"")
    if b"\r" in stripped or b"\n" in stripped:
        raise SMTPReject(replies.BARE_LINE_ENDING)
    end = raw.find(b"\r\n\r\n")
    header = raw if end < 0 else raw[: end + 2]
    if len(_RECEIVED.findall(header)) > max_hops:
        raise SMTPReject(replies.TOO_MANY_HOPS)


def received_header(*, server, session, envelope) -> bytes:
    """The Received trace field (RFC 5321 section 4.4) for a message taken in this session;
    protocol names from RFC 3848 (ESMTPS with TLS, ESMTPA with AUTH, ESMTPSA with both)."""
    ssl_info = session.ssl or {}
    cipher = ssl_info.get("cipher") if hasattr(ssl_info, "get") else None
    if session.extended_smtp:
        protocol = "ESMTP" + ("S" if server.tls_active else "") + ("A" if session.authenticated else "")
    else:
        protocol = "SMTP"
    helo = (session.host_name or "unknown").encode("utf-8", "surrogateescape").decode("ascii", "replace")
    lines = [
        f"Received: from {helo} ([{peer_host(session.peer)}])",
        f"\tby {server.hostname} (Everlock) with {protocol}",
    ]
    if cipher:
        lines.append(f"\t(version={cipher[1]} cipher={cipher[0]} bits={cipher[2]})")
    if len(envelope.rcpt_tos) == 1:
        lines.append(f"\tfor <{envelope.rcpt_tos[0]}>")
    lines[-1] += f"; {email.utils.formatdate(usegmt=True)}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


class BaseHandler:
    """aiosmtpd handler hooks common to both listeners."""

    def __init__(self, config, committer):
        self.config = config
        self.committer = committer

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        lines = [r for r in responses if not r.startswith("250-AUTH")]
        if getattr(server, "offers_auth", False) and server.may_offer_auth():
            # The product doc's advertisement, in this order (RFC 4954 section 3).
            lines.insert(len(lines) - 1, "250-AUTH PLAIN LOGIN")
        return lines

    async def handle_exception(self, error):
        """An exception in aiosmtpd's own command handling: ours, so 451 and a log line."""
        log.error("SMTP session error", exc_info=error)
        return replies.LOCAL_ERROR
