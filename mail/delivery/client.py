"""The SMTP client that hands messages to a remote MX host (RFC 5321, RFC 3207).

A Connection is reused for message after message (mail.delivery.session): each transaction
leaves it ready for the next. smtplib does the dot-stuffing and CRLF normalisation of DATA
(RFC 5321 section 4.5.2).
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
import ssl
from dataclasses import dataclass, field

from mail.delivery.mta_sts import certificate_result
from mail.smtp.extensions import xtext_encode

log = logging.getLogger("mail.delivery")


class ConnectFailed(Exception):
    """No SMTP session with this host: refused, timed out, or a non-2xx greeting/EHLO."""


class TLSFailed(ConnectFailed):
    """TLS was required (MTA-STS) and could not be had: `result` is the RFC 8460 section
    4.3 result type ("starttls-not-supported", "certificate-host-mismatch", ...)."""

    def __init__(self, message: str, *, result: str):
        super().__init__(message)
        self.result = result


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


@dataclass(frozen=True)
class SendOptions:
    """The sender's requests a queue row carries (mail.models.OutboundDelivery): RET and
    ENVID (RFC 3461), REQUIRETLS (RFC 8689), BODY=BINARYMIME (RFC 3030), and per recipient
    address its NOTIFY and ORCPT ("addr-type;address")."""

    ret: str = ""
    envid: str = ""
    requiretls: bool = False
    binarymime: bool = False
    notify: dict[str, str] = field(default_factory=dict)
    orcpt: dict[str, str] = field(default_factory=dict)


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
        require_tls: bool = False,
        ca_file: str = "",
    ):
        """Dial `address`, read the greeting, EHLO, and STARTTLS when offered: verifying the
        certificate for `host` (against `ca_file`, else the system's store) when
        `tls_verify`. With `require_tls` (MTA-STS), a host without STARTTLS or whose
        certificate does not verify raises TLSFailed. Raises ConnectFailed otherwise."""
        self.host = host
        self.address = address
        self.tls = False
        self.tls_verified = False
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
            if require_tls and not self.smtp.has_extn("starttls"):
                raise TLSFailed(f"{host} [{address}]: STARTTLS not offered", result="starttls-not-supported")
            if self.smtp.has_extn("starttls"):
                context = ssl.create_default_context(cafile=ca_file or None)
                if not tls_verify:
                    # Opportunistic TLS (RFC 7435): encrypt even with an unverifiable cert.
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                code, msg = self.smtp.starttls(context=context)
                if code != 220:
                    text = f"{host} [{address}]: STARTTLS {code} {msg.decode(errors='replace')}"
                    if require_tls:
                        raise TLSFailed(text, result="starttls-not-supported")
                    raise ConnectFailed(text)
                self.tls = True
                self.tls_verified = tls_verify
                self.smtp.ehlo()
        except ConnectFailed:
            self.close()
            raise
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise TLSFailed(
                f"{host} [{address}]: certificate: {exc.verify_message}", result=certificate_result(exc)
            ) from None
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            if require_tls and isinstance(exc, ssl.SSLError):
                self.close()
                raise TLSFailed(f"{host} [{address}]: TLS: {exc}", result="validation-failure") from None
            self.close()
            raise ConnectFailed(f"{host} [{address}]: {exc}") from None

    @property
    def offers_dsn(self) -> bool:
        """Whether the host takes DSN parameters (RFC 3461): it reports on them itself."""
        return self.smtp.has_extn("dsn")

    def _reply(self) -> tuple[int, str]:
        code, msg = self.smtp.getreply()
        return code, msg.decode(errors="replace")

    def _mail_options(self, data: bytes, addresses: list[str], options: SendOptions) -> list[str] | tuple:
        """The MAIL FROM parameters for this host, or (code, text) when it cannot take the
        message as it is."""
        has = self.smtp.has_extn
        params = []
        if has("size"):
            # RFC 1870 section 6: a host with a smaller limit refuses at MAIL, before the data.
            params.append(f"SIZE={len(data)}")
        if options.binarymime:
            if not (has("chunking") and has("binarymime")):
                # RFC 3030 section 3: binary data cannot go to a host without BINARYMIME.
                return (554, "5.6.3 Remote host does not accept BINARYMIME")
            params.append("BODY=BINARYMIME")
        elif has("8bitmime"):
            params.append("BODY=8BITMIME")
        header_end = data.find(b"\r\n\r\n")
        if any(not a.isascii() for a in addresses) or not data[: max(header_end, 0)].isascii():
            # RFC 6531 section 3.4: UTF-8 in an address or the header needs SMTPUTF8. Only
            # addresses cannot travel without it; a UTF-8 header goes as is (as Postfix does).
            if has("smtputf8"):
                params.append("SMTPUTF8")
            elif any(not a.isascii() for a in addresses):
                return (553, "5.6.7 Remote host does not support SMTPUTF8")
        if options.requiretls:
            # RFC 8689 section 4.2: only over TLS with a verified certificate to a host that
            # offers REQUIRETLS, which then passes the requirement on.
            if not (self.tls_verified and has("requiretls")):
                return (550, "5.7.30 REQUIRETLS support required")
            params.append("REQUIRETLS")
        if has("dsn"):
            if options.ret:
                params.append(f"RET={options.ret}")
            if options.envid:
                params.append(f"ENVID={xtext_encode(options.envid)}")
        return params

    def _rcpt_options(self, address: str, options: SendOptions) -> str:
        if not self.smtp.has_extn("dsn"):
            return ""
        params = ""
        if options.notify.get(address):
            params += f" NOTIFY={options.notify[address]}"
        if options.orcpt.get(address):
            addr_type, _, original = options.orcpt[address].partition(";")
            params += f" ORCPT={addr_type};{xtext_encode(original)}"
        return params

    def send(
        self, *, envelope_from: str, recipients: list[str], data: bytes, options: SendOptions | None = None
    ) -> dict[str, tuple[int, str]]:
        """One transaction: MAIL, RCPT for each recipient, then the data (BDAT when the host
        offers CHUNKING, RFC 3030; else DATA) when one was accepted. MAIL and the RCPTs go
        in one write when the host offers PIPELINING (RFC 2920). SIZE, BODY, SMTPUTF8,
        REQUIRETLS and the DSN parameters (`options`) go along when the host takes them.
        The session is left ready for the next transaction: the reply to the data ends the
        transaction (RFC 5321 section 3.3), an unfinished one is ended with RSET.

        Returns the reply per recipient: the RCPT reply for a refused recipient, the data
        reply for accepted ones. Raises ConnectFailed when the session broke mid-way
        (recipients without a reply are then left to a retry).
        """
        options = options or SendOptions()
        replies: dict[str, tuple[int, str]] = {}
        try:
            for a in [envelope_from, *recipients]:
                if a and not _safe(a):
                    return {r: (553, "5.1.3 invalid address") for r in recipients}
            mail_options = self._mail_options(data, [envelope_from, *recipients], options)
            if isinstance(mail_options, tuple):
                return {a: mail_options for a in recipients}
            commands = [f"MAIL FROM:<{envelope_from}>" + "".join(f" {p}" for p in mail_options)]
            commands += [f"RCPT TO:<{a}>{self._rcpt_options(a, options)}" for a in recipients]
            if self.smtp.has_extn("pipelining"):
                self.smtp.send("".join(f"{c}\r\n" for c in commands).encode())
                answers = [self._reply() for _ in commands]
            else:
                answers = []
                for command in commands:
                    self.smtp.send(f"{command}\r\n".encode())
                    answers.append(self._reply())
                    if answers[0][0] != 250:
                        break
            code, text = answers[0]
            if code != 250:
                self.smtp.rset()
                return {a: (code, text) for a in recipients}
            accepted = []
            for a, (code, text) in zip(recipients, answers[1:], strict=True):
                if code in (250, 251):
                    accepted.append(a)
                else:
                    replies[a] = (code, text)
            if not accepted:
                self.smtp.rset()
                return replies
            if self.smtp.has_extn("chunking"):
                # One chunk: the stored message is already CRLF-terminated, no dot-stuffing.
                self.smtp.send(b"BDAT %d LAST\r\n" % len(data) + data)
                code, text = self._reply()
                if code >= 300:
                    # RFC 3030 section 2: a refused chunk fails the transaction; end it.
                    self.smtp.rset()
            else:
                code, msg = self.smtp.data(data)
                text = msg.decode(errors="replace")
            for a in accepted:
                replies[a] = (code, text)
            return replies
        except smtplib.SMTPDataError as exc:
            # smtplib raises for a non-354 answer to DATA: the transaction is still open.
            text = (
                exc.smtp_error.decode(errors="replace")
                if isinstance(exc.smtp_error, bytes)
                else str(exc.smtp_error)
            )
            for a in recipients:
                replies.setdefault(a, (exc.smtp_code, text))
            with contextlib.suppress(OSError, smtplib.SMTPException):
                # A connection this breaks shows at the next transaction, which redials.
                self.smtp.rset()
            return replies
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise ConnectFailed(f"{self.host} [{self.address}]: {exc}") from None

    def close(self) -> None:
        try:
            self.smtp.quit()
        except (OSError, smtplib.SMTPException):
            with contextlib.suppress(OSError):
                self.smtp.close()
