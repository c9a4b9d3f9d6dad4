"""The ESMTP parameters Everlock implements beyond aiosmtpd's (SIZE, BODY=8BITMIME, SMTPUTF8).

Pure: parses the parameters of a MAIL or RCPT command into values, raises SMTPReject for a
bad one. The protocol (mail.smtp.server) takes these parameters off the command before
aiosmtpd reads the rest, and keeps the values on the envelope.

- DSN (RFC 3461): RET=FULL|HDRS and ENVID=xtext on MAIL, NOTIFY=NEVER|SUCCESS,FAILURE,DELAY
  and ORCPT=addr-type;xtext on RCPT.
- REQUIRETLS (RFC 8689 section 4.1) on MAIL, over TLS only.
- BODY=BINARYMIME (RFC 3030 section 3) on MAIL: the message then comes with BDAT only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mail.replies import Reply, SMTPReject

# RFC 3461 section 4: xtext is printable ASCII but "+" and "=", with "+HH" for the others.
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})
# RFC 3461 section 4.4: ENVID at most 100 characters; section 4.2: ORCPT at most 500.
MAX_ENVID = 100
MAX_ORCPT = 500


def _syntax(text: str) -> SMTPReject:
    return SMTPReject(Reply(501, "5.5.4", text))


def xtext_decode(value: str) -> str:
    """The text an xtext value (RFC 3461 section 4) stands for. Raises SMTPReject 501."""
    if not _XTEXT.fullmatch(value):
        raise _syntax("Invalid xtext value")
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m[1], 16)), value)


def xtext_encode(text: str) -> str:
    """`text` as xtext (RFC 3461 section 4): "+", "=" and non-printables as "+HH"."""
    return "".join(c if 0x21 <= ord(c) <= 0x7E and c not in "+=" else f"+{ord(c):02X}" for c in text)


@dataclass(frozen=True)
class MailParams:
    """The MAIL FROM parameters of this module, as given."""

    ret: str = ""  # "", "FULL" or "HDRS"
    envid: str = ""  # decoded
    requiretls: bool = False
    binarymime: bool = False


@dataclass(frozen=True)
class RcptParams:
    """The RCPT TO parameters of this module: NOTIFY as a frozenset ("NEVER", or some of
    SUCCESS, FAILURE, DELAY; empty when not given) and ORCPT ("rfc822;addr", decoded)."""

    notify: frozenset[str] = frozenset()
    orcpt: str = ""


def _split(arg: str) -> tuple[str, list[str]]:
    """The path part of a MAIL/RCPT argument and its parameters (after the closing ">")."""
    end = arg.rfind(">")
    if end < 0:
        return arg, []
    return arg[: end + 1], arg[end + 1 :].split()


def take_mail_params(arg: str, *, tls: bool) -> tuple[str, MailParams]:
    """The MAIL argument without this module's parameters, and their values.

    Raises SMTPReject: 501 5.5.4 for a malformed or repeated one, 530 5.7.10 for REQUIRETLS
    without TLS (RFC 8689 section 4.1).
    """
    path, params = _split(arg)
    kept: list[str] = []
    values: dict[str, object] = {}
    for param in params:
        name, eq, value = param.partition("=")
        key = name.upper()
        if key == "BODY" and value.upper() == "BINARYMIME":
            parsed: object = True
            key = "BINARYMIME"
        elif key == "RET":
            parsed = value.upper()
            if parsed not in ("FULL", "HDRS"):
                raise _syntax("RET must be FULL or HDRS")
        elif key == "ENVID":
            parsed = xtext_decode(value)
            if not eq or not value or len(value) > MAX_ENVID:
                raise _syntax("Invalid ENVID")
        elif key == "REQUIRETLS":
            if eq:
                raise _syntax("REQUIRETLS takes no value")
            if not tls:
                raise SMTPReject(Reply(530, "5.7.10", "REQUIRETLS needs a TLS session"))
            parsed = True
        else:
            kept.append(param)
            continue
        if key in values:
            raise _syntax(f"Duplicate {name.upper()} parameter")
        values[key] = parsed
    rest = " ".join([path, *kept])
    return rest, MailParams(
        ret=str(values.get("RET", "")),
        envid=str(values.get("ENVID", "")),
        requiretls=bool(values.get("REQUIRETLS")),
        binarymime=bool(values.get("BINARYMIME")),
    )


def take_rcpt_params(arg: str) -> tuple[str, RcptParams]:
    """The RCPT argument without NOTIFY and ORCPT, and their values. Raises SMTPReject 501
    for a malformed or repeated one (RFC 3461 section 4.1: NEVER stands alone)."""
    path, params = _split(arg)
    kept: list[str] = []
    notify: frozenset[str] | None = None
    orcpt: str | None = None
    for param in params:
        name, _, value = param.partition("=")
        key = name.upper()
        if key == "NOTIFY":
            if notify is not None:
                raise _syntax("Duplicate NOTIFY parameter")
            words = frozenset(value.upper().split(","))
            if words != {"NEVER"} and not (words and words <= _NOTIFY_VALUES):
                raise _syntax("NOTIFY must be NEVER or some of SUCCESS,FAILURE,DELAY")
            notify = words
        elif key == "ORCPT":
            if orcpt is not None:
                raise _syntax("Duplicate ORCPT parameter")
            addr_type, semicolon, address = value.partition(";")
            if not semicolon or not addr_type or len(value) > MAX_ORCPT:
                raise _syntax("ORCPT must be addr-type;xtext")
            orcpt = f"{addr_type.lower()};{xtext_decode(address)}"
        else:
            kept.append(param)
    return " ".join([path, *kept]), RcptParams(notify=notify or frozenset(), orcpt=orcpt or "")


@dataclass(frozen=True)
class EnvelopeParams:
    """What a transaction's MAIL and RCPT parameters asked, carried with the message to
    the queue rows and DSNs: the MAIL parameters and, for the recipients that gave any,
    (RCPT address as given, its parameters). `delivered_here` are the recipients filed into
    local mailboxes in this transaction (they get a success DSN when they asked for one)."""

    mail: MailParams = field(default_factory=MailParams)
    recipients: tuple[tuple[str, RcptParams], ...] = ()
    delivered_here: tuple[str, ...] = ()

    def rcpt(self, address: str) -> RcptParams:
        return next((p for a, p in self.recipients if a == address), RcptParams())

    def success_wanted(self) -> list[str]:
        """The recipients filed here that asked for a success DSN (NOTIFY=SUCCESS)."""
        return [a for a in self.delivered_here if "SUCCESS" in self.rcpt(a).notify]
