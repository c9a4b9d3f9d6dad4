"""Mail addresses and domain names: parsing and the one normal form we store and compare.

Pure: no Django. A domain's normal form is lowercase ASCII (IDNA A-labels); a local part is
kept as given but compared case-insensitively (casefolded), as every mail server people run
does, though RFC 5321 section 2.4 lets a server treat it as case-sensitive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 1035 section 2.3.4 and RFC 5321 section 4.5.3.1.
MAX_DOMAIN_LENGTH = 253
MAX_LABEL_LENGTH = 63
MAX_LOCAL_PART_LENGTH = 64

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# Dot-atom local parts (RFC 5322 section 3.2.3) plus UTF-8 (RFC 6531); no quoted strings:
# a quoted local part with "@", "%" or "!" inside is refused rather than risk another
# program resolving it to a different domain.
_ATEXT = re.compile(r"^[A-Za-z0-9!#$&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+$")


class AddressError(ValueError):
    """A mail address or domain name that is not valid; the message says why."""


def normalize_domain(name: str) -> str:
    """Return `name` as lowercase ASCII with IDNA A-labels, without a trailing dot.

    Raises AddressError for an empty name, an empty or over-long label, a label with
    characters a host name may not have, or a name that IDNA cannot encode.
    """
    if not isinstance(name, str) or not name or name.strip() != name:
        raise AddressError(f"invalid domain name {name!r}")
    name = name[:-1] if name.endswith(".") else name
    if "\x00" in name:
        raise AddressError("domain name contains NUL")
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise AddressError(f"invalid domain name {name!r}: {exc}") from None
    if not ascii_name or len(ascii_name) > MAX_DOMAIN_LENGTH:
        raise AddressError(f"invalid domain name {name!r}: length")
    labels = ascii_name.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise AddressError(f"invalid domain name {name!r}: bad label {label!r}")
    if len(labels) < 2:
        raise AddressError(f"invalid domain name {name!r}: not a fully qualified name")
    return ascii_name


def is_valid_local_part(local: str) -> bool:
    if not local or len(local.encode("utf-8")) > MAX_LOCAL_PART_LENGTH:
        return False
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return False
    return all(_ATEXT.match(atom) for atom in local.split("."))


@dataclass(frozen=True)
class Address:
    """A parsed mailbox address; `domain` is in normal form."""

    local: str
    domain: str

    @property
    def key(self) -> str:
        """The form used for lookups: casefolded local part, normal-form domain."""
        return f"{self.local.casefold()}@{self.domain}"

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def parse_address(text: str) -> Address:
    """Parse `local@domain` (no angle brackets, no display name).

    Raises AddressError for NUL or control characters, source routes, quoted local parts,
    a missing or second "@", an invalid local part or domain.
    """
    if not isinstance(text, str) or not text:
        raise AddressError("empty address")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise AddressError("address contains control characters")
    if text.startswith("@"):
        raise AddressError("source routes are not accepted")
    if '"' in text or "\\" in text:
        raise AddressError("quoted local parts are not accepted")
    local, sep, domain = text.rpartition("@")
    if not sep or "@" in local:
        raise AddressError(f"invalid address {text!r}")
    if not is_valid_local_part(local):
        raise AddressError(f"invalid local part in {text!r}")
    return Address(local=local, domain=normalize_domain(domain))
