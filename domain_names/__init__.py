"""Domain names: the one normal form Everlock stores and compares them in.

Pure: no Django. Mail domains, zone origins, record owner names, outbound host names and
certificate names all share one normal form: lowercase ASCII, internationalised labels as
IDNA 2003 A-labels (Python's `idna` codec; dnspython's IDNA_2003 codec is the same one, so a
zone and a mail domain of the same name compare equal), no trailing dot.

Two kinds of name are checked differently:

- a *host name* (`normalize_host`): a mail domain, a zone origin, an outbound EHLO name, a
  certificate name. At least two labels of letters, digits and inner hyphens (RFC 1123
  section 2.1, RFC 5321 section 4.1.2), at most 253 octets (RFC 1035 section 2.3.4).
- an *owner name* (`normalize_owner`): the name a DNS record sits at. Labels may hold what
  RFC 1035 allows in presentation format, such as `_domainkey` or `*`; dnspython parses the
  text (escapes included) and checks the limits of RFC 1035 section 2.3.4.

`fold` is for names read off the wire or from another server's records, which are compared
with normal-form names but not checked.
"""

from __future__ import annotations

import re

import dns.exception
import dns.name

# RFC 1035 section 2.3.4.
MAX_NAME_LENGTH = 253

_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class DomainNameError(ValueError):
    """A domain name that is not valid. `name` is the text given, `reason` says what is wrong."""

    def __init__(self, name: object, reason: str, *, kind: str = "domain name"):
        self.name, self.reason = name, reason
        super().__init__(f"invalid {kind} {name!r}: {reason}")


def normalize_host(text: str) -> str:
    """Return host name `text` in normal form (a trailing dot is dropped).

    Raises DomainNameError for an empty name, surrounding white space, NUL, a name IDNA cannot
    encode, an over-long name, a label with characters a host name may not have, or a name of
    one label.
    """
    if not isinstance(text, str) or not text:
        raise DomainNameError(text, "empty")
    if text.strip() != text:
        raise DomainNameError(text, "white space around the name")
    if "\x00" in text:
        raise DomainNameError(text, "contains NUL")
    name = text[:-1] if text.endswith(".") else text
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise DomainNameError(text, f"{exc}") from None
    if not ascii_name or len(ascii_name) > MAX_NAME_LENGTH:
        raise DomainNameError(text, "length")
    labels = ascii_name.split(".")
    for label in labels:
        if not _HOST_LABEL.match(label):
            raise DomainNameError(text, f"bad label {label!r}")
    if len(labels) < 2:
        raise DomainNameError(text, "not a fully qualified name")
    return ascii_name


def normalize_owner(text: str, *, origin: str | None = None) -> str:
    """Return the absolute owner name `text` in normal form.

    With `origin` (a normal-form name), `@` means the origin, a name ending in a dot is
    absolute and any other name is relative to the origin; without it the name is absolute.
    Raises DomainNameError (its text "invalid name ...") for an empty, over-long or
    unencodable name, the root, or a label holding a dot or a character outside printable
    ASCII.
    """
    if not isinstance(text, str) or not text.strip() or text.strip() != text or "\x00" in text:
        raise DomainNameError(text, "empty, NUL or white space", kind="name")
    if origin is not None:
        if text == "@":
            text = origin + "."
        elif not text.endswith("."):
            text = f"{text}.{origin}."
    try:
        name = dns.name.from_text(text if text.endswith(".") else text + ".", idna_codec=dns.name.IDNA_2003)
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise DomainNameError(text, f"{exc}", kind="name") from None
    if name == dns.name.root:
        raise DomainNameError(text, "the root is not a valid name here", kind="name")
    for label in name.labels[:-1]:
        if b"." in label or any(b < 0x21 or b > 0x7E for b in label):
            raise DomainNameError(text, "label with unusual characters", kind="name")
    return name.to_text(omit_final_dot=True).lower()


def fold(name: str) -> str:
    """`name` as read from the wire or another server's data, in the form normal-form names
    are compared with: lowercase, no trailing dot. Nothing is checked (DNS compares names
    without regard to ASCII case, RFC 4343)."""
    return name.rstrip(".").lower()
