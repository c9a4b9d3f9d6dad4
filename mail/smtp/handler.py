"""What the inbound and submission handlers share: EHLO keywords and the checks on the
envelope and the DATA bytes that need no database."""

from __future__ import annotations

import email.utils
import inspect
import logging
import re
from datetime import UTC, datetime

from mail import replies
from mail.addresses import Address, AddressError, parse_address
from mail.replies import Reply, SMTPReject
from mail.smtp.extensions import EnvelopeParams, MailParams, RcptParams
from mail.smtp.server import peer_host, seam_names

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


def mail_params(envelope) -> MailParams:
    """The MAIL parameters of mail.smtp.extensions the envelope was given."""
    return getattr(envelope, "mail_params", None) or MailParams()


def rcpt_params(envelope, address: str) -> RcptParams:
    """The RCPT parameters of mail.smtp.extensions given with `address`."""
    return (getattr(envelope, "rcpt_params", None) or {}).get(address) or RcptParams()


def envelope_params(envelope, *, delivered_here: list[str]) -> EnvelopeParams:
    """The transaction's parameters as one value, for the services (see EnvelopeParams)."""
    given = getattr(envelope, "rcpt_params", None) or {}
    return EnvelopeParams(
        mail=mail_params(envelope),
        recipients=tuple((a, p) for a, p in given.items() if p != RcptParams()),
        delivered_here=tuple(delivered_here),
    )


def check_data(raw: bytes, *, max_hops: int, binary: bool = False) -> None:
    """Refuse DATA with a bare CR or LF (RFC 5321 section 2.3.8: only CRLF ends a line, so
    nothing can hide a second message) or more Received headers than `max_hops` (RFC 5321
    section 6.3, a mail loop). A `binary` body (BODY=BINARYMIME, RFC 3030 section 3) may hold
    any bytes: only its header section is checked for line endings."""
    end = raw.find(b"\r\n\r\n")
    header = raw if end < 0 else raw[: end + 2]
    text = header if binary else raw
    # Every CR and every LF is part of a CRLF: three counts, no copy of the message.
    crlf = text.count(b"\r\n")
    if text.count(b"\r") != crlf or text.count(b"\n") != crlf:
        raise SMTPReject(replies.BARE_LINE_ENDING)
    if len(_RECEIVED.findall(header)) > max_hops:
        raise SMTPReject(replies.TOO_MANY_HOPS)


def received_header(*, server, session, envelope) -> bytes:
    """The Received trace field (RFC 5321 section 4.4) for a message taken in this session;
    protocol names from RFC 3848 (ESMTPS with TLS, ESMTPA with AUTH, ESMTPSA with both) and
    RFC 6531 section 3.7.3 (UTF8SMTP, UTF8SMTPS, UTF8SMTPA, UTF8SMTPSA with SMTPUTF8); the
    date in UTC as +0000 (RFC 5322 section 3.3: "GMT" is obsolete)."""
    ssl_info = session.ssl or {}
    cipher = ssl_info.get("cipher") if hasattr(ssl_info, "get") else None
    if session.extended_smtp:
        protocol = (
            ("UTF8SMTP" if envelope.smtp_utf8 else "ESMTP")
            + ("S" if server.tls_active else "")
            + ("A" if session.authenticated else "")
        )
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
    lines[-1] += f"; {email.utils.format_datetime(datetime.now(UTC))}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


class BaseHandler:
    """aiosmtpd handler hooks common to both listeners."""

    def __init__(self, config, committer):
        self.config = config
        self.committer = committer

    def __dir__(self):
        # What aiosmtpd looks for on a handler, for every connection (see EverlockSMTP.__dir__).
        return seam_names(type(self), ("handle_", "auth_"))

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        """The EHLO keywords, in Postfix's order: aiosmtpd's SIZE, 8BITMIME, SMTPUTF8 and
        STARTTLS, our AUTH, and the extensions the protocol (mail.smtp.server) implements:
        PIPELINING (RFC 2920), ENHANCEDSTATUSCODES (RFC 2034), BINARYMIME and CHUNKING
        (RFC 3030), DSN (RFC 3461), REQUIRETLS (RFC 8689, offered over TLS only)."""
        session.host_name = hostname
        given = {r[4:].split(" ")[0]: r[4:] for r in responses[1:]}
        keywords = ["PIPELINING", *([given["SIZE"]] if "SIZE" in given else [])]
        if "STARTTLS" in given:
            keywords.append("STARTTLS")
        if getattr(server, "offers_auth", False) and server.may_offer_auth():
            keywords.append("AUTH PLAIN LOGIN")  # RFC 4954 section 3
        keywords += ["ENHANCEDSTATUSCODES", "8BITMIME", "BINARYMIME", "DSN", "SMTPUTF8", "CHUNKING"]
        if server.tls_active:
            keywords.append("REQUIRETLS")
        return [responses[0], *(f"250-{k}" for k in keywords), "250 HELP"]

    # aiosmtpd reads the hook's signature (inspect.signature, to tell its four-argument form
    # from the five-argument one) in the constructor of every connection: some 100
    # microseconds a connection. A function's __signature__ is what inspect.signature
    # returns for it (PEP 362), so it is worked out once here.
    handle_EHLO.__signature__ = inspect.signature(handle_EHLO)

    async def handle_exception(self, error):
        """An exception in aiosmtpd's own command handling: ours, so 451 and a log line."""
        log.error("SMTP session error", exc_info=error)
        return replies.LOCAL_ERROR
