"""A message's header section, parsed once (RFC 5322) on the `email` package: the one place
that reads header fields, From addresses and encoded words (RFC 2047).

parse_message reads the header section of a message once into a ParsedMessage; everything
after (filing, the rules, the From checks of submission and of DMARC, the rules' dry run)
asks that value instead of reading the bytes again. A header block added in front of a
message (trace fields, signatures) is read on its own and joined (ParsedMessage.prepend).
The IMAP engine reads the fields of each MIME entity through entity_fields.

Pure: imports nothing from Django.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from datetime import datetime
from email.header import decode_header, make_header
from email.message import Message as EntityFields
from email.parser import BytesHeaderParser, HeaderParser
from email.policy import compat32

from domain_names import fold

_HEADER_PARSER = HeaderParser(policy=compat32)
_ENTITY_PARSER = BytesHeaderParser(policy=compat32)
# The longest field value kept (RFC 5322 section 2.1.1: a line of at most 998 characters).
MAX_FIELD = 998

# A field name (RFC 5322 section 3.6.8: printable ASCII but the colon).
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
# A line break followed by white space: folding (RFC 5322 section 2.2.3).
_FOLD_BYTES = re.compile(rb"\r?\n(?=[ \t])")
# A From field of one plain address, bare or after a plain display name: read directly. Any
# other (quotes, comments, groups, several addresses) goes to the email package's parser.
_PLAIN_FROM = re.compile(
    r"(?:[A-Za-z0-9 ._'-]*<)?([A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>?"
)


def decode_words(value: str) -> str:
    """`value` with its encoded words (RFC 2047) decoded; as it is when it has none or they do
    not decode."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (UnicodeError, LookupError, ValueError):
        return value


def field_addresses(values: list[str]) -> list[str]:
    """The addresses the address fields `values` (From, To, Cc, ...) name, as
    email.utils.getaddresses finds them."""
    if len(values) == 1:
        plain = _PLAIN_FROM.fullmatch(values[0].strip())
        if plain is not None and (("<" in values[0]) == values[0].rstrip().endswith(">")):
            return [plain[1]]
    return [a for _, a in email.utils.getaddresses(values) if a]


@dataclass(frozen=True)
class ParsedMessage:
    """The header fields of a message, in order (names as written, values as the email
    package's compat32 parser gives them: folded, encoded words kept), and the facts filing
    records (From, To and Subject decoded and cut to MAX_FIELD, the Date when it parses
    with a zone, the Message-Id), from the first field of each name."""

    headers: tuple[tuple[str, str], ...]
    header_from: str
    header_to: str
    subject: str
    date: datetime | None
    message_id: str

    def values(self, name: str) -> list[str]:
        """The values of every field named `name` (any case), in order."""
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def first(self, name: str) -> str | None:
        """The value of the first field named `name`, or None."""
        lname = name.lower()
        return next((v for n, v in self.headers if n.lower() == lname), None)

    def from_addresses(self) -> list[str]:
        """The addresses the From fields name."""
        return field_addresses(self.values("From"))

    def author_domain(self) -> str:
        """The domain of the RFC5322.From address (RFC 7489 section 3.1.1), "" when the
        message has no From or its first From field names no single address with a domain."""
        value = self.first("From")
        if value is None:
            return ""
        domains = {fold(a.rpartition("@")[2]) for a in field_addresses([value]) if "@" in a}
        return domains.pop() if len(domains) == 1 else ""

    def prepend(self, block: bytes) -> ParsedMessage:
        """The facts of the message with the header lines `block` put before its header:
        as parse_message(block + raw) tells them, without reading `raw` again."""
        if not block:
            return self
        added = parse_message(block + b"\r\n")
        names = {name.lower() for name, _ in added.headers}
        # The first field of a name is the one that counts, as parse_message reads them.
        return ParsedMessage(
            headers=added.headers + self.headers,
            header_from=added.header_from if "from" in names else self.header_from,
            header_to=added.header_to if "to" in names else self.header_to,
            subject=added.subject if "subject" in names else self.subject,
            date=added.date if "date" in names else self.date,
            message_id=added.message_id if "message-id" in names else self.message_id,
        )


def _text(value: str) -> str:
    return decode_words(value)[:MAX_FIELD]


def _plain_header_fields(raw: bytes) -> tuple[tuple[str, str], ...] | None:
    """The header fields of `raw` as the email package's compat32 parser gives them, read
    directly when the header section is plain: ASCII, CRLF line endings, well-formed field
    names, a blank line after it. None for anything else (the parser then reads it)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None
    block = raw[:end]
    if not block.isascii():
        return None
    unfolded = block.replace(b"\r\n", b"")
    if b"\n" in unfolded or b"\r" in unfolded:
        return None  # a bare line end
    fields: list[list[str]] = []
    for line in block.decode("ascii").split("\r\n"):
        if line[:1] in (" ", "\t"):
            if not fields:
                return None
            fields[-1].append(line)  # a folded field goes on: kept as the parser keeps it
            continue
        name, colon, value = line.partition(":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            return None
        fields.append([name, value.lstrip(" \t")])
    return tuple((field[0], "\r\n".join(field[1:])) for field in fields)


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse the header section of `raw` (RFC 5322); the body is not read."""
    headers = _plain_header_fields(raw)
    if headers is None:
        # Read as UTF-8 (RFC 6532: raw UTF-8 in fields, as SMTPUTF8 mail has), so that a
        # field is its text; bytes that are not UTF-8 stay undecodable (shown replaced).
        msg = _HEADER_PARSER.parsestr(raw.decode("utf-8", "surrogateescape"), headersonly=True)
        headers = tuple((name, str(value)) for name, value in msg.items())
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name.lower(), value)
    date = None
    if first.get("date"):
        try:
            date = email.utils.parsedate_to_datetime(first["date"])
            if date.tzinfo is None:
                date = None
        except (TypeError, ValueError, IndexError):
            date = None
    return ParsedMessage(
        headers=headers,
        header_from=_text(first.get("from", "")),
        header_to=_text(first.get("to", "")),
        subject=_text(first.get("subject", "")),
        date=date,
        message_id=first.get("message-id", "").strip()[:MAX_FIELD],
    )


def entity_fields(header: bytes) -> EntityFields:
    """The fields of one MIME entity's header section (`header`, folded or not) as the email
    package reads them, for their content type and parameters (RFC 2045, RFC 2231)."""
    # Unfolded first (RFC 5322 section 2.2.3), so a parameter folded over two lines is whole.
    return _ENTITY_PARSER.parsebytes(_FOLD_BYTES.sub(b"", header))
