"""The SMTP client that hands messages to a remote MX host (RFC 5321, RFC 3207).

One Connection per destination host, reused for every message of a batch to that domain
(RSET between transactions). smtplib does the dot-stuffing and CRLF normalisation of DATA
(RFC 5321 section 4.5.2).
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
import ssl

log = logging.getLogger("mail.delivery")


class ConnectFailed(Exception):
    """No SMTP session with this host: refused, timed out, or a non-2xx greeting/EHLO."""


def _safe(address: str) -> bool:
    # RFC 5321 section 4.1.2: a path has no CR, LF or other controls; refusing them here
    # makes command injection impossible whatever reached the queue.
    return (
        bool(address)
        and not any(ord(c) < 32 or ord(c) == 127 for c in address)
        and " " not in address
        and "<" not in address
        and ">" not in address
    )


class Connection:
    """An SMTP session with one remote host, EHLO done and STARTTLS used when offered."""

    def __init__(
        self,
        *,
        host: str,
        address: str,
        port: int,
        helo_hostname: str,
        tls_verify: bool,
        timeout: float = 60.0,
        source_address: str | None = None,
    ):
        self.host = host
        self.address = address
        self.tls = False
        try:
            self.smtp = smtplib.SMTP(
                timeout=timeout,
                local_hostname=helo_hostname,
                source_address=(source_address, 0) if source_address else None,
            )
            # starttls() sends this as SNI and checks the certificate against it: the MX
            # host's name, not the address we dialled.
            self.smtp._host = host
            code, msg = self.smtp.connect(address, port)
        except (OSError, smtplib.SMTPException) as exc:
            raise ConnectFailed(f"{host} [{address}]:{port}: {exc}") from None
        try:
            if code != 220:
                raise ConnectFailed(f"{host} [{address}]: greeting {code} {msg.decode(errors='replace')}")
            code, msg = self.smtp.ehlo()
            if code != 250:
                code, msg = self.smtp.helo()
                if code != 250:
                    raise ConnectFailed(f"{host} [{address}]: HELO {code} {msg.decode(errors='replace')}")
            if self.smtp.has_extn("starttls"):
                context = ssl.create_default_context()
                if not tls_verify:
                    # Opportunistic TLS (RFC 7435): encrypt even with an unverifiable cert.
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                code, msg = self.smtp.starttls(context=context)
                if code != 220:
                    raise ConnectFailed(f"{host} [{address}]: STARTTLS {code} {msg.decode(errors='replace')}")
                self.tls = True
                self.smtp.ehlo()
        except ConnectFailed:
            self.close()
            raise
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            self.close()
            raise ConnectFailed(f"{host} [{address}]: {exc}") from None

    def send(
        self, *, envelope_from: str, recipients: list[str], data: bytes
    ) -> tuple[dict[str, tuple[int, str]], bool]:
        """One transaction: MAIL, RCPT for each recipient, DATA when one was accepted.

        Returns (reply per recipient, reusable): the RCPT reply for a refused recipient, the
        DATA reply for accepted ones. Raises ConnectFailed when the session broke mid-way
        (recipients without a reply are then left to a retry).
        """
        replies: dict[str, tuple[int, str]] = {}
        try:
            options = []
            if self.smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            if any(not a.isascii() for a in [envelope_from, *recipients]):
                if not self.smtp.has_extn("smtputf8"):
                    # RFC 6531 section 3.4: no SMTPUTF8, no UTF-8 addresses.
                    return {a: (553, "5.6.7 remote host does not support SMTPUTF8") for a in recipients}, True
                options.append("SMTPUTF8")
            for a in [envelope_from, *recipients]:
                if a and not _safe(a):
                    return {r: (553, "5.1.3 invalid address") for r in recipients}, True
            code, msg = self.smtp.mail(envelope_from, options)
            if code != 250:
                text = msg.decode(errors="replace")
                self.smtp.rset()
                return {a: (code, text) for a in recipients}, True
            accepted = []
            for a in recipients:
                code, msg = self.smtp.rcpt(a)
                if code in (250, 251):
                    accepted.append(a)
                else:
                    replies[a] = (code, msg.decode(errors="replace"))
            if not accepted:
                self.smtp.rset()
                return replies, True
            code, msg = self.smtp.data(data)
            text = msg.decode(errors="replace")
            for a in accepted:
                replies[a] = (code, text)
            return replies, True
        except smtplib.SMTPDataError as exc:
            # smtplib raises for a non-354 answer to DATA.
            text = (
                exc.smtp_error.decode(errors="replace")
                if isinstance(exc.smtp_error, bytes)
                else str(exc.smtp_error)
            )
            for a in recipients:
                replies.setdefault(a, (exc.smtp_code, text))
            return replies, True
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise ConnectFailed(f"{self.host} [{self.address}]: {exc}") from None

    def reset(self) -> bool:
        """RSET before another transaction; False when the session is no longer usable."""
        try:
            return self.smtp.rset()[0] == 250
        except (OSError, smtplib.SMTPException):
            return False

    def close(self) -> None:
        try:
            self.smtp.quit()
        except (OSError, smtplib.SMTPException):
            with contextlib.suppress(OSError):
                self.smtp.close()
