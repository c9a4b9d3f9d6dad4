"""Mail addresses: parsing and the one normal form we store and compare.

Pure: no Django. The domain is in the normal form of domain_names.normalize_host; a local part is
kept as given but compared case-insensitively (casefolded), as every mail server people run
does, though RFC 5321 section 2.4 lets a server treat it as case-sensitive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from domain_names import DomainNameError, normalize_host

# RFC 5321 section 4.5.3.1.1.
MAX_LOCAL_PART_LENGTH = 64

# Dot-atom local parts (RFC 5322 section 3.2.3) plus UTF-8 (RFC 6531); no quoted strings:
# a quoted local part with "@", "%" or "!" inside is refused rather than risk another
# program resolving it to a different domain.
_ATEXT = re.compile(r"^[A-Za-z0-9!#$&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+$")


class AddressError(ValueError):
    """A mail address that is not valid; the message says why."""


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
    try:
        return Address(local=local, domain=normalize_host(domain))
    except DomainNameError as exc:
        raise AddressError(str(exc)) from None
